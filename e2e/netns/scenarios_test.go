//go:build e2e

package netns

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// keepalive is the agents' Ping interval in these tests (the default, 25 s,
// suits NATs, not tests).
const keepalive = time.Second

// callsWorld is the common start of the agent scenarios: three super
// peers; alice's agent on lan1 (behind the port-preserving nat1)
// bootstrapping at sp1, bob's on lan2 (behind the randomizing nat2) at
// sp2; each with a registered SIPp phone. before, if not nil, runs once
// the super peers are up and before the agents start (to inject a fault).
func callsWorld(t *testing.T, before func(*Overlay)) (o *Overlay, alice, bob *Agent) {
	t.Helper()
	return callsWorldWith(t, keepalive, before)
}

// callsWorldWith is callsWorld with the agents' keepalive interval.
func callsWorldWith(t *testing.T, keepalive time.Duration, before func(*Overlay)) (o *Overlay, alice, bob *Agent) {
	t.Helper()
	RequireAgent(t)
	tp := NewTopology(t)
	o = StartOverlay(t, tp, SP1, SP2, SP3)
	if before != nil {
		before(o)
	}
	alice = o.StartAgent(t, LAN1, "alice", keepalive, o.SP(SP1), o.SP(SP3))
	bob = o.StartAgent(t, LAN2, "bob", keepalive, o.SP(SP2), o.SP(SP3))
	alice.Phone(t)
	bob.Phone(t)
	// The registrations are in the overlay: each side finds the other's
	// contact (read with the command-line client, through the NATs).
	for _, pair := range [][2]*Agent{{alice, bob}, {bob, alice}} {
		reader, callee := pair[0], pair[1]
		creds := o.Credentials(t, reader.User)
		Eventually(t, 10*time.Second, callee.User+"'s contact visible to "+reader.User, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			out, err := o.RecordGet(ctx, reader.Host, o.SP(SP3), creds, callee.AOR())
			if err != nil {
				return err
			}
			if !strings.Contains(out, `"contact"`) {
				return fmt.Errorf("no contact in %s", out)
			}
			return nil
		})
	}
	return o, alice, bob
}

// checkNATView checks that the super peers see the agents only at their
// NAT routers' public addresses: alice at nat1's, bob at nat2's. It
// returns the finding for the summary line.
func checkNATView(t *testing.T, o *Overlay, alice, bob *Agent) string {
	t.Helper()
	byUser, err := o.CheckRemoteAddrs()
	if err != nil {
		t.Error(err)
		return "NAT view FAILED"
	}
	ok := true
	for _, a := range []*Agent{alice, bob} {
		wan := HostIP[RouterOf[a.Host]]
		var agentSessions int
		for _, p := range byUser[a.User] {
			if p.Role != "agent" {
				continue
			}
			agentSessions++
			if host, _, _ := net.SplitHostPort(p.Remote); host != wan {
				t.Errorf("%s's agent session comes from %s, want %s", a.User, p.Remote, wan)
				ok = false
			}
		}
		if agentSessions != 1 {
			t.Errorf("%s has %d agent sessions across the super peers, want 1: %+v", a.User, agentSessions, byUser[a.User])
			ok = false
		}
	}
	if !ok {
		return "NAT view FAILED"
	}
	return fmt.Sprintf("super peers saw only %s (alice) and %s (bob)", HostIP[RouterOf[alice.Host]], HostIP[RouterOf[bob.Host]])
}

// checkHops checks the agents' SIP counters, when they have them: no
// tunnelled message took more than three overlay hops. It returns the
// largest hop count seen, for the summary line.
func checkHops(t *testing.T, agents ...*Agent) string {
	t.Helper()
	most, found := 0.0, false
	for _, a := range agents {
		st, err := a.Status()
		if err != nil {
			t.Error(err)
			continue
		}
		h, ok := st.SIP["MaxHops"].(float64)
		if !ok {
			continue
		}
		found, most = true, max(most, h)
		if h > 3 {
			t.Errorf("agent %s received a message after %v overlay hops, want ≤ 3", a.User, h)
		}
	}
	if !found {
		return "max overlay hops n/a"
	}
	return fmt.Sprintf("max overlay hops %v", most)
}

// requireAllOK checks that a caller run placed calls calls and all
// succeeded.
func requireAllOK(t *testing.T, what string, res SIPpResult, err error, calls int, callee *Agent) {
	t.Helper()
	requireCalls(t, what, res, err, calls, callee.PhoneStats)
}

// requireCalls is requireAllOK for any callee phone; phone reads its UAS's
// counters.
func requireCalls(t *testing.T, what string, res SIPpResult, err error, calls int, phone func() (SIPpStats, error)) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	t.Logf("%s: %s in %s (exit status %d, %d retransmissions)", what, res.SIPpStats, res.Duration.Round(time.Millisecond), res.ExitCode, res.Retransmissions)
	if res.Failed != 0 || res.Successful != calls {
		reached := "unknown"
		if st, err := phone(); err == nil {
			reached = fmt.Sprintf("%d calls reached it, %d completed", st.Created, st.Successful)
		}
		t.Errorf("%s: %s; want %d succeeded, 0 failed (callee's phone: %s; see %s.err and the agents' and super peers' logs)",
			what, res.SIPpStats, calls, reached, res.Name)
	}
}

// TestCallsAcrossNATs is scenario 1: phones behind both NATs register
// through their agents and complete 200 calls each way, 0 failures; the
// super peers see only the NAT routers' public addresses.
func TestCallsAcrossNATs(t *testing.T) {
	const calls, rate = 200, 50
	o, alice, bob := callsWorld(t, nil)
	ctx := context.Background()

	res1, err := o.RunUAC(ctx, alice.Caller(bob, calls, rate))
	requireAllOK(t, "alice → bob", res1, err, calls, bob)
	res2, err := o.RunUAC(ctx, bob.Caller(alice, calls, rate))
	requireAllOK(t, "bob → alice", res2, err, calls, alice)

	view := checkNATView(t, o, alice, bob)
	hops := checkHops(t, alice, bob)
	t.Logf("SUMMARY %s: calls attempted %d succeeded %d failed %d (alice→bob %d/%d, bob→alice %d/%d at %d cps); reattach n/a; relayed %s; %s; %s",
		t.Name(), res1.Created+res2.Created, res1.Successful+res2.Successful, res1.Failed+res2.Failed,
		res1.Successful, res1.Created, res2.Successful, res2.Created, rate, relayed(alice, bob), hops, view)
}

// TestSuperPeerKilledDuringCalls is scenario 2: kill -9 the super peer
// bob's agent is attached to while alice calls bob at a steady rate; the
// agent reattaches, and every call placed after that succeeds. It reports
// the calls that failed in the gap and the reattach time.
func TestSuperPeerKilledDuringCalls(t *testing.T) {
	const (
		rate       = 20
		gapCalls   = 15 * rate // 15 s of calls around the kill
		afterCalls = 100
		killAfter  = 4 * rate // calls placed before the kill
	)
	o, alice, bob := callsWorld(t, nil)
	ctx := context.Background()

	victim := bob.SuperPeer(t)
	before, err := bob.Status()
	if err != nil {
		t.Fatal(err)
	}
	if alice.SuperPeer(t) == victim {
		t.Logf("note: alice's agent shares %s with bob's; both fail over", victim.Host)
	}

	uac := alice.Caller(bob, gapCalls, rate)
	uac.Name = "sipp-uac-gap"
	done := o.StartUAC(ctx, uac)
	Eventually(t, 30*time.Second, fmt.Sprintf("%d calls placed before the kill", killAfter), func() error {
		st, err := o.Progress(uac.Name)
		if err != nil {
			return err
		}
		if st.Created < killAfter {
			return fmt.Errorf("%d calls placed", st.Created)
		}
		return nil
	})
	atKill, _ := o.Progress(uac.Name)
	victim.Proc.Kill() // SIGKILL: no goodbye to the mesh or the agents
	killed := time.Now()
	t.Logf("killed %s (bob's super peer) after %d calls (%d failed so far)", victim.Host, atKill.Created, atKill.Failed)

	// Poll tightly: this measures the reattach time from outside.
	var after AgentStatus
	err = poll(15*time.Second, 10*time.Millisecond, func() error {
		st, err := bob.Status()
		if err != nil {
			return err
		}
		if !st.Attached || st.SuperPeer == before.SuperPeer {
			return fmt.Errorf("attached=%t super_peer=%.8s failovers=%d", st.Attached, st.SuperPeer, st.Failovers)
		}
		after = st
		return nil
	})
	observed := time.Since(killed)
	if err != nil {
		t.Fatalf("bob's agent did not reattach to another super peer within 15 s: %v", err)
	}
	if after.Failovers <= before.Failovers {
		t.Errorf("bob's agent reattached, but its failovers count went from %d to %d", before.Failovers, after.Failovers)
	}
	newSP := o.ByPeerID(after.SuperPeer)
	t.Logf("bob's agent reattached to %v (%s) %s after the kill; it reports last_reattach %s, failovers %d",
		spName(newSP), after.SPAddr, observed.Round(time.Millisecond), after.LastReattach, after.Failovers)

	r := <-done
	if r.Err != nil {
		t.Fatalf("calls during the kill: %v", r.Err)
	}
	gap := r.Res
	t.Logf("calls around the kill: %s in %s", gap.SIPpStats, gap.Duration.Round(time.Millisecond))

	// Calls placed after the reattachment must all succeed (to a fresh
	// UAS: the old one may still be retransmitting for calls of the gap).
	bob.FreshPhone(t)
	res, err := o.RunUAC(ctx, alice.Caller(bob, afterCalls, rate))
	requireAllOK(t, "alice → bob after reattach", res, err, afterCalls, bob)
	if _, err := alice.Status(); err != nil {
		t.Errorf("alice's agent: %v", err)
	}
	view := checkNATView(t, o, alice, bob)
	hops := checkHops(t, alice, bob)
	t.Logf("SUMMARY %s: calls attempted %d succeeded %d failed %d (around the kill of %s at %d cps: %d/%d, %d failed in the gap; after reattach: %d/%d); reattach %s seen from outside (agent's last_reattach %s, failovers %d); relayed %s; %s; %s",
		t.Name(), gap.Created+res.Created, gap.Successful+res.Successful, gap.Failed+res.Failed, victim.Host, rate,
		gap.Successful, gap.Created, gap.Failed, res.Successful, res.Created,
		observed.Round(time.Millisecond), orNA(after.LastReattach), after.Failovers, relayed(alice, bob), hops, view)
}

func spName(sp *SuperPeer) string {
	if sp == nil {
		return "an unknown super peer"
	}
	return sp.Host
}

func orNA(s string) string {
	if s == "" {
		return "n/a"
	}
	return s
}

// TestPacketLoss is scenario 6: 5% packet loss on both NAT routers' public
// links (from before the agents attach); 200 calls complete with 0
// failures (SIP retransmission and the TCP uplink absorb it).
func TestPacketLoss(t *testing.T) {
	const calls, rate, pct = 200, 20, 5.0
	var how string
	o, alice, bob := callsWorld(t, func(o *Overlay) {
		for _, r := range []string{NAT1, NAT2} {
			var err error
			if how, err = o.Loss(r, pct); err != nil {
				t.Fatalf("loss on %s: %v", r, err)
			}
		}
		t.Logf("%g%% loss on nat1's and nat2's public links: %s", pct, how)
	})
	before := map[string]int{}
	for _, a := range []*Agent{alice, bob} {
		st, err := a.Status()
		if err != nil {
			t.Fatal(err)
		}
		before[a.User] = st.Failovers
	}

	res, err := o.RunUAC(context.Background(), alice.Caller(bob, calls, rate))
	requireAllOK(t, "alice → bob with loss", res, err, calls, bob)

	var failovers int
	for _, a := range []*Agent{alice, bob} {
		st, err := a.Status()
		if err != nil {
			t.Fatal(err)
		}
		failovers += st.Failovers - before[a.User]
	}
	if failovers > 0 {
		t.Logf("note: the agents failed over %d times under loss (keepalive %s)", failovers, keepalive)
	}
	dropped := "n/a (netem)"
	if strings.HasPrefix(how, "iptables") {
		dropped = fmt.Sprintf("nat1 %s, nat2 %s packets (in+out)", o.LossCounters(NAT1), o.LossCounters(NAT2))
	}
	view := checkNATView(t, o, alice, bob)
	hops := checkHops(t, alice, bob)
	t.Logf("SUMMARY %s: calls attempted %d succeeded %d failed %d at %d cps with %g%% loss on both NAT links (dropped: %s; SIPp retransmissions %d; agent failovers %d); reattach n/a; relayed %s; %s; %s",
		t.Name(), res.Created, res.Successful, res.Failed, rate, pct, dropped, res.Retransmissions, failovers, relayed(alice, bob), hops, view)
}

// TestEdgePhone is scenario 4: a plain SIPp phone on the public segment
// (203.0.113.30) registers at a super peer's SIP edge with digest auth and
// calls a phone behind NAT, and back.
//
// The edge phone, carol, registers over UDP at sp1's edge from UASPort
// with digest credentials (realm the overlay, username EXPIRY:carol); its
// contact must then be in the overlay. (a) A SIPp UAC on the phone host,
// with sp1's edge as outbound proxy, calls sip:bob@OVERLAY (bob's phone
// behind his agent on lan2, behind nat2): a call to an overlay AoR needs
// no credentials. (b) alice's phone behind her agent on lan1 calls
// sip:carol@OVERLAY; the edge delivers the calls to the flow carol
// registered from, where her SIPp UAS listens.
func TestEdgePhone(t *testing.T) {
	const calls, rate = 50, 10
	o, alice, bob := callsWorld(t, nil)
	ctx := context.Background()
	edge := o.SP(SP1)

	const carol = "carol"
	username, password := o.Secrets(t, carol)
	carolAOR := "sip:" + carol + "@" + o.Name
	regCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	start := time.Now()
	err := o.RegisterDigest(regCtx, Phone, PhoneIP, UASPort, carol, o.Name, edge.SIPAddr(), username, password)
	cancel()
	if err != nil {
		t.Fatalf("edge phone: %v", err)
	}
	regTime := time.Since(start)
	t.Logf("edge phone %s registered at %s's edge %s from %s with digest auth in %s",
		carol, edge.Host, edge.SIPAddr(), sipAddr(PhoneIP, UASPort), regTime.Round(time.Millisecond))
	// Its contact is in the overlay, read through another super peer and
	// from behind a NAT.
	var contact string
	Eventually(t, 10*time.Second, carol+"'s contact visible to alice", func() error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, err := o.RecordGet(ctx, alice.Host, o.SP(SP3), o.Credentials(t, alice.User), carolAOR)
		if err != nil {
			return err
		}
		if !strings.Contains(out, `"contact"`) || !strings.Contains(out, PhoneIP) {
			return fmt.Errorf("no contact at %s in %s", PhoneIP, out)
		}
		contact = out
		return nil
	})
	t.Logf("%s's record: %s", carolAOR, contact)
	uas := o.StartUAS(Phone, PhoneIP, UASPort)
	carolStats := func() (SIPpStats, error) { return o.Progress(uas.Name) }

	// (a) the edge phone calls bob behind nat2.
	res1, err := o.RunUAC(ctx, UAC{
		Host: Phone, IP: PhoneIP, Port: UACPort, Proxy: edge.SIPAddr(),
		User: carol, Callee: bob.User, Domain: o.Name,
		Calls: calls, Rate: rate,
	})
	requireAllOK(t, "carol (edge phone) → bob", res1, err, calls, bob)

	// (b) alice behind nat1 calls the edge phone.
	res2, err := o.RunUAC(ctx, UAC{
		Host: alice.Host, IP: alice.IP, Proxy: alice.SIPAddr(),
		User: alice.User, Callee: carol, Domain: o.Name,
		Calls: calls, Rate: rate,
	})
	requireCalls(t, "alice → carol (edge phone)", res2, err, calls, carolStats)

	view := checkNATView(t, o, alice, bob)
	hops := checkHops(t, alice, bob)
	t.Logf("SUMMARY %s: calls attempted %d succeeded %d failed %d (carol@edge→bob %d/%d, alice→carol@edge %d/%d at %d cps); edge REGISTER with digest at %s %s in %s; reattach n/a; relayed %s; %s; %s",
		t.Name(), res1.Created+res2.Created, res1.Successful+res2.Successful, res1.Failed+res2.Failed,
		res1.Successful, res1.Created, res2.Successful, res2.Created, rate,
		edge.Host, edge.SIPAddr(), regTime.Round(time.Millisecond), relayed(alice, bob), hops, view)
}

// TestSuperPeerSilentlyUnreachable: alice's super peer stops answering
// her without closing anything (iptables DROP of nat1's address at sp1:
// a host or a path lost, not a process killed). The agents keep the
// default 25 s keepalive. Alice is calling bob: her location lookups and
// requests go unanswered, which makes her agent ping its super peer at
// once; that Ping unanswered too (3 s) and it fails over, well within one
// keepalive interval (it took two, 50 s or more, before). Calls placed
// while it notices may fail (their lookups go through the silent super
// peer; the TURN fallback carries only calls already routed) and are
// reported; every call placed after the failover succeeds.
func TestSuperPeerSilentlyUnreachable(t *testing.T) {
	const calls, rate = 50, 5 // 10 s of calls around the cut
	const afterCalls = 50
	const defaultKeepalive = 25 * time.Second
	o, alice, bob := callsWorldWith(t, defaultKeepalive, nil)
	ctx := context.Background()
	before, err := alice.Status()
	if err != nil {
		t.Fatal(err)
	}
	if sp := o.ByPeerID(before.SuperPeer); sp == nil || sp.Host != SP1 {
		t.Fatalf("alice attached to %v, want sp1", spName(sp))
	}
	uac := alice.Caller(bob, calls, rate)
	uac.Name = "sipp-uac-silent"
	done := o.StartUAC(ctx, uac)
	Eventually(t, 30*time.Second, "calls under way", func() error {
		st, err := o.Progress(uac.Name)
		if err != nil {
			return err
		}
		if st.Successful < 5 {
			return fmt.Errorf("%d calls completed", st.Successful)
		}
		return nil
	})
	if err := o.Partition(SP1, NAT1); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	t.Logf("sp1 drops everything from and to nat1 (%s) from now on", NAT1WAN)

	var after AgentStatus
	if err := poll(defaultKeepalive, 50*time.Millisecond, func() error {
		st, err := alice.Status()
		if err != nil {
			return err
		}
		if !st.Attached || st.SuperPeer == before.SuperPeer {
			return fmt.Errorf("attached=%t super_peer=%.8s", st.Attached, st.SuperPeer)
		}
		after = st
		return nil
	}); err != nil {
		t.Fatalf("alice's agent still on sp1 one keepalive interval (%s) after it went silent: %v", defaultKeepalive, err)
	}
	noticed := time.Since(cut)
	t.Logf("alice's agent moved to %s %s after sp1 went silent", spName(o.ByPeerID(after.SuperPeer)), noticed.Round(time.Millisecond))
	r := <-done
	if r.Err != nil {
		t.Fatalf("calls around the cut: %v", r.Err)
	}
	gap := r.Res
	t.Logf("calls around the cut: %s in %s", gap.SIPpStats, gap.Duration.Round(time.Millisecond))

	bob.FreshPhone(t)
	res, err := o.RunUAC(ctx, alice.Caller(bob, afterCalls, rate*2))
	requireAllOK(t, "alice → bob after the failover", res, err, afterCalls, bob)
	t.Logf("SUMMARY %s: calls attempted %d succeeded %d failed %d (around sp1 going silent to alice at %d cps: %d/%d; after the failover: %d/%d); alice's agent failed over %s after (keepalive %s); relayed %s",
		t.Name(), gap.Created+res.Created, gap.Successful+res.Successful, gap.Failed+res.Failed, rate,
		gap.Successful, gap.Created, res.Successful, res.Created, noticed.Round(time.Millisecond), defaultKeepalive, relayed(alice, bob))
}
