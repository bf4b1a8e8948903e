package overlay

import (
	"context"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/wait"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/superpeer"
	"github.com/p2psip/p2psip/superpeer/store"
)

// A super peer that leaves gracefully hands its records over and moves its
// agents before it goes: nothing is lost and no agent is left unattached.
func TestGracefulLeave(t *testing.T) {
	o := harness.New(t)
	o.Tune = func(c *superpeer.Config) { c.Keepalive = time.Second }
	a, b, c := o.Start(), o.Start(), o.Start()
	o.WaitConverged(10 * time.Second)
	const n = 1000
	for i := range n {
		if _, err := b.Node.Store().Put(context.Background(), store.Writer{User: userOf(i)}, locationRecord(i, time.Now().Add(time.Hour))); err != nil {
			t.Fatal(err)
		}
	}
	waitReplicated(t, o, n, 10*time.Second)
	x := startUplink(t, o, "alice", a)
	y := startUplink(t, o, "bob", a)
	if attachedTo(x) != a.Node.ID() || attachedTo(y) != a.Node.ID() {
		t.Fatal("agents must start on a")
	}
	// a's TURN service entry is listed until it leaves.
	listed := func() bool {
		rec, err := b.Node.Store().Find(context.Background(), "turn")
		if err != nil {
			return false
		}
		for _, e := range rec.Live(time.Now()).Entries {
			if e.Provider != nil && e.Provider.PeerID == a.Node.ID() {
				return true
			}
		}
		return false
	}
	wait.For(t, 10*time.Second, "a's turn service entry", listed)
	start := time.Now()
	if err := a.Node.Leave(10 * time.Second); err != nil {
		t.Fatalf("leave: %v", err)
	}
	t.Logf("left in %s", time.Since(start))
	if a.Node.Serving() {
		t.Error("a still says it is ready (/readyz) after leaving")
	}
	o.Kill(a)
	if listed() {
		t.Error("a's turn service entry still listed after it left")
	}
	for _, u := range []*testUplink{x, y} {
		att, ok := u.Attachment()
		if !ok || att.SP == a.Node.ID() {
			t.Fatalf("agent %s not moved before the super peer left (attached %v to %s)", u.Self().Short(), ok, att.SP.Short())
		}
		if u.Failovers() != 1 {
			t.Fatalf("agent moved %d times", u.Failovers())
		}
	}
	// Every record is held by its full replica set among the remaining two
	// immediately (the hand-off was acknowledged before leaving).
	fetchAll(t, o, n, []*harness.SP{b, c})
	waitReplicated(t, o, n, 10*time.Second)
}
