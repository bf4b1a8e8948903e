package overlay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/siproute"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/e2e/harness/phone"
	"github.com/p2psip/p2psip/e2e/harness/sipp"
)

// agentOverlay starts n converged super peers.
func agentOverlay(t *testing.T, n int) (*harness.Overlay, []*harness.SP) {
	t.Helper()
	o := harness.New(t)
	sps := make([]*harness.SP, n)
	for i := range sps {
		sps[i] = o.Start()
	}
	o.WaitConverged(15 * time.Second)
	return o, sps
}

// attachAgent runs an agent for user bootstrapped at sp and checks that it
// attached there (no load difference to be redirected on).
func attachAgent(t *testing.T, o *harness.Overlay, user string, sp *harness.SP) *harness.Agent {
	t.Helper()
	a := o.StartAgent(user, sp)
	if att, ok := a.Uplink().Attachment(); !ok || att.SP != sp.Node.ID() {
		t.Fatalf("agent %s attached to %s, want %s", user, att.SP.Short(), sp.Node.ID().Short())
	}
	return a
}

// agentPhone starts a UDP phone named name for user behind agent a.
func agentPhone(t *testing.T, o *harness.Overlay, name, user string, a *harness.Agent) *phone.Phone {
	t.Helper()
	return phone.New(t, phone.Config{Name: name, User: user, Domain: o.Name, Proxy: a.SIPAddr(), Log: o.Log})
}

// hopsIn is an agent's count of tunnel payloads received, by hop count.
func hopsIn(a *harness.Agent) [4]uint64 { return a.Router().Stats().InByHops }

func hopsDelta(before, after [4]uint64) [4]uint64 {
	var d [4]uint64
	for i := range d {
		d[i] = after[i] - before[i]
	}
	return d
}

// checkHops asserts that every tunnel payload an agent received took want
// hops (2: both agents on one super peer; 3: on different ones), and that
// at least atLeast arrived.
func checkHops(t *testing.T, who string, d [4]uint64, want int, atLeast uint64) {
	t.Helper()
	var total uint64
	for _, n := range d {
		total += n
	}
	if d[want] != total || total < atLeast {
		t.Errorf("%s received tunnel payloads by hop count [other 1 2 3] = %v; want all %d (at least %d) with %d hops",
			who, d, total, atLeast, want)
	}
}

// minResponses is how many of a call's responses (180, 200, 200 to BYE) a
// test may count on through a proxy when the UAS sends 180 and 200 back to
// back, as SIPp does: sipgo handles each message in a goroutine of its
// own, so on a loaded machine the 200 can be handled first, and a stateful
// proxy rightly drops a provisional response after the final one.
const minResponses = 2

// callAndCheck places one whole call from caller (behind from) to callee's AoR
// (behind to) and checks the responses, that the callee saw INVITE, ACK
// and BYE, and the hop count of every tunnel payload either agent
// received meanwhile.
func callAndCheck(t *testing.T, caller *phone.Phone, from *harness.Agent, callee *phone.Phone, to *harness.Agent, hops int) {
	t.Helper()
	fromBefore, toBefore := hopsIn(from), hopsIn(to)
	invites, acks, byes := callee.Invites.Load(), callee.Acks.Load(), callee.Byes.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	codes, err := caller.Call(ctx, callee.AoR)
	if err != nil {
		t.Fatalf("%s calls %s: %v (responses %v)", caller.Name, callee.Name, err, codes)
	}
	if !slices.Contains(codes, 180) || codes[len(codes)-1] != 200 {
		t.Errorf("%s saw %v, want 180 then 200", caller.Name, codes)
	}
	harness.Eventually(t, 10*time.Second, func() error {
		if callee.Invites.Load() != invites+1 || callee.Acks.Load() != acks+1 || callee.Byes.Load() != byes+1 {
			return fmt.Errorf("%s got %d INVITE, %d ACK, %d BYE", callee.Name,
				callee.Invites.Load()-invites, callee.Acks.Load()-acks, callee.Byes.Load()-byes)
		}
		return nil
	})
	// The callee's agent received INVITE, ACK and BYE; the caller's the
	// 180, the 200 and the 200 to BYE (plus any 100 Trying), all before the
	// caller's phone saw them.
	df, dt := hopsDelta(fromBefore, hopsIn(from)), hopsDelta(toBefore, hopsIn(to))
	checkHops(t, from.User+"'s agent", df, hops, 3)
	checkHops(t, to.User+"'s agent", dt, hops, 3)
	t.Logf("%s → %s: %v; tunnel payloads by hops [other 1 2 3]: caller's agent %v, callee's agent %v",
		caller.Name, callee.Name, codes, df, dt)
}

// TestAgentCalls: alice and bob attached to different super peers, carol
// to alice's; phones register through their agents and call each other.
// Every tunnel payload takes 3 overlay hops between different super peers
// and 2 through a shared one.
func TestAgentCalls(t *testing.T) {
	o, sps := agentOverlay(t, 3)
	a := attachAgent(t, o, "alice", sps[0])
	b := attachAgent(t, o, "bob", sps[1])
	c := attachAgent(t, o, "carol", sps[0])
	alice := agentPhone(t, o, "alice", "alice", a)
	bob := agentPhone(t, o, "bob", "bob", b)
	carol := agentPhone(t, o, "carol", "carol", c)
	for _, p := range []*phone.Phone{alice, bob, carol} {
		phone.MustRegister(t, p)
	}
	for _, x := range []*harness.Agent{a, b, c} {
		if n := x.Registrar().Bindings(); n != 1 {
			t.Fatalf("%s's agent has %d bindings", x.User, n)
		}
	}

	t.Run("different super peers", func(t *testing.T) {
		callAndCheck(t, alice, a, bob, b, 3)
		callAndCheck(t, bob, b, alice, a, 3)
	})
	t.Run("same super peer", func(t *testing.T) {
		callAndCheck(t, alice, a, carol, c, 2)
		callAndCheck(t, carol, c, alice, a, 2)
	})
	for _, x := range []*harness.Agent{a, b, c} {
		s := x.Router().Stats()
		if s.MaxHops > 3 || s.Dropped != 0 || s.TunnelErrors != 0 {
			t.Errorf("%s's agent: max hops %d, dropped %d, tunnel errors %d", x.User, s.MaxHops, s.Dropped, s.TunnelErrors)
		}
	}
}

// TestAgentForking: bob has a phone behind each of two agents; alice's
// call forks to both, the desk phone's 200 wins and the mobile, still
// ringing, gets CANCEL.
func TestAgentForking(t *testing.T) {
	o, sps := agentOverlay(t, 3)
	a := attachAgent(t, o, "alice", sps[0])
	b1 := attachAgent(t, o, "bob", sps[1])
	b2 := attachAgent(t, o, "bob", sps[2])
	alice := agentPhone(t, o, "alice", "alice", a)
	desk := agentPhone(t, o, "bob-desk", "bob", b1)
	mobile := agentPhone(t, o, "bob-mobile", "bob", b2)
	phone.MustRegister(t, desk)
	phone.MustRegister(t, mobile)
	desk.SetBehaviour(phone.Answer(200*time.Millisecond, 200))
	mobile.SetBehaviour(phone.RingForever)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Both contacts must be visible before the call, or it does not fork.
	harness.Eventually(t, 10*time.Second, func() error {
		rec, err := lookupAoR(ctx, o, sps[0], "sip:bob@"+o.Name)
		if err != nil {
			return err
		}
		if n := len(liveContacts(rec)); n != 2 {
			return fmt.Errorf("%d contacts for bob", n)
		}
		return nil
	})
	codes, err := alice.Call(ctx, phone.URI("bob", o.Name))
	if err != nil {
		t.Fatalf("call: %v (responses %v)", err, codes)
	}
	select {
	case <-mobile.Canceled():
	case <-ctx.Done():
		t.Fatal("the losing branch was never cancelled")
	}
	harness.Eventually(t, 10*time.Second, func() error {
		if desk.Acks.Load() != 1 || desk.Byes.Load() != 1 {
			return fmt.Errorf("desk got %d ACK, %d BYE", desk.Acks.Load(), desk.Byes.Load())
		}
		return nil
	})
	if mobile.Invites.Load() != 1 || mobile.Byes.Load() != 0 {
		t.Errorf("mobile got %d INVITE, %d BYE; want 1, 0", mobile.Invites.Load(), mobile.Byes.Load())
	}
	// The winner's dialog never reaches the loser.
	if ack := mobile.LastAck(); ack != nil {
		if toTag(ack) == toTag(desk.LastAck()) {
			t.Errorf("the winner's ACK reached the cancelled phone:\n%s", ack)
		} else {
			t.Errorf("the cancelled phone got a stray ACK:\n%s", ack)
		}
	}
	if s := a.Router().Stats(); s.Forks != 1 || s.Cancels != 1 || s.MaxHops > 3 {
		t.Errorf("alice's agent: forks %d, cancels %d, max hops %d; want 1, 1, ≤3", s.Forks, s.Cancels, s.MaxHops)
	}
	for _, x := range []*harness.Agent{b1, b2} {
		if s := x.Router().Stats(); s.MaxHops != 3 {
			t.Errorf("bob's agent at %s: max hops %d, want 3", x.SIPAddr(), s.MaxHops)
		}
	}
}

func toTag(req *sip.Request) string {
	if req == nil || req.To() == nil {
		return ""
	}
	tag, _ := req.To().Params.Get("tag")
	return tag
}

// lookupAoR reads a location record through a client session at sp.
func lookupAoR(ctx context.Context, o *harness.Overlay, sp *harness.SP, aor string) (*record.Record, error) {
	s, err := o.Dial(sp, o.Credentials("observer"), wire.RoleClient)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.Get(ctx, record.KindLocation, aor)
}

func liveContacts(rec *record.Record) []record.Contact {
	var out []record.Contact
	for _, e := range rec.Live(time.Now()).Entries {
		if !e.Removed && e.Contact != nil {
			out = append(out, *e.Contact)
		}
	}
	return out
}

// TestAgentFailover: bob's super peer dies without a word; bob's agent
// reattaches elsewhere and re-stores its contact, bob's registration is
// never lost, and a new call from alice reaches bob without bob
// registering again.
func TestAgentFailover(t *testing.T) {
	o, sps := agentOverlay(t, 3)
	a := attachAgent(t, o, "alice", sps[0])
	b := attachAgent(t, o, "bob", sps[1])
	alice := agentPhone(t, o, "alice", "alice", a)
	bob := agentPhone(t, o, "bob", "bob", b)
	phone.MustRegister(t, bob)
	callAndCheck(t, alice, a, bob, b, 3)

	// An observer on a super peer that stays up.
	obs, err := o.Dial(sps[0], o.Credentials("observer"), wire.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	aor := "sip:bob@" + o.Name
	bobContact := func(ctx context.Context) (record.Contact, error) {
		rec, err := obs.Get(ctx, record.KindLocation, aor)
		if err != nil {
			return record.Contact{}, err
		}
		for _, c := range liveContacts(rec) {
			if c.PeerID == b.ID() {
				return c, nil
			}
		}
		return record.Contact{}, errContactLost
	}

	failovers := b.Uplink().Failovers()
	killed := time.Now()
	o.Kill(sps[1])
	var att struct {
		sp       ids.PeerID
		measured time.Duration
	}
	harness.Eventually(t, 10*time.Second, func() error {
		cur, ok := b.Uplink().Attachment()
		if !ok || cur.SP == sps[1].Node.ID() || b.Uplink().Failovers() <= failovers {
			return errors.New("bob's agent has not reattached")
		}
		att.sp, att.measured = cur.SP, cur.Reattach
		return nil
	})
	reattached := time.Since(killed)
	if att.sp != sps[0].Node.ID() && att.sp != sps[2].Node.ID() {
		t.Fatalf("bob's agent attached to unknown super peer %s", att.sp.Short())
	}
	// The location record keeps bob's contact all along and soon names the
	// new super peer. A read may fail while the store notices the dead
	// replica; a read that finds no contact is a lost registration.
	harness.Eventually(t, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := bobContact(ctx)
		switch {
		case errors.Is(err, errContactLost) || wire.CodeOf(err) == wire.CodeNotFound:
			t.Fatalf("bob's registration lost during failover: %v", err)
		case err != nil:
			return err
		case c.SP != att.sp:
			return fmt.Errorf("bob's contact still names super peer %s", c.SP.Short())
		}
		return nil
	})
	restored := time.Since(killed)
	t.Logf("bob's agent reattached to %s %v after the kill (the uplink measured %v without a super peer); contact re-stored after %v",
		att.sp.Short(), reattached.Round(time.Millisecond), att.measured.Round(time.Millisecond), restored.Round(time.Millisecond))
	if att.measured > 2*time.Second {
		t.Errorf("reattach took %v, want under 2s", att.measured)
	}
	if n := b.Registrar().Bindings(); n != 1 {
		t.Errorf("bob's agent has %d bindings after failover", n)
	}

	// A new call, bob's phone untouched since its one REGISTER, placed at
	// once: the mesh may not have evicted the dead super peer yet.
	hops := 3
	if att.sp == sps[0].Node.ID() {
		hops = 2 // bob moved to alice's super peer
	}
	callAndCheck(t, alice, a, bob, b, hops)
}

var errContactLost = errors.New("no contact of bob's agent in the location record")

// TestAgentSIPp: a SIPp UAS registered as bob behind one agent, a SIPp UAC
// as alice behind another on a different super peer: 1,000 calls through
// the real super peers with no failure.
func TestAgentSIPp(t *testing.T) {
	sipp.Bin(t)
	const calls, rate = 1000, 100
	o, sps := agentOverlay(t, 3)
	a := attachAgent(t, o, "alice", sps[0])
	b := attachAgent(t, o, "bob", sps[1])
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	uasPort := sipp.FreeUDPPort(t)
	if err := sipp.Register(ctx, t, b.SIPAddr(), "bob", o.Name, uasPort); err != nil {
		t.Fatalf("sipp register: %v", err)
	}
	uas := sipp.UAS(ctx, t, uasPort, calls)
	uac := sipp.UAC(ctx, t, sipp.Calls{Target: a.SIPAddr(), From: "alice", To: "bob", Domain: o.Name, N: calls, Rate: rate})
	if err := uac.Wait(calls/rate*time.Second + 2*time.Minute); err != nil {
		t.Errorf("sipp uac: %v\n%s", err, uac.Output())
	}
	if err := uas.Wait(time.Minute); err != nil {
		t.Errorf("sipp uas: %v\n%s", err, uas.Output())
	}
	for _, p := range []*sipp.Proc{uac, uas} {
		st, err := p.Stats()
		if err != nil || st.Successful != calls || st.Failed != 0 {
			t.Errorf("sipp %s: %v %v", p.Name, st, err)
		}
		t.Logf("sipp %s: %v", p.Name, st)
	}
	if rtts, err := uac.ResponseTimes(); err == nil {
		t.Logf("INVITE→200 at %d calls/s: p50 %v, p99 %v", rate, sipp.Percentile(rtts, 50), sipp.Percentile(rtts, 99))
	}
	as, bs := a.Router().Stats(), b.Router().Stats()
	// An ACK for a 2xx is a request of its own: the UAC sends one more for
	// every 200 the UAS retransmitted (a loaded machine), and the agents
	// forward each; retransmitted INVITEs and BYEs end in their
	// transactions.
	uasSt, _ := uas.Stats()
	for _, m := range []string{"INVITE", "ACK", "BYE"} {
		least, most := uint64(calls), uint64(calls)
		if m == "ACK" {
			most += uint64(uasSt.Retransmissions)
		}
		for who, n := range map[string]uint64{"alice's": as.Forwarded[m], "bob's": bs.Forwarded[m]} {
			if n < least || n > most {
				t.Errorf("%s forwarded by %s agent %d; want %d..%d", m, who, n, least, most)
			}
		}
	}
	for who, s := range map[string]siproute.Stats{"alice": as, "bob": bs} {
		if s.MaxHops != 3 || s.InByHops[3] != s.TunnelIn || s.Dropped != 0 {
			t.Errorf("%s's agent: in by hops %v of %d, max %d, dropped %d", who, s.InByHops, s.TunnelIn, s.MaxHops, s.Dropped)
		}
	}
	t.Logf("%d calls in %v at %d calls/s offered", calls, uac.Ended.Sub(uac.Started).Round(time.Millisecond), rate)
}

// TestAgentUnreachable: an AoR nobody registered gets 404; an AoR whose
// only contact's agent is gone (its contact stays until it expires) gets
// 480 or 408 within seconds, thanks to the super peer's error frame, not
// silence.
func TestAgentUnreachable(t *testing.T) {
	o, sps := agentOverlay(t, 3)
	a := attachAgent(t, o, "alice", sps[0])
	d := attachAgent(t, o, "dave", sps[1])
	alice := agentPhone(t, o, "alice", "alice", a)
	dave := agentPhone(t, o, "dave", "dave", d)
	phone.MustRegister(t, dave)
	callAndCheck(t, alice, a, dave, d, 3) // dave is reachable while his agent runs

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := alice.Call(ctx, phone.URI("nobody", o.Name)); phone.ResponseCode(err) != 404 {
		t.Errorf("call to an unknown AoR: %v, want 404", err)
	}

	d.Stop()
	if rec, err := lookupAoR(ctx, o, sps[0], "sip:dave@"+o.Name); err != nil || len(liveContacts(rec)) != 1 {
		t.Fatalf("dave's contact should outlive his agent: %v %v", rec, err)
	}
	for i := range 2 { // a fresh virtual connection, then after its reset
		start := time.Now()
		_, err := alice.Call(ctx, phone.URI("dave", o.Name))
		took := time.Since(start)
		if code := phone.ResponseCode(err); code != 480 && code != 408 {
			t.Errorf("call %d to dave, whose agent is gone: %v, want 480 or 408", i+1, err)
		}
		t.Logf("call %d to dave, whose agent is gone: %v after %v", i+1, err, took.Round(time.Millisecond))
		if took > 5*time.Second {
			t.Errorf("the failure took %v, want a few seconds at most", took)
		}
	}
	if s := a.Router().Stats(); s.MaxHops > 3 {
		t.Errorf("alice's agent: max hops %d", s.MaxHops)
	}
}
