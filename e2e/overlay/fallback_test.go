package overlay

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/e2e/harness/phone"
	"github.com/p2psip/p2psip/superpeer"
)

// relayWorld starts three super peers (relaying to loopback allowed),
// alice's agent on sp1 and bob's on sp2, each with a TURN allocation on
// another super peer and a registered phone, and checks that bob's
// contact and peer record carry his relayed address.
func relayWorld(t *testing.T) (o *harness.Overlay, sps []*harness.SP, a, b *harness.Agent, alice, bob *phone.Phone) {
	t.Helper()
	o = harness.New(t)
	o.Tune = func(c *superpeer.Config) { c.TURNAllowLoopback = true }
	sps = []*harness.SP{o.Start(), o.Start(), o.Start()}
	o.WaitConverged(15 * time.Second)
	a = attachAgent(t, o, "alice", sps[0])
	b = attachAgent(t, o, "bob", sps[1])
	for _, x := range []*harness.Agent{a, b} {
		harness.Eventually(t, 15*time.Second, func() error {
			st := x.Status().Relay
			att, _ := x.Uplink().Attachment()
			switch {
			case st == nil || st.Addr == "":
				return fmt.Errorf("%s has no TURN allocation", x.User)
			case st.Server == att.TURNAddr:
				return fmt.Errorf("%s's allocation is on its own super peer %s", x.User, st.Server)
			}
			return nil
		})
		st := x.Status().Relay
		t.Logf("%s: allocation on %s, relayed address %s", x.User, st.Server, st.Addr)
	}
	alice = agentPhone(t, o, "alice", "alice", a)
	bob = agentPhone(t, o, "bob", "bob", b)
	phone.MustRegister(t, alice)
	phone.MustRegister(t, bob)

	// Bob's contact carries his relayed address.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	harness.Eventually(t, 10*time.Second, func() error {
		rec, err := lookupAoR(ctx, o, sps[0], "sip:bob@"+o.Name)
		if err != nil {
			return err
		}
		cs := liveContacts(rec)
		if len(cs) != 1 || cs[0].Relay != b.Status().Relay.Addr {
			return fmt.Errorf("bob's contacts %+v, want one with relay %s", cs, b.Status().Relay.Addr)
		}
		return nil
	})

	// So does his peer record.
	harness.Eventually(t, 10*time.Second, func() error {
		s, err := o.Dial(sps[2], o.Credentials("observer"), wire.RoleClient)
		if err != nil {
			return err
		}
		defer s.Close()
		rec, err := s.Get(ctx, record.KindPeer, b.ID().String())
		if err != nil {
			return err
		}
		for _, e := range rec.Live(time.Now()).Entries {
			if e.Peer != nil && e.Peer.Relay == b.Status().Relay.Addr {
				return nil
			}
		}
		return fmt.Errorf("bob's peer record %+v has not his relayed address", rec.Entries)
	})
	return o, sps, a, b, alice, bob
}

// TestTURNFallback: alice's agent on sp1, bob's on sp2, each with a TURN
// allocation on another super peer. With sp1 refusing to forward to sp2,
// alice's INVITE comes back as a tunnel error frame; her agent re-sends it
// from its allocation to bob's relayed address (alice → relay(alice) →
// relay(bob) → bob) and the call completes, every payload within 3 hops.
func TestTURNFallback(t *testing.T) {
	_, sps, a, b, alice, bob := relayWorld(t)

	t.Run("overlay path", func(t *testing.T) {
		before := a.Status().Relay.RelayedOut
		callAndCheck(t, alice, a, bob, b, 3)
		if n := a.Status().Relay.RelayedOut - before; n != 0 {
			t.Errorf("alice's agent relayed %d messages with the overlay path working", n)
		}
	})

	// sp1 now answers every frame for bob (on sp2) with an error frame.
	sps[0].Node.RouterForTest().BlockForTest(sps[1].Node.ID())
	t.Run("through the relays", func(t *testing.T) {
		aBefore, bBefore := *a.Status().Relay, *b.Status().Relay
		callAndCheck(t, alice, a, bob, b, 3)
		aAfter, bAfter := *a.Status().Relay, *b.Status().Relay
		out, in := aAfter.RelayedOut-aBefore.RelayedOut, bAfter.RelayedIn-bBefore.RelayedIn
		t.Logf("alice's agent: relayed out %d, overlay out %d; bob's agent: relayed in %d, dropped %d",
			out, aAfter.OverlayOut-aBefore.OverlayOut, in, bAfter.Dropped)
		// INVITE (re-sent after its error frame), ACK and BYE at least.
		if out < 3 || in < 3 {
			t.Errorf("relayed: alice out %d, bob in %d; want at least 3 each", out, in)
		}
		if bAfter.Dropped != 0 {
			t.Errorf("bob's agent dropped %d relayed datagrams", bAfter.Dropped)
		}
	})
	// And sp2 refuses sp1: bob's responses come back as error frames too
	// and go through the relays to alice's relayed address, which his
	// agent learnt from her relayed INVITE.
	sps[1].Node.RouterForTest().BlockForTest(sps[0].Node.ID())
	t.Run("both directions through the relays", func(t *testing.T) {
		aBefore, bBefore := *a.Status().Relay, *b.Status().Relay
		callAndCheck(t, bob, b, alice, a, 3)
		aAfter, bAfter := *a.Status().Relay, *b.Status().Relay
		t.Logf("bob → alice: bob's agent relayed out %d, in %d; alice's agent relayed out %d, in %d",
			bAfter.RelayedOut-bBefore.RelayedOut, bAfter.RelayedIn-bBefore.RelayedIn,
			aAfter.RelayedOut-aBefore.RelayedOut, aAfter.RelayedIn-aBefore.RelayedIn)
		if bAfter.RelayedOut-bBefore.RelayedOut < 3 || aAfter.RelayedOut-aBefore.RelayedOut < 2 {
			t.Errorf("want at least 3 relayed requests from bob and 2 relayed responses from alice")
		}
	})
	// Datagrams without the P2R1 header reaching bob's allocation (the
	// permissions let any super peer's IP in: 127.0.0.1 here) are dropped
	// and counted.
	t.Run("junk dropped", func(t *testing.T) {
		before := b.Status().Relay
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		to, err := net.ResolveUDPAddr("udp4", before.Addr)
		if err != nil {
			t.Fatal(err)
		}
		for _, junk := range [][]byte{[]byte("hello"), append([]byte("P2R2"), make([]byte, 40)...), []byte("P2R1")} {
			if _, err := pc.WriteTo(junk, to); err != nil {
				t.Fatal(err)
			}
		}
		harness.Eventually(t, 5*time.Second, func() error {
			if st := b.Status().Relay; st.Dropped != before.Dropped+3 || st.RelayedIn != before.RelayedIn {
				return fmt.Errorf("bob's agent: dropped %d, relayed in %d; want %d, %d",
					st.Dropped, st.RelayedIn, before.Dropped+3, before.RelayedIn)
			}
			return nil
		})
	})
	for _, x := range []*harness.Agent{a, b} {
		if s := x.Router().Stats(); s.MaxHops > 3 {
			t.Errorf("%s's agent: max hops %d", x.User, s.MaxHops)
		}
	}
}

// TestTURNFallbackSilentCut: the link between sp1 and sp2 (bob's) is cut
// silently: tunnel frames between them vanish with no error frame, as
// when a cable is pulled (TLS writes buffer, memberlist's indirect probes
// keep both alive). Nothing reattaches. A request that gets no response
// within the agent's bound is re-sent through the relays; the callee's
// agent answers the way it came; calls complete with every payload within
// 3 hops, and a request that reached the callee twice rings once.
func TestTURNFallbackSilentCut(t *testing.T) {
	o, sps, a, b, alice, bob := relayWorld(t)
	callAndCheck(t, alice, a, bob, b, 3) // the overlay path works first

	// Only bob's answers vanish (sp2 → sp1): alice's INVITE reaches bob
	// over the overlay and, after the bound, again through the relays.
	// Bob's agent must take the second copy as the retransmission it is
	// (same branch) and repeat its last response: his phone sees one
	// INVITE. (Not callAndCheck: the 180 was lost on the cut and, being
	// provisional, is not repeated: alice sees 100 and 200.)
	t.Run("answers lost, request duplicated", func(t *testing.T) {
		sps[1].Node.RouterForTest().DropForTest(sps[0].Node.ID())
		defer sps[1].Node.RouterForTest().UnblockForTest(sps[0].Node.ID())
		aBefore, bBefore := *a.Status().Relay, *b.Status().Relay
		aHops, bHops := hopsIn(a), hopsIn(b)
		invites, acks, byes := bob.Invites.Load(), bob.Acks.Load(), bob.Byes.Load()
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		codes, err := alice.Call(ctx, bob.AoR)
		if err != nil || codes[len(codes)-1] != 200 {
			t.Fatalf("alice calls bob: %v (responses %v)", err, codes)
		}
		harness.Eventually(t, 10*time.Second, func() error {
			if bob.Invites.Load() != invites+1 || bob.Acks.Load() != acks+1 || bob.Byes.Load() != byes+1 {
				return fmt.Errorf("bob got %d INVITE, %d ACK, %d BYE; want 1 each",
					bob.Invites.Load()-invites, bob.Acks.Load()-acks, bob.Byes.Load()-byes)
			}
			return nil
		})
		// Alice's agent got the 200s (overlay answers were lost); bob's
		// the INVITE twice (one absorbed), ACK and BYE: all with 3 hops.
		checkHops(t, "alice's agent", hopsDelta(aHops, hopsIn(a)), 3, 2)
		checkHops(t, "bob's agent", hopsDelta(bHops, hopsIn(b)), 3, 3)
		t.Logf("alice → bob: %v", codes)
		aAfter, bAfter := *a.Status().Relay, *b.Status().Relay
		t.Logf("call in %s; alice's agent: timeouts %d, relayed out %d; bob's agent: duplicates absorbed %d",
			time.Since(start).Round(time.Millisecond), aAfter.Timeouts-aBefore.Timeouts,
			aAfter.RelayedOut-aBefore.RelayedOut, bAfter.Duplicates-bBefore.Duplicates)
		if aAfter.Timeouts == aBefore.Timeouts {
			t.Errorf("alice's agent re-sent nothing on a timeout")
		}
		if bAfter.Duplicates == bBefore.Duplicates {
			t.Errorf("bob's agent absorbed no duplicate: the INVITE should have reached it twice")
		}
	})

	// The whole link is cut, both ways. Carol (on sp1 like alice, but
	// with no destination stuck on the relays yet) calls bob, then bob
	// calls carol: his agent has her sticky from her relayed datagrams,
	// so his INVITE takes the relays at once.
	c := attachAgent(t, o, "carol", sps[0])
	harness.Eventually(t, 15*time.Second, func() error {
		if st := c.Status().Relay; st == nil || st.Addr == "" {
			return fmt.Errorf("carol has no TURN allocation")
		}
		return nil
	})
	carol := agentPhone(t, o, "carol", "carol", c)
	phone.MustRegister(t, carol)
	sps[0].Node.RouterForTest().DropForTest(sps[1].Node.ID())
	sps[1].Node.RouterForTest().DropForTest(sps[0].Node.ID())
	for _, dir := range []struct {
		name             string
		caller           *phone.Phone
		from             *harness.Agent
		callee           *phone.Phone
		to               *harness.Agent
		wantTimeoutsFrom bool
	}{
		{"carol calls bob", carol, c, bob, b, true},
		{"bob calls carol", bob, b, carol, c, false},
	} {
		t.Run(dir.name, func(t *testing.T) {
			fBefore, tBefore := *dir.from.Status().Relay, *dir.to.Status().Relay
			start := time.Now()
			callAndCheck(t, dir.caller, dir.from, dir.callee, dir.to, 3)
			fAfter, tAfter := *dir.from.Status().Relay, *dir.to.Status().Relay
			out := fAfter.RelayedOut - fBefore.RelayedOut
			timeouts := fAfter.Timeouts - fBefore.Timeouts
			t.Logf("call in %s; caller's agent: relayed out %d, overlay out %d, timeouts %d; callee's agent: relayed in %d, relayed out %d",
				time.Since(start).Round(time.Millisecond), out, fAfter.OverlayOut-fBefore.OverlayOut, timeouts,
				tAfter.RelayedIn-tBefore.RelayedIn, tAfter.RelayedOut-tBefore.RelayedOut)
			// INVITE (re-sent after the timeout), ACK and BYE at least;
			// the responses come back through the relays too.
			if out < 3 || tAfter.RelayedOut-tBefore.RelayedOut < 2 {
				t.Errorf("relayed: caller out %d, callee out %d; want at least 3 and 2", out, tAfter.RelayedOut-tBefore.RelayedOut)
			}
			if dir.wantTimeoutsFrom && timeouts == 0 {
				t.Errorf("the caller's agent re-sent nothing on a timeout")
			}
		})
	}
	for _, x := range []*harness.Agent{a, b, c} {
		if att, _ := x.Uplink().Attachment(); att.Reattach > 0 {
			t.Errorf("%s's agent reattached (%s): the cut must be survived without", x.User, att.Reattach)
		}
		if s := x.Router().Stats(); s.MaxHops > 3 {
			t.Errorf("%s's agent: max hops %d", x.User, s.MaxHops)
		}
	}
}

// TestTURNFallbackPeerRecord: bob's contact carries no relayed address
// (rewritten so by the test, as a registration stored before his
// allocation existed would be), only his peer record does. With the
// link between sp1 and sp2 cut silently, alice's agent finds bob's
// relayed address in his peer record once the overlay path has failed,
// and the call completes through the relays.
func TestTURNFallbackPeerRecord(t *testing.T) {
	o, sps, a, b, alice, bob := relayWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	aor := "sip:bob@" + o.Name
	rec, err := lookupAoR(ctx, o, sps[0], aor)
	if err != nil {
		t.Fatal(err)
	}
	rec = rec.Live(time.Now())
	for i := range rec.Entries {
		e := &rec.Entries[i]
		if e.Contact != nil {
			e.Contact.Relay = ""
			e.CSeq++ // a newer registration of the same contact
		}
	}
	// Through bob's agent's own session: a contact naming its Peer-ID may
	// only be written by it.
	s, err := b.Uplink().Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, rec); err != nil {
		t.Fatalf("rewrite bob's contact: %v", err)
	}
	harness.Eventually(t, 10*time.Second, func() error {
		rec, err := lookupAoR(ctx, o, sps[0], aor)
		if err != nil {
			return err
		}
		cs := liveContacts(rec)
		if len(cs) != 1 || cs[0].Relay != "" {
			return fmt.Errorf("bob's contacts %+v, want one without a relayed address", cs)
		}
		return nil
	})

	sps[0].Node.RouterForTest().DropForTest(sps[1].Node.ID())
	sps[1].Node.RouterForTest().DropForTest(sps[0].Node.ID())
	before := *a.Status().Relay
	callAndCheck(t, alice, a, bob, b, 3)
	after := *a.Status().Relay
	t.Logf("alice's agent: peer-record lookups %d, timeouts %d, relayed out %d",
		after.Lookups-before.Lookups, after.Timeouts-before.Timeouts, after.RelayedOut-before.RelayedOut)
	if after.Lookups == before.Lookups || after.RelayedOut-before.RelayedOut < 3 {
		t.Errorf("want a peer-record lookup and at least 3 relayed messages")
	}
}

// TestTURNFallbackDeadRelay: a timeout is only a hint. Alice's agent
// treats every request as unanswered after 1 ms (RelayAfter), so each one
// also gets a copy sent to bob's relayed address — which is dead: the
// super peer holding bob's allocation is gone. The overlay path works, so
// every call still completes, bob's phone sees each INVITE once, and bob
// never becomes "sticky" (reached only through the relays): nothing of
// his came back through them.
func TestTURNFallbackDeadRelay(t *testing.T) {
	o := harness.New(t)
	o.Tune = func(c *superpeer.Config) { c.TURNAllowLoopback = true }
	sps := []*harness.SP{o.Start(), o.Start(), o.Start()}
	o.WaitConverged(15 * time.Second)
	b := attachAgent(t, o, "bob", sps[1])
	var bobRelay string
	harness.Eventually(t, 15*time.Second, func() error {
		if st := b.Status().Relay; st != nil && st.Addr != "" {
			bobRelay = st.Server
			return nil
		}
		return fmt.Errorf("bob has no TURN allocation")
	})
	// Alice on the super peer that does not hold bob's allocation; the
	// one that does goes away once bob's contact (with his relayed
	// address) is registered.
	var aliceSP, relaySP *harness.SP
	for _, sp := range []*harness.SP{sps[0], sps[2]} {
		if sp.Node.TURNAddr() == bobRelay {
			relaySP = sp
		} else {
			aliceSP = sp
		}
	}
	if relaySP == nil {
		t.Fatalf("bob's allocation on %s, which is none of the other super peers", bobRelay)
	}
	cfg := o.AgentConfig("alice", aliceSP)
	cfg.RelayAfter = time.Millisecond
	a := o.RunAgent("alice", cfg)
	alice := agentPhone(t, o, "alice", "alice", a)
	bob := agentPhone(t, o, "bob", "bob", b)
	phone.MustRegister(t, alice)
	phone.MustRegister(t, bob)
	// Bob's phone is slow to ring, so his INVITEs outlast the sweep of
	// alice's pending requests.
	answer := phone.Answer(20*time.Millisecond, 200)
	bob.SetBehaviour(func(p *phone.Phone, req *sip.Request, tx sip.ServerTransaction) {
		time.Sleep(100 * time.Millisecond)
		answer(p, req, tx)
	})
	o.Kill(relaySP)

	for range 5 {
		callAndCheck(t, alice, a, bob, b, 3)
	}
	st := a.Status().Relay
	t.Logf("alice's agent: timeouts %d, relayed out %d, overlay out %d, sticky %d", st.Timeouts, st.RelayedOut, st.OverlayOut, st.Sticky)
	if st.Timeouts == 0 {
		t.Error("no request timed out: the test did not exercise the relay copies")
	}
	if st.Sticky != 0 {
		t.Errorf("%d destinations sticky to a relay path nothing came back on", st.Sticky)
	}
}
