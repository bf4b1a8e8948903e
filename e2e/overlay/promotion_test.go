package overlay

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/e2e/harness/phone"
	"github.com/p2psip/p2psip/ordinarypeer/agent"
	"github.com/p2psip/p2psip/superpeer"
	"github.com/p2psip/p2psip/superpeer/promoted"
	"github.com/p2psip/p2psip/superpeer/store"
)

// promotionOverlay starts n super peers with the given promotion mode
// (no minimum uptime, no ratio).
func promotionOverlay(t *testing.T, n int, mode string) (*harness.Overlay, []*harness.SP) {
	t.Helper()
	o := harness.New(t)
	o.Tune = func(c *superpeer.Config) { c.Promotion = mode }
	sps := make([]*harness.SP, n)
	for i := range sps {
		sps[i] = o.Start()
	}
	o.WaitConverged(15 * time.Second)
	return o, sps
}

// promotableAgent runs an agent with role auto bootstrapped at sp, with
// its would-be super peer on 127.0.0.1 (ephemeral ports). wrap, if set,
// replaces the promoter the agent sees (a liar).
func promotableAgent(t *testing.T, o *harness.Overlay, user string, sp *harness.SP, wrap func(*promoted.Node) agent.Promoter) (*harness.Agent, *promoted.Node) {
	t.Helper()
	return promotableAgentTuned(t, o, user, sp, wrap, nil)
}

// promotableAgentTuned is promotableAgent with tune applied to the agent's
// configuration last.
func promotableAgentTuned(t *testing.T, o *harness.Overlay, user string, sp *harness.SP, wrap func(*promoted.Node) agent.Promoter, tune func(*agent.Config)) (*harness.Agent, *promoted.Node) {
	t.Helper()
	tmpl := o.FastConfig()
	tmpl.DataDir = ""
	// memberlist does not join its goroutines on shutdown: a probe under
	// way may still log after the test ended, which testing turns into a
	// panic. The promoted super peer's log is cut off once the test is done.
	// logx.ForTest's cleanup is registered before the agent's: it runs
	// after its stop.
	log := logx.ForTest(t, zerolog.InfoLevel).With().Str("agent", user).Logger()
	pn, err := promoted.New(promoted.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Template: tmpl, LeaveTimeout: 2 * time.Second}, log)
	if err != nil {
		t.Fatal(err)
	}
	cfg := o.AgentConfig(user, sp)
	cfg.Role = "auto"
	cfg.Promoter = pn
	if wrap != nil {
		cfg.Promoter = wrap(pn)
	}
	if tune != nil {
		tune(&cfg)
	}
	return o.RunAgent(user, cfg), pn
}

// waitRefused waits until the agent's status gives a reason containing want.
func waitRefused(t *testing.T, a *harness.Agent, want string) string {
	t.Helper()
	var reason string
	harness.Eventually(t, 40*time.Second, func() error {
		st := a.Status()
		if st.Role != agent.RoleOrdinary {
			return fmt.Errorf("role %q, want ordinary", st.Role)
		}
		if st.Promotion == nil || !strings.Contains(st.Promotion.Reason, want) {
			return fmt.Errorf("promotion status %+v, want a reason with %q", st.Promotion, want)
		}
		reason = st.Promotion.Reason
		return nil
	})
	return reason
}

// TestPromotion: on a 3-super-peer overlay with promotion auto, a
// reachable agent with role auto is dial-back tested, becomes the fourth
// super peer, takes its share of the records, and its own agent attaches
// to it; calls through it still work.
func TestPromotion(t *testing.T) {
	o, sps := promotionOverlay(t, 3, "auto")
	const n = 60
	ctx := context.Background()
	expires := time.Now().Add(time.Hour)
	for i := range n {
		if _, err := sps[i%3].Node.Store().Put(ctx, store.Writer{User: userOf(i)}, locationRecord(i, expires)); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}

	start := time.Now()
	carol, pn := promotableAgent(t, o, "carol", sps[0], nil)
	harness.Eventually(t, 40*time.Second, func() error {
		if st := carol.Status(); st.Role != agent.RoleSuperPeer {
			return fmt.Errorf("role %q (promotion %+v)", st.Role, st.Promotion)
		}
		return nil
	})
	took := time.Since(start)
	sp := pn.SuperPeer()
	if sp == nil {
		t.Fatal("status says superpeer but no super peer runs")
	}
	if sp.ID() == carol.ID() {
		t.Fatal("the super peer shares the agent's Peer-ID")
	}
	newSP := &harness.SP{Node: sp}

	// Every super peer, the new one included, sees four members.
	harness.Eventually(t, 15*time.Second, func() error {
		for _, x := range append(sps, newSP) {
			v := x.Node.Mesh().View()
			if _, ok := v.Lookup(sp.ID()); !ok || len(v.Members) != 4 {
				return fmt.Errorf("%s sees %d members (new one present: %v)", x.Node.ID().Short(), len(v.Members), ok)
			}
		}
		return nil
	})
	// The agent moved to its own super peer.
	harness.Eventually(t, 15*time.Second, func() error {
		if att, ok := carol.Uplink().Attachment(); !ok || att.SP != sp.ID() {
			return fmt.Errorf("carol's agent attached to %s, want its own %s", att.SP.Short(), sp.ID().Short())
		}
		return nil
	})

	// It holds its share: every record whose replica set now includes it.
	all := []ids.PeerID{sps[0].Node.ID(), sps[1].Node.ID(), sps[2].Node.ID(), sp.ID()}
	share := 0
	harness.Eventually(t, 20*time.Second, func() error {
		share = 0
		for i := range n {
			rid := locationRecord(i, time.Time{}).ResourceID()
			for _, p := range store.Place(rid, all, 3) {
				if p != sp.ID() {
					continue
				}
				share++
				if !sp.Store().HoldsForTest(rid) {
					return fmt.Errorf("record %d (%s) not handed to the new super peer", i, rid.Short())
				}
			}
		}
		if share == 0 {
			return fmt.Errorf("no record placed on the new super peer (of %d)", n)
		}
		return nil
	})
	// Reads through the new super peer see every record.
	for i := range n {
		want := locationRecord(i, time.Time{})
		got, err := sp.Store().Get(ctx, record.KindLocation, want.Name)
		if err != nil || len(got.Entries) != 1 {
			t.Fatalf("get %s via the new super peer: %v", want.Name, err)
		}
	}

	// A call from a phone behind carol's agent (on its own super peer) to
	// one behind bob's (sps[1]) takes three hops.
	bob := attachAgent(t, o, "bob", sps[1])
	carolPhone := agentPhone(t, o, "carol", "carol", carol)
	bobPhone := agentPhone(t, o, "bob", "bob", bob)
	phone.MustRegister(t, carolPhone)
	phone.MustRegister(t, bobPhone)
	callAndCheck(t, carolPhone, carol, bobPhone, bob, 3)
	callAndCheck(t, bobPhone, bob, carolPhone, carol, 3)

	if n := counter(t, sps[0], "p2psip_promotion_requests_total", "granted"); n != 1 {
		t.Errorf("sps[0] counted %g granted promotions, want 1", n)
	}
	st := carol.Status()
	t.Logf("promoted in %s (attempts %d); holds %d of %d records; members %d", took.Round(time.Millisecond),
		st.Promotion.Attempts, share, n, len(sp.Mesh().View().Members))
}

// TestPromotedSuperPeerStops: when the super peer a node was promoted to
// stops on its own (a fatal error in one of its servers), the node is an
// ordinary peer again: its status says so and why, its agent reattaches
// to another super peer and stays reachable, and only after
// RepromoteAfter does it ask again, get promoted and run the super peer
// anew (same identity).
func TestPromotedSuperPeerStops(t *testing.T) {
	o, sps := promotionOverlay(t, 2, "auto")
	const again = 3 * time.Second
	carol, pn := promotableAgentTuned(t, o, "carol", sps[0], nil, func(c *agent.Config) { c.RepromoteAfter = again })
	var first ids.PeerID
	waitOwnSuperPeer := func() {
		t.Helper()
		harness.Eventually(t, 40*time.Second, func() error {
			st := carol.Status()
			sp := pn.SuperPeer()
			if st.Role != agent.RoleSuperPeer || sp == nil {
				return fmt.Errorf("role %q (promotion %+v)", st.Role, st.Promotion)
			}
			if att, ok := carol.Uplink().Attachment(); !ok || att.SP != sp.ID() {
				return fmt.Errorf("attached to %s, want its own %s", att.SP.Short(), sp.ID().Short())
			}
			first = sp.ID()
			return nil
		})
	}
	waitOwnSuperPeer()
	own := first
	bob := attachAgent(t, o, "bob", sps[1])
	carolPhone := agentPhone(t, o, "carol", "carol", carol)
	bobPhone := agentPhone(t, o, "bob", "bob", bob)
	phone.MustRegister(t, carolPhone)
	phone.MustRegister(t, bobPhone)

	pn.StopForTest()
	stopped := time.Now()
	harness.Eventually(t, 20*time.Second, func() error {
		st := carol.Status()
		if st.Role != agent.RoleOrdinary || st.Promotion == nil || !strings.Contains(st.Promotion.Reason, "stopped") {
			return fmt.Errorf("role %q, promotion %+v", st.Role, st.Promotion)
		}
		if pn.SuperPeer() != nil {
			return fmt.Errorf("the stopped super peer is still the node's")
		}
		att, ok := carol.Uplink().Attachment()
		if !ok || (att.SP != sps[0].Node.ID() && att.SP != sps[1].Node.ID()) {
			return fmt.Errorf("carol's agent attached to %s, want one of the other super peers", att.SP.Short())
		}
		return nil
	})
	demoted := time.Since(stopped)
	// Still reachable as an ordinary peer: its phone re-registers through
	// the new attachment (the peer record moved with it) and takes a call.
	phone.MustRegister(t, carolPhone)
	hops := 3
	if att, _ := carol.Uplink().Attachment(); att.SP == sps[1].Node.ID() {
		hops = 2 // bob's super peer
	}
	callAndCheck(t, bobPhone, bob, carolPhone, carol, hops)
	if st := carol.Status(); st.Role != agent.RoleOrdinary {
		t.Fatalf("promoted again %v after the stop, before RepromoteAfter (%v)", time.Since(stopped), again)
	}

	// Then promoted again, to a super peer with the same identity.
	waitOwnSuperPeer()
	if first != own {
		t.Errorf("the new super peer is %s, want the same identity %s", first.Short(), own.Short())
	}
	if took := time.Since(stopped); took < again {
		t.Errorf("promoted again %v after the stop, before RepromoteAfter (%v)", took, again)
	}
	// Every super peer has it back as a member.
	harness.Eventually(t, 15*time.Second, func() error {
		for _, x := range sps {
			if m, ok := x.Node.Mesh().View().Lookup(own); !ok {
				return fmt.Errorf("%s does not list the new super peer (%+v)", x.Node.ID().Short(), m)
			}
		}
		return nil
	})
	phone.MustRegister(t, carolPhone)
	callAndCheck(t, bobPhone, bob, carolPhone, carol, 3)
	t.Logf("ordinary again %v after its super peer stopped; promoted again after %v (attempts %d)",
		demoted.Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond), carol.Status().Promotion.Attempts)
}

// TestPromotionOff: with promotion off (the default, carrier mode) a node
// with role auto stays ordinary and says why.
func TestPromotionOff(t *testing.T) {
	o, sps := promotionOverlay(t, 2, "off")
	a, pn := promotableAgent(t, o, "dave", sps[0], nil)
	reason := waitRefused(t, a, "promotion off on this overlay")
	if pn.SuperPeer() != nil {
		t.Fatal("a super peer was started")
	}
	if st := a.Status(); st.Promotion.NextAttempt == "" {
		t.Errorf("no next attempt planned: %+v", st.Promotion)
	}
	for _, sp := range sps {
		if n := len(sp.Node.Mesh().View().Members); n != 2 {
			t.Fatalf("%s sees %d members", sp.Node.ID().Short(), n)
		}
	}
	t.Logf("refused: %s", reason)
}

// liar advertises an address of its choosing instead of its own.
type liar struct {
	*promoted.Node
	addr string
}

func (l liar) PeerAddr(string) string { return l.addr }

// TestPromotionLiar: nodes that advertise an address where nothing, or
// another node, listens, or an IP that is not theirs, are refused with the
// reason, and never start a super peer.
func TestPromotionLiar(t *testing.T) {
	o, sps := promotionOverlay(t, 2, "auto")
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	// Another would-be super peer, answering dial-back tests as itself.
	other, err := promoted.New(promoted.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Template: o.FastConfig()}, o.Log)
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	otherID := ids.PeerIDFromKey(otherKey.Public().(ed25519.PublicKey))
	ctx, cancel := context.WithCancel(context.Background())
	otherDone := make(chan error, 1)
	go func() { otherDone <- other.Run(ctx, otherKey) }()
	defer func() { cancel(); <-otherDone }()
	// A port someone else owns that accepts TCP: a bare connect must not pass.
	bare, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	go func() {
		for {
			c, err := bare.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tests := map[string]struct{ addr, want string }{
		"nothing listens":    {closedAddr, "dial-back: from " + sps[1].Node.ID().Short() + ": connect " + closedAddr + ": connection refused"},
		"bare TCP port":      {bare.Addr().String(), "dial-back: from " + sps[1].Node.ID().Short() + ": tls at " + bare.Addr().String()},
		"a super peer's":     {sps[1].Node.PeerAddr(), "advertised address " + sps[1].Node.PeerAddr() + " is super peer " + sps[1].Node.ID().Short() + "'s"},
		"another node there": {other.PeerAddr("127.0.0.1"), "answers as Peer-ID " + otherID.Short() + ", not "},
		"not its IP":         {"127.0.0.2:6084", "advertised address 127.0.0.2 differs from the session's source 127.0.0.1"},
		"not an IP:port":     {"example.net", "is not IP:port"},
	}
	i := 0
	for name, tc := range tests {
		i++
		t.Run(name, func(t *testing.T) {
			user := fmt.Sprintf("liar%d", i)
			a, pn := promotableAgent(t, o, user, sps[0], func(n *promoted.Node) agent.Promoter { return liar{n, tc.addr} })
			reason := waitRefused(t, a, tc.want)
			if pn.SuperPeer() != nil {
				t.Fatal("a super peer was started")
			}
			a.Stop()
			t.Logf("refused: %s", reason)
		})
	}
	for _, sp := range sps {
		if n := len(sp.Node.Mesh().View().Members); n != 2 {
			t.Fatalf("%s sees %d members after the liars", sp.Node.ID().Short(), n)
		}
	}
	if n := counter(t, sps[0], "p2psip_promotion_requests_total", "dialback"); n < 3 {
		t.Errorf("sps[0] counted %g dial-back refusals, want at least 3", n)
	}
	if n := counter(t, sps[0], "p2psip_promotion_requests_total", "address"); n < 2 {
		t.Errorf("sps[0] counted %g address refusals, want at least 2", n)
	}
}

// TestPromotionPolicy: a reachable node is still refused while it is
// younger than the overlay's minimum uptime, or while the mesh has no more
// ordinary peers per super peer than the target ratio.
func TestPromotionPolicy(t *testing.T) {
	tests := map[string]struct {
		tune func(*superpeer.Config)
		want string
	}{
		"minimum uptime": {func(c *superpeer.Config) { c.Promotion, c.PromotionMinUptime = "auto", time.Hour }, "below the overlay's minimum 1h0m0s"},
		"ratio":          {func(c *superpeer.Config) { c.Promotion, c.PromotionRatio = "auto", 10 }, "target ratio 10"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o := harness.New(t)
			o.Tune = tc.tune
			sps := []*harness.SP{o.Start(), o.Start()}
			o.WaitConverged(15 * time.Second)
			a, pn := promotableAgent(t, o, "erin", sps[0], nil)
			t.Logf("refused: %s", waitRefused(t, a, tc.want))
			if pn.SuperPeer() != nil {
				t.Fatal("a super peer was started")
			}
		})
	}
}

// TestPromotionLoneSuperPeer: with no other super peer to ask, the one the
// node talks to runs the dial-back test itself, and the node becomes the
// second member.
func TestPromotionLoneSuperPeer(t *testing.T) {
	o, sps := promotionOverlay(t, 1, "auto")
	a, pn := promotableAgent(t, o, "fred", sps[0], nil)
	harness.Eventually(t, 40*time.Second, func() error {
		if st := a.Status(); st.Role != agent.RoleSuperPeer {
			return fmt.Errorf("role %q (promotion %+v)", st.Role, st.Promotion)
		}
		return nil
	})
	harness.Eventually(t, 15*time.Second, func() error {
		if n := len(sps[0].Node.Mesh().View().Members); n != 2 {
			return fmt.Errorf("%d members", n)
		}
		if att, ok := a.Uplink().Attachment(); !ok || att.SP != pn.SuperPeer().ID() {
			return fmt.Errorf("agent attached to %s", att.SP.Short())
		}
		return nil
	})
}

// TestPromotionForbidden: promotion is asked by agents only, and dial-back
// tests by super peers only.
func TestPromotionForbidden(t *testing.T) {
	o, sps := promotionOverlay(t, 1, "auto")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := o.Client(sps[0], "gina")
	_, err := c.Conn.Request(ctx, wire.TypePromote, &wire.PromoteReq{PeerAddr: "127.0.0.1:6084", LocalAddr: "127.0.0.1"})
	if wire.CodeOf(err) != wire.CodeForbidden || !strings.Contains(err.Error(), "promote is for agents") {
		t.Fatalf("promote from a client: %v", err)
	}
	_, err = c.Conn.Request(ctx, wire.TypeDialBack, &wire.DialBackReq{PeerID: sps[0].Node.ID(), Addr: "127.0.0.1:1"})
	if wire.CodeOf(err) != wire.CodeForbidden || !strings.Contains(err.Error(), "dialback is for super peers") {
		t.Fatalf("dialback from a client: %v", err)
	}
}
