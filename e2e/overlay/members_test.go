package overlay

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/superpeer"
)

// TestAgentFollowsMembers: a super peer tells its agents when super peers
// drain, die or join (wire.MembersChange). An agent whose TURN allocation
// sits on a super peer that begins draining moves it at once, not at its
// next self-probe (5–15 s later, the relay dead meanwhile); one killed
// leaves the agent's alternates as soon as the mesh declares it dead; one
// that joins becomes an alternate.
func TestAgentFollowsMembers(t *testing.T) {
	o := harness.New(t)
	o.Tune = func(c *superpeer.Config) { c.TURNAllowLoopback = true }
	sps := []*harness.SP{o.Start(), o.Start(), o.Start(), o.Start()}
	o.WaitConverged(15 * time.Second)
	b := attachAgent(t, o, "bob", sps[0])

	alternates := func() []string {
		att, _ := b.Uplink().Attachment()
		var out []string
		for _, a := range att.Alternates {
			out = append(out, a.PeerAddr)
		}
		return out
	}
	// holder waits for bob's allocation and returns the super peer
	// holding it, never excluded.
	holder := func(excluded *harness.SP) *harness.SP {
		t.Helper()
		var h *harness.SP
		harness.Eventually(t, 15*time.Second, func() error {
			st := b.Status().Relay
			if st == nil || st.Addr == "" {
				return fmt.Errorf("bob has no TURN allocation")
			}
			for _, sp := range o.Alive() {
				if sp.Node.TURNAddr() == st.Server && sp != excluded {
					h = sp
					return nil
				}
			}
			return fmt.Errorf("bob's allocation is on %s, not on a live super peer", st.Server)
		})
		return h
	}
	movedOff := func(gone *harness.SP, within time.Duration, what string) time.Duration {
		t.Helper()
		start := time.Now()
		harness.Eventually(t, within, func() error {
			if st := b.Status().Relay; st == nil || st.Addr == "" || st.Server == gone.Node.TURNAddr() {
				return fmt.Errorf("bob's allocation still on the %s super peer (or none): %+v", what, st)
			}
			if alts := alternates(); slices.Contains(alts, gone.Node.PeerAddr()) {
				return fmt.Errorf("the %s super peer is still among bob's alternates %v", what, alts)
			}
			return nil
		})
		return time.Since(start)
	}

	// Draining: Leave marks it draining in the gossip before its hand-off.
	x := holder(nil)
	if x == sps[0] {
		t.Fatal("bob's allocation is on his own super peer")
	}
	left := make(chan error, 1)
	go func() { left <- o.Leave(x, 10*time.Second) }()
	// Well under the self-probe's 5 s: only the notice can do it.
	took := movedOff(x, 4*time.Second, "draining")
	if err := <-left; err != nil {
		t.Fatalf("leave: %v", err)
	}
	t.Logf("allocation moved off the draining super peer in %s", took.Round(time.Millisecond))

	// Killed: gone from the alternates once the mesh declares it dead
	// (the self-probe alone would never change the alternates).
	y := holder(x)
	if y == sps[0] {
		t.Fatal("bob's allocation is on his own super peer")
	}
	o.Kill(y)
	took = movedOff(y, 10*time.Second, "killed")
	t.Logf("allocation moved off the killed super peer in %s", took.Round(time.Millisecond))

	// Joined: a new super peer becomes an alternate.
	z := o.Start()
	harness.Eventually(t, 10*time.Second, func() error {
		if alts := alternates(); !slices.Contains(alts, z.Node.PeerAddr()) {
			return fmt.Errorf("the new super peer %s is not among bob's alternates %v", z.Node.PeerAddr(), alts)
		}
		return nil
	})
	var notices float64
	for _, sp := range o.Alive() {
		notices += counter(t, sp, "p2psip_attach_members_notices_total", "")
	}
	if notices < 3 {
		t.Errorf("super peers counted %v members notices, want at least 3 (drain, death, join)", notices)
	}
}
