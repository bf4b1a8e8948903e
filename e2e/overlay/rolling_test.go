package overlay

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/e2e/harness/phone"
)

// TestRollingRestart: three super peers, alice's and bob's agents on
// different ones with registered phones. One after another, every super
// peer of the original three leaves gracefully and a fresh one joins in
// its place. Between restarts alice calls bob; every call succeeds and
// neither registration is ever missing from the overlay.
func TestRollingRestart(t *testing.T) {
	o, sps := agentOverlay(t, 3)
	a := attachAgent(t, o, "alice", sps[0])
	b := attachAgent(t, o, "bob", sps[1])
	alice := agentPhone(t, o, "alice", "alice", a)
	bob := agentPhone(t, o, "bob", "bob", b)
	phone.MustRegister(t, alice)
	phone.MustRegister(t, bob)
	agents := []*harness.Agent{a, b}

	// registered fails the test at once if an agent's contact is missing
	// from its location record (a lost registration); a read error is
	// returned for Eventually to retry (the store may still be noticing
	// the departure).
	registered := func(t *testing.T, at *harness.SP) error {
		t.Helper()
		for _, x := range agents {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			rec, err := lookupAoR(ctx, o, at, "sip:"+x.User+"@"+o.Name)
			cancel()
			if wire.CodeOf(err) == wire.CodeNotFound {
				t.Fatalf("%s's registration lost: %v", x.User, err)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", x.User, err)
			}
			found := false
			for _, c := range liveContacts(rec) {
				found = found || c.PeerID == x.ID()
			}
			if !found {
				t.Fatalf("%s's registration lost: no contact of its agent in %v", x.User, liveContacts(rec))
			}
			if n := x.Registrar().Bindings(); n != 1 {
				t.Fatalf("%s's agent has %d bindings", x.User, n)
			}
		}
		return nil
	}
	calls := 0
	call := func(t *testing.T) {
		t.Helper()
		invites, acks, byes := bob.Invites.Load(), bob.Acks.Load(), bob.Byes.Load()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		codes, err := alice.Call(ctx, bob.AoR)
		if err != nil {
			t.Fatalf("call %d alice → bob failed: %v (responses %v)", calls+1, err, codes)
		}
		if codes[len(codes)-1] != 200 {
			t.Fatalf("call %d alice → bob: responses %v, want a final 200", calls+1, codes)
		}
		harness.Eventually(t, 10*time.Second, func() error {
			if bob.Invites.Load() != invites+1 || bob.Acks.Load() != acks+1 || bob.Byes.Load() != byes+1 {
				return fmt.Errorf("bob got %d INVITE, %d ACK, %d BYE", bob.Invites.Load()-invites,
					bob.Acks.Load()-acks, bob.Byes.Load()-byes)
			}
			return nil
		})
		calls++
	}

	call(t)
	for i, old := range sps {
		start := time.Now()
		if err := o.Leave(old, 10*time.Second); err != nil {
			t.Fatalf("restart %d: leave: %v", i+1, err)
		}
		left := time.Since(start)
		// Graceful: both agents were moved before the super peer went.
		for _, x := range agents {
			att, ok := x.Uplink().Attachment()
			if !ok || att.SP == old.Node.ID() {
				t.Fatalf("restart %d: %s's agent not moved off the leaving super peer (attached %v)", i+1, x.User, ok)
			}
		}
		alive := o.Alive()
		harness.Eventually(t, 10*time.Second, func() error { return registered(t, alive[0]) })
		fresh := o.Start()
		o.WaitConverged(15 * time.Second)
		harness.Eventually(t, 10*time.Second, func() error { return registered(t, fresh) })
		call(t)
		t.Logf("restart %d: %s left in %v, %s joined; call %d ok", i+1, old.Node.ID().Short(),
			left.Round(time.Millisecond), fresh.Node.ID().Short(), calls)
	}
	if calls != len(sps)+1 {
		t.Fatalf("%d calls succeeded, want %d", calls, len(sps)+1)
	}
	// Every super peer now is one started during the roll; the
	// registrations are all still there, read through each of them.
	for _, sp := range o.Alive() {
		for _, old := range sps {
			if sp == old {
				t.Fatal("an original super peer is still alive")
			}
		}
		harness.Eventually(t, 10*time.Second, func() error { return registered(t, sp) })
	}
}
