package overlay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/e2e/harness/phone"
	"github.com/p2psip/p2psip/e2e/harness/promtext"
	"github.com/p2psip/p2psip/superpeer"
	"github.com/p2psip/p2psip/superpeer/store"
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

// TestAgentRepublishes: bob's super peer dies together with every
// replica of bob's location and peer records (replicas 2 of 6 super
// peers). Bob's agent fails over to a survivor at once, but its writes
// fail there: no replica of those records is alive, and the mesh has not
// declared them dead yet. The agent holds the truth (its phone's
// binding), so it retries until the records are stored on the new
// replicas; without that, calls to bob would fail until its hourly
// refresh or his phone's next REGISTER.
func TestAgentRepublishes(t *testing.T) {
	o := harness.New(t)
	o.Tune = func(c *superpeer.Config) { c.Replicas = 2 }
	sps := make([]*harness.SP, 6)
	var bootstrap []string
	for i := range sps {
		sps[i] = o.Start()
		bootstrap = append(bootstrap, sps[i].Node.PeerAddr())
	}
	o.WaitConverged(15 * time.Second)
	cfg := o.AgentConfig("bob", sps[0])
	cfg.Bootstrap = bootstrap // the survivors may not be among its alternates
	b := o.RunAgent("bob", cfg)
	bob := agentPhone(t, o, "bob", "bob", b)
	phone.MustRegister(t, bob)

	aor := "sip:bob@" + o.Name
	members := make([]ids.PeerID, len(sps))
	byID := map[ids.PeerID]*harness.SP{}
	for i, sp := range sps {
		members[i], byID[sp.Node.ID()] = sp.Node.ID(), sp
	}
	att, _ := b.Uplink().Attachment()
	doomed := map[ids.PeerID]bool{att.SP: true}
	for _, r := range []*record.Record{{Kind: record.KindLocation, Name: aor}, {Kind: record.KindPeer, Name: b.ID().String()}} {
		for _, p := range store.Place(r.ResourceID(), members, 2) {
			doomed[p] = true
		}
	}
	var survivor *harness.SP
	for _, sp := range sps {
		if !doomed[sp.Node.ID()] {
			survivor = sp
		}
	}
	killed := time.Now()
	// Bob's super peer last: he must not fail over to a doomed one and
	// store his records there (acknowledged, then lost with it) while the
	// kills are under way.
	for id := range doomed {
		if id != att.SP {
			o.Kill(byID[id])
		}
	}
	o.Kill(byID[att.SP])
	t.Logf("killed bob's super peer and every replica of his records: %d of %d super peers", len(doomed), len(sps))

	obs, err := o.Dial(survivor, o.Credentials("observer"), wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	harness.Eventually(t, 30*time.Second, func() error {
		cur, ok := b.Uplink().Attachment()
		if !ok || doomed[cur.SP] {
			return errors.New("bob's agent not attached to a survivor")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		rec, err := obs.Get(ctx, record.KindLocation, aor)
		if err != nil {
			return fmt.Errorf("bob's location record: %w", err)
		}
		if cs := liveContacts(rec); len(cs) != 1 || cs[0].SP != cur.SP {
			return fmt.Errorf("bob's contacts %+v, want one naming %s", cs, cur.SP.Short())
		}
		prec, err := obs.Get(ctx, record.KindPeer, b.ID().String())
		if err != nil {
			return fmt.Errorf("bob's peer record: %w", err)
		}
		for _, e := range prec.Live(time.Now()).Entries {
			if e.Peer != nil && e.Peer.SP == cur.SP {
				return nil
			}
		}
		return fmt.Errorf("bob's peer record does not name %s", cur.SP.Short())
	})
	t.Logf("bob's contact and peer record stored again %s after the kills", time.Since(killed).Round(time.Millisecond))
}

// TestAgentMetrics: the agent's admin server exports its state on
// /metrics in the Prometheus text format (an endpoint fleet is monitored
// like the super peers).
func TestAgentMetrics(t *testing.T) {
	o, sps := agentOverlay(t, 2)
	a := attachAgent(t, o, "alice", sps[0])
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := o.AgentConfig("bob", sps[1])
	cfg.Admin, cfg.AdminListener = l.Addr().String(), l
	b := o.RunAgent("bob", cfg)
	alice := agentPhone(t, o, "alice", "alice", a)
	bob := agentPhone(t, o, "bob", "bob", b)
	phone.MustRegister(t, bob)
	callAndCheck(t, alice, a, bob, b, 3)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := promtext.Get(ctx, http.DefaultClient, "http://"+l.Addr().String()+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for name, ok := range map[string]func(float64) bool{
		"p2psip_agent_attached":                                             func(v float64) bool { return v == 1 },
		"p2psip_agent_bindings":                                             func(v float64) bool { return v == 1 },
		"p2psip_agent_failovers_total":                                      func(v float64) bool { return v == 0 },
		`p2psip_agent_sip_tunnel_messages_total{direction="in"}`:            func(v float64) bool { return v > 0 },
		`p2psip_agent_sip_tunnel_in_by_hops_total{hops="3"}`:                func(v float64) bool { return v > 0 },
		`p2psip_agent_relay_messages_total{direction="out",path="overlay"}`: func(v float64) bool { return v > 0 },
		`p2psip_agent_turn_allocations_total{outcome="ok"}`:                 func(float64) bool { return true }, // present
		"go_goroutines": func(v float64) bool { return v > 0 },
	} {
		if v, found := m[name]; !found || !ok(v) {
			t.Errorf("%s = %v (present %t)", name, v, found)
		}
	}
}
