//go:build e2e

package netns

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/client"
	"github.com/p2psip/p2psip/common/wire"
)

// TestTopology checks the network itself, with no agent: the three super
// peers form a mesh; LAN hosts reach them only through their NAT routers
// (TLS client sessions from both LANs work, and the super peers see the
// routers' public addresses, never a LAN address); nat1 keeps the client's
// source port and nat2 does not; the public side cannot reach into a LAN.
func TestTopology(t *testing.T) {
	tp := NewTopology(t)
	o := StartOverlay(t, tp, SP1, SP2, SP3)
	ctx := context.Background()

	for _, sp := range o.SPs {
		st, err := o.Status(sp)
		if err != nil {
			t.Fatal(err)
		}
		if st.Members != 3 {
			t.Errorf("%s: %d members, want 3", sp.Host, st.Members)
		}
	}

	// The real binary's client (TLS verified against the overlay CA) from
	// both LANs, each at a different super peer, then read back from a
	// third through the other NAT.
	alice, bob := o.Credentials(t, "alice"), o.Credentials(t, "bob")
	aliceAOR, bobAOR := "sip:alice@"+o.Name, "sip:bob@"+o.Name
	if out, err := o.RecordPut(ctx, LAN1, o.SP(SP1), alice, aliceAOR, "sip:alice@"+LAN1IP+":5060"); err != nil {
		t.Fatalf("record put from lan1: %v", err)
	} else {
		t.Logf("lan1 → sp1: %s", out)
	}
	if out, err := o.RecordPut(ctx, LAN2, o.SP(SP2), bob, bobAOR, "sip:bob@"+LAN2IP+":5060"); err != nil {
		t.Fatalf("record put from lan2: %v", err)
	} else {
		t.Logf("lan2 → sp2: %s", out)
	}
	out, err := o.RecordGet(ctx, LAN2, o.SP(SP3), bob, aliceAOR)
	if err != nil {
		t.Fatalf("record get from lan2: %v", err)
	}
	if !strings.Contains(out, "sip:alice@"+LAN1IP+":5060") {
		t.Errorf("lan2 reads alice's record at sp3: %s, want alice's contact", out)
	}

	// Sessions held open from inside each LAN, so that /v1/peers lists
	// them with the address the super peer sees.
	type held struct {
		host, router, wan, local string
		s                        *client.Session
	}
	var sessions []held
	for _, h := range []struct{ host, user, creds string }{
		{LAN1, "alice", alice}, {LAN1, "alice", alice}, {LAN1, "alice", alice},
		{LAN2, "bob", bob}, {LAN2, "bob", bob}, {LAN2, "bob", bob},
	} {
		s, err := dialClient(ctx, o, h.host, o.SP(SP1), h.creds)
		if err != nil {
			t.Fatalf("client session from %s: %v", h.host, err)
		}
		t.Cleanup(func() { s.Close() })
		router := RouterOf[h.host]
		sessions = append(sessions, held{h.host, router, HostIP[router], s.Conn.NetConn().LocalAddr().String(), s})
	}
	byUser, err := o.CheckRemoteAddrs()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{} // "alice" sessions' remote addrs at sp1
	ps, err := o.Peers(o.SP(SP1))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.Role == "client" {
			seen[p.Remote] = p.User
		}
	}
	preserved := map[string]int{}
	for _, h := range sessions {
		_, port, _ := net.SplitHostPort(h.local)
		want := net.JoinHostPort(h.wan, port)
		if _, ok := seen[want]; ok {
			preserved[h.router]++
		}
		var fromRouter bool
		for remote := range seen {
			if strings.HasPrefix(remote, h.wan+":") {
				fromRouter = true
			}
		}
		if !fromRouter {
			t.Errorf("no session from %s at sp1 for the client on %s (sp1 sees %v)", h.wan, h.host, seen)
		}
	}
	// nat1 (MASQUERADE) keeps a free source port; nat2 (--random-fully)
	// picks a random one (all three equal by chance: p ≈ 1e-14).
	if preserved[NAT1] != 3 {
		t.Errorf("nat1 preserved %d of 3 source ports, want 3 (sp1 sees %v)", preserved[NAT1], seen)
	}
	if preserved[NAT2] == 3 {
		t.Errorf("nat2 preserved every source port; --random-fully should randomize them (sp1 sees %v)", seen)
	}
	t.Logf("sp1 sees clients %v; source ports kept: nat1 %d/3, nat2 %d/3; users seen %d",
		seen, preserved[NAT1], preserved[NAT2], len(byUser))

	// Nothing on the public segment can open a connection into a LAN: the
	// super peers have no route to it, and even a public host that routes
	// the LAN via nat1 gets its connection attempt dropped (a timeout, not
	// a refusal from lan1).
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if c, err := DialIn(dctx, o.NS(SP1), "tcp", net.JoinHostPort(LAN1IP, "6084")); err == nil {
		c.Close()
		t.Errorf("sp1 reached %s directly", LAN1IP)
	}
	if _, err := tp.Exec(ctx, Public, "ip", "route", "add", "192.0.2.0/25", "via", NAT1WAN); err != nil {
		t.Fatal(err)
	}
	dctx, cancel = context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := DialIn(dctx, o.NS(Public), "tcp", net.JoinHostPort(LAN1IP, "6084"))
	if err == nil {
		c.Close()
	}
	var ne net.Error
	if err == nil || !errors.Is(err, context.DeadlineExceeded) && !(errors.As(err, &ne) && ne.Timeout()) {
		t.Errorf("unsolicited connection from the public side into lan1 via nat1: %v, want it dropped (a timeout)", err)
	}
	t.Logf("SUMMARY %s: mesh 3/3; record put/get through nat1 and nat2 ok; super peers see only %s and %s; nat1 kept %d/3 source ports, nat2 %d/3",
		t.Name(), NAT1WAN, NAT2WAN, preserved[NAT1], preserved[NAT2])
}

// dialClient opens a client session to sp from inside host's namespace,
// authenticated with the credentials file and verifying sp against the
// overlay CA, and keeps it open until Close.
func dialClient(ctx context.Context, o *Overlay, host string, sp *SuperPeer, credsFile string) (*client.Session, error) {
	creds, err := auth.LoadCredentials(credsFile)
	if err != nil {
		return nil, err
	}
	roots, err := auth.LoadCAFile(o.CA)
	if err != nil {
		return nil, err
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	cert, err := auth.SelfSignedCertificate(key, time.Now())
	if err != nil {
		return nil, err
	}
	var s *client.Session
	err = InNamespace(o.NS(host), func() error {
		var err error
		s, err = client.Dial(ctx, client.Config{
			Addr:    sp.PeerAddr(),
			TLS:     auth.ClientTLSConfig(&cert, roots, sp.IP),
			Timeout: 5 * time.Second,
			Hello: func(tls.ConnectionState) (wire.Hello, error) {
				return wire.Hello{Role: wire.RoleClient, Overlay: o.Name, Username: creds.Username, Password: creds.Password}, nil
			},
		}, zerolog.Nop())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s → %s: %w", host, sp.PeerAddr(), err)
	}
	return s, nil
}
