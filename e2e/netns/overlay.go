//go:build e2e

package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// OverlayName is the overlay of every test; AoRs are sip:USER@OverlayName.
const OverlayName = "e2e.p2psip.test"

// Ports of the processes (the defaults of ARCHITECTURE.md §1 where there
// is one; each host has its own namespace, so they never clash).
const (
	PeerPort   = 6084
	GossipPort = 7946
	AdminPort  = 6085 // super peers
	AgentAdmin = 6086 // agents
	AgentSIP   = 5060 // the agent's --sip-listen
	UACPort    = 5070 // the SIPp caller next to an agent
	UASPort    = 5080 // the SIPp callee next to an agent (and its REGISTER)
	EdgeSIP    = 5060 // a super peer's SIP edge (--sip-port), UDP+TCP
	EdgeSIPS   = 5061 // its TLS port (--sips-port)
	TURNPort   = 3478 // its STUN/TURN port (--turn-port)
)

// Overlay is a set of super peers on the public segment sharing one secret.
type Overlay struct {
	*Topology
	Name string
	// Secret is the overlay secret file; CA the overlay CA that super peers
	// write to their data dir (identical on all of them).
	Secret string
	CA     string
	SPs    []*SuperPeer
	// SuperPeerArgs are added to every super peer's command line
	// (StartOverlayWith; e.g. the promotion policy).
	SuperPeerArgs []string
}

// SuperPeer is one `p2psip superpeer` process.
type SuperPeer struct {
	Host    string
	IP      string
	DataDir string
	Proc    *Proc
}

// PeerAddr is the super peer's peer-protocol address.
func (sp *SuperPeer) PeerAddr() string { return net.JoinHostPort(sp.IP, strconv.Itoa(PeerPort)) }

// TURNAddr is its STUN/TURN address.
func (sp *SuperPeer) TURNAddr() string { return net.JoinHostPort(sp.IP, strconv.Itoa(TURNPort)) }

// GossipAddr is its memberlist address.
func (sp *SuperPeer) GossipAddr() string { return net.JoinHostPort(sp.IP, strconv.Itoa(GossipPort)) }

// SIPAddr is the super peer's SIP edge (UDP and TCP): plain phones
// register there and use it as their outbound proxy.
func (sp *SuperPeer) SIPAddr() string { return sipAddr(sp.IP, EdgeSIP) }

// AdminURL is the base URL of its admin API.
func (sp *SuperPeer) AdminURL() string {
	return "http://" + net.JoinHostPort(sp.IP, strconv.Itoa(AdminPort))
}

// SPStatus is the part of the super peer's /v1/status the tests read.
type SPStatus struct {
	PeerID   string         `json:"peer_id"`
	PeerAddr string         `json:"peer_addr"`
	Ready    bool           `json:"ready"`
	Members  int            `json:"members"`
	Sessions map[string]int `json:"sessions"`
	Attached int            `json:"attached"`
}

// PeerSession is one entry of a super peer's /v1/peers.
type PeerSession struct {
	PeerID string `json:"peer_id"`
	User   string `json:"user"`
	Role   string `json:"role"`
	Remote string `json:"remote_addr"`
}

// StartOverlay starts super peers on the given hosts (sp1..sp3): the first
// founds the mesh, the others join it; it returns once every one of them
// is ready and sees all of them.
func StartOverlay(t testing.TB, tp *Topology, hosts ...string) *Overlay {
	t.Helper()
	return StartOverlayWith(t, tp, nil, hosts...)
}

// StartOverlayWith is StartOverlay with extra arguments for every super
// peer's command line.
func StartOverlayWith(t testing.TB, tp *Topology, spArgs []string, hosts ...string) *Overlay {
	t.Helper()
	o := &Overlay{Topology: tp, Name: OverlayName, Secret: filepath.Join(tp.Dir, "overlay.secret"), SuperPeerArgs: spArgs}
	secret := make([]byte, 32)
	rand.Read(secret) //nolint:errcheck // never fails
	if err := os.WriteFile(o.Secret, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	first := o.startSuperPeer(hosts[0], nil)
	o.waitReady(t, first, 20*time.Second)
	for _, h := range hosts[1:] {
		o.startSuperPeer(h, []string{first.GossipAddr()})
	}
	for _, sp := range o.SPs[1:] {
		o.waitReady(t, sp, 20*time.Second)
	}
	o.WaitMesh(t, len(hosts), 30*time.Second)
	o.CA = filepath.Join(first.DataDir, "ca.pem")
	ca, err := os.ReadFile(o.CA)
	if err != nil {
		t.Fatalf("overlay CA: %v", err)
	}
	for _, sp := range o.SPs[1:] {
		if b, err := os.ReadFile(filepath.Join(sp.DataDir, "ca.pem")); err != nil || !bytes.Equal(b, ca) {
			t.Fatalf("%s: ca.pem differs from %s's (err %v): super peers of one overlay must share one CA", sp.Host, first.Host, err)
		}
	}
	t.Logf("overlay %s: %d super peers in a mesh in %s", o.Name, len(hosts), time.Since(start).Round(time.Millisecond))
	return o
}

func (o *Overlay) startSuperPeer(host string, join []string) *SuperPeer {
	o.t.Helper()
	sp := &SuperPeer{Host: host, IP: HostIP[host], DataDir: filepath.Join(o.Dir, host)}
	args := []string{Binary, "superpeer",
		"--overlay", o.Name,
		"--data-dir", sp.DataDir,
		"--secret-file", o.Secret,
		"--bind", sp.IP,
		"--advertise", sp.IP,
		"--peer-port", strconv.Itoa(PeerPort),
		"--gossip-port", strconv.Itoa(GossipPort),
		"--sip-port", strconv.Itoa(EdgeSIP),
		"--sips-port", strconv.Itoa(EdgeSIPS),
		"--turn-port", strconv.Itoa(TURNPort),
		"--admin", net.JoinHostPort(sp.IP, strconv.Itoa(AdminPort)),
		"--log-format", "json",
		"--log-level", "debug",
	}
	if len(join) > 0 {
		args = append(args, "--join", strings.Join(join, ","))
	}
	args = append(args, o.SuperPeerArgs...)
	sp.Proc = o.Start(host, host, args...)
	o.SPs = append(o.SPs, sp)
	return sp
}

// SP returns the super peer running on host.
func (o *Overlay) SP(host string) *SuperPeer {
	for _, sp := range o.SPs {
		if sp.Host == host {
			return sp
		}
	}
	o.t.Fatalf("no super peer on %s", host)
	return nil
}

// Status reads sp's /v1/status.
func (o *Overlay) Status(sp *SuperPeer) (SPStatus, error) {
	var st SPStatus
	if sp.Proc.Exited() {
		return st, fmt.Errorf("%s has exited (%v)", sp.Host, sp.Proc.err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := getJSON(ctx, o.NS(sp.Host), sp.AdminURL()+"/v1/status", &st)
	return st, err
}

// Peers reads sp's /v1/peers.
func (o *Overlay) Peers(sp *SuperPeer) ([]PeerSession, error) {
	var ps []PeerSession
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := getJSON(ctx, o.NS(sp.Host), sp.AdminURL()+"/v1/peers", &ps)
	return ps, err
}

func (o *Overlay) waitReady(t testing.TB, sp *SuperPeer, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, sp.Host+" ready", func() error {
		st, err := o.Status(sp)
		if err != nil {
			return err
		}
		if !st.Ready {
			return fmt.Errorf("not ready: %+v", st)
		}
		return nil
	})
}

// WaitMesh waits until every live super peer reports n members.
func (o *Overlay) WaitMesh(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, fmt.Sprintf("a mesh of %d", n), func() error {
		for _, sp := range o.Live() {
			st, err := o.Status(sp)
			if err != nil {
				return err
			}
			if st.Members != n {
				return fmt.Errorf("%s sees %d members", sp.Host, st.Members)
			}
		}
		return nil
	})
}

// Live is the super peers whose process runs.
func (o *Overlay) Live() []*SuperPeer {
	var out []*SuperPeer
	for _, sp := range o.SPs {
		if !sp.Proc.Exited() {
			out = append(out, sp)
		}
	}
	return out
}

// Credentials issues credentials for user and returns the file.
func (o *Overlay) Credentials(t testing.TB, user string) string {
	t.Helper()
	path := filepath.Join(o.Dir, user+".json")
	if _, err := os.Stat(path); err == nil {
		return path
	}
	// No network needed: any namespace will do; use the bridge's, which
	// has no addresses at all.
	if _, err := o.Exec(context.Background(), bridge, Binary, "credentials", "issue",
		"--secret-file", o.Secret, "--user", user, "--ttl", "2h", "-o", path); err != nil {
		t.Fatal(err)
	}
	return path
}

// Secrets reads the digest username ("EXPIRY:USER") and password of
// user's credentials (issuing them if needed): what a plain phone
// registering at a super peer's SIP edge authenticates with.
func (o *Overlay) Secrets(t testing.TB, user string) (username, password string) {
	t.Helper()
	b, err := os.ReadFile(o.Credentials(t, user))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	if err := json.Unmarshal(b, &c); err != nil || c.Username == "" || c.Password == "" {
		t.Fatalf("credentials of %s: no username and password (%v): %s", user, err, b)
	}
	return c.Username, c.Password
}

// RecordPut runs `p2psip record put` from host against sp.
func (o *Overlay) RecordPut(ctx context.Context, host string, sp *SuperPeer, creds, aor, contact string) (string, error) {
	out, err := o.Exec(ctx, host, Binary, "record", "put",
		"--server", sp.PeerAddr(), "--credentials-file", creds, "--ca-file", o.CA,
		"--timeout", "10s", aor, contact)
	return strings.TrimSpace(string(out)), err
}

// RecordGet runs `p2psip record get --json` from host against sp.
func (o *Overlay) RecordGet(ctx context.Context, host string, sp *SuperPeer, creds, aor string) (string, error) {
	out, err := o.Exec(ctx, host, Binary, "record", "get", "--json",
		"--server", sp.PeerAddr(), "--credentials-file", creds, "--ca-file", o.CA,
		"--timeout", "10s", aor)
	return strings.TrimSpace(string(out)), err
}

// ByPeerID returns the super peer whose Peer-ID (full hex, or a prefix)
// is id, or nil.
func (o *Overlay) ByPeerID(id string) *SuperPeer {
	if id == "" {
		return nil
	}
	for _, sp := range o.SPs {
		st, err := o.Status(sp)
		if err == nil && (strings.HasPrefix(st.PeerID, id) || strings.HasPrefix(id, st.PeerID)) {
			return sp
		}
	}
	return nil
}

// ByAddr returns the super peer whose peer-protocol address (or IP) is
// addr, or nil.
func (o *Overlay) ByAddr(addr string) *SuperPeer {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	for _, sp := range o.SPs {
		if sp.IP == host {
			return sp
		}
	}
	return nil
}

// CheckRemoteAddrs checks what every live super peer's /v1/peers shows:
// no session comes from a LAN address (192.0.2.0/24), and every session of
// a client or agent comes from a NAT router's public address. It returns
// the agent and client sessions seen, by user.
func (o *Overlay) CheckRemoteAddrs() (map[string][]PeerSession, error) {
	_, lanNet, _ := net.ParseCIDR("192.0.2.0/24")
	byUser := map[string][]PeerSession{}
	for _, sp := range o.Live() {
		ps, err := o.Peers(sp)
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			host, _, err := net.SplitHostPort(p.Remote)
			if err != nil {
				return nil, fmt.Errorf("%s: session %+v: remote_addr: %v", sp.Host, p, err)
			}
			ip := net.ParseIP(host)
			if ip == nil {
				return nil, fmt.Errorf("%s: session %+v: remote_addr is no IP", sp.Host, p)
			}
			if lanNet.Contains(ip) {
				return nil, fmt.Errorf("%s sees a LAN address: %+v", sp.Host, p)
			}
			if p.Role == "agent" || p.Role == "client" {
				if host != NAT1WAN && host != NAT2WAN {
					return nil, fmt.Errorf("%s: %s session from %s, not from a NAT router", sp.Host, p.Role, p.Remote)
				}
				byUser[p.User] = append(byUser[p.User], p)
			}
		}
	}
	return byUser, nil
}
