//go:build e2e

package netns

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// RequireAgent skips t when the binary has no `p2psip peer` yet.
func RequireAgent(t testing.TB) {
	t.Helper()
	if err := AgentAvailable(); err != nil {
		t.Skipf("needs the ordinary-peer agent, `p2psip peer` (issue 3), which this build lacks: %v", err)
	}
}

// Agent is one `p2psip peer` process on a LAN host, with its SIP phone
// (SIPp) next to it in the same namespace.
type Agent struct {
	Host, IP string
	User     string
	DataDir  string
	Proc     *Proc
	o        *Overlay
	uas      *Proc // the phone's SIPp UAS
}

// SIPAddr is the agent's --sip-listen, the phone's registrar and outbound
// proxy.
func (a *Agent) SIPAddr() string { return sipAddr(a.IP, AgentSIP) }

// AdminURL is the base URL of the agent's admin API.
func (a *Agent) AdminURL() string {
	return "http://" + net.JoinHostPort(a.IP, strconv.Itoa(AgentAdmin))
}

// AOR is the agent's user's address of record.
func (a *Agent) AOR() string { return "sip:" + a.User + "@" + a.o.Name }

// AgentStatus is the agent's /v1/status.
type AgentStatus struct {
	PeerID       string         `json:"peer_id"`
	User         string         `json:"user"`
	Attached     bool           `json:"attached"`
	SuperPeer    string         `json:"super_peer"`
	SPAddr       string         `json:"super_peer_addr"`
	Failovers    int            `json:"failovers"`
	LastReattach string         `json:"last_reattach"`
	Bindings     int            `json:"bindings"`
	SIP          map[string]any `json:"sip"`
	// Relay is the TURN fallback's counters (absent in builds without it).
	Relay *struct {
		RelayedOut uint64 `json:"relayed_out"`
		OverlayOut uint64 `json:"overlay_out"`
		// Server is the TURN server holding the agent's allocation.
		Server string `json:"server"`
	} `json:"relay"`
}

// StartAgent starts `p2psip peer` for user on a LAN host, bootstrapping at
// the given super peers, and waits until it is attached.
func (o *Overlay) StartAgent(t testing.TB, host, user string, keepalive time.Duration, bootstrap ...*SuperPeer) *Agent {
	t.Helper()
	return o.StartAgentWith(t, host, user, keepalive, nil, bootstrap...)
}

// StartAgentWith is StartAgent with extra arguments for `p2psip peer`.
func (o *Overlay) StartAgentWith(t testing.TB, host, user string, keepalive time.Duration, extra []string, bootstrap ...*SuperPeer) *Agent {
	t.Helper()
	RequireAgent(t)
	a := &Agent{Host: host, IP: HostIP[host], User: user, DataDir: filepath.Join(o.Dir, "agent-"+host), o: o}
	var boot []string
	for _, sp := range bootstrap {
		boot = append(boot, sp.PeerAddr())
	}
	args := []string{Binary, "peer",
		"--overlay", o.Name,
		"--bootstrap", strings.Join(boot, ","),
		"--credentials-file", o.Credentials(t, user),
		"--ca-file", o.CA,
		"--sip-listen", a.SIPAddr(),
		"--data-dir", a.DataDir,
		"--admin", net.JoinHostPort(a.IP, strconv.Itoa(AgentAdmin)),
	}
	if agentHasFlag("log-format") {
		args = append(args, "--log-format", "json")
	}
	if keepalive > 0 {
		if agentHasFlag("keepalive") {
			args = append(args, "--keepalive", keepalive.String())
		} else {
			t.Logf("`p2psip peer` has no --keepalive flag; running with its default")
		}
	}
	args = append(args, extra...)
	a.Proc = o.Start(host, "agent-"+host+"-"+user, args...)
	st := a.WaitAttached(t, 20*time.Second)
	sp := o.ByPeerID(st.SuperPeer)
	if sp == nil {
		sp = o.ByAddr(st.SPAddr)
	}
	where := st.SPAddr
	if sp != nil {
		where = sp.Host + " " + where
	}
	t.Logf("agent %s (%s) on %s attached to %s", user, a.SIPAddr(), host, where)
	return a
}

// Status reads the agent's /v1/status.
func (a *Agent) Status() (AgentStatus, error) {
	var st AgentStatus
	if a.Proc.Exited() {
		return st, fmt.Errorf("agent %s has exited (status %d)", a.User, a.Proc.ExitCode())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := getJSON(ctx, a.o.NS(a.Host), a.AdminURL()+"/v1/status", &st)
	return st, err
}

// WaitAttached waits until the agent reports an attachment.
func (a *Agent) WaitAttached(t testing.TB, timeout time.Duration) AgentStatus {
	t.Helper()
	var st AgentStatus
	Eventually(t, timeout, "agent "+a.User+" attached", func() error {
		var err error
		if st, err = a.Status(); err != nil {
			return err
		}
		if !st.Attached {
			return fmt.Errorf("not attached: %+v", st)
		}
		return nil
	})
	return st
}

// SuperPeer is the super peer the agent is attached to now.
func (a *Agent) SuperPeer(t testing.TB) *SuperPeer {
	t.Helper()
	st, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	sp := a.o.ByPeerID(st.SuperPeer)
	if sp == nil {
		sp = a.o.ByAddr(st.SPAddr)
	}
	if sp == nil {
		t.Fatalf("agent %s is attached to %q (%s), which is none of the super peers", a.User, st.SuperPeer, st.SPAddr)
	}
	return sp
}

// Phone registers the agent's user from the phone's port, then starts the
// phone's SIPp UAS on that port.
func (a *Agent) Phone(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.o.Register(ctx, a.Host, a.IP, UASPort, a.User, a.o.Name, a.SIPAddr()); err != nil {
		t.Fatal(err)
	}
	a.uas = a.o.StartUAS(a.Host, a.IP, UASPort)
}

// PhoneStats reads the counters of the phone's UAS (dumped every second):
// Created counts the calls that reached it.
func (a *Agent) PhoneStats() (SIPpStats, error) {
	if a.uas == nil {
		return SIPpStats{}, fmt.Errorf("agent %s has no phone", a.User)
	}
	return a.o.Progress(a.uas.Name)
}

// FreshPhone replaces the phone's UAS with a fresh process on the same
// port (the registration stays): a UAS reused after a run with failures
// would go on retransmitting into the next run (shared/notes/TESTING.md).
func (a *Agent) FreshPhone(t testing.TB) {
	t.Helper()
	if a.uas != nil {
		a.uas.Kill()
	}
	a.uas = a.o.StartUAS(a.Host, a.IP, UASPort)
}

// Caller describes a SIPp caller next to the agent calling callee; run it
// with RunUAC.
func (a *Agent) Caller(callee *Agent, calls, rate int) UAC {
	return UAC{
		Host: a.Host, IP: a.IP, Proxy: a.SIPAddr(),
		User: a.User, Callee: callee.User, Domain: a.o.Name,
		Calls: calls, Rate: rate,
	}
}

// relayed is the share of the agents' outgoing SIP messages that took the
// TURN relays instead of the overlay path.
func relayed(agents ...*Agent) string {
	var relayedN, total uint64
	found := false
	for _, a := range agents {
		st, err := a.Status()
		if err != nil || st.Relay == nil {
			continue
		}
		found = true
		relayedN += st.Relay.RelayedOut
		total += st.Relay.RelayedOut + st.Relay.OverlayOut
	}
	switch {
	case !found:
		return "n/a (no TURN fallback in this build)"
	case total == 0:
		return "0%"
	}
	return fmt.Sprintf("%.1f%% (%d of %d messages)", 100*float64(relayedN)/float64(total), relayedN, total)
}
