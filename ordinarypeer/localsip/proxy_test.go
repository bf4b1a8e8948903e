package localsip_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wait"
	"github.com/p2psip/p2psip/e2e/harness/phone"
)

// TestCallSameAgent: a phone calls the AoR of another phone behind the
// same agent; nothing enters the overlay.
func TestCallSameAgent(t *testing.T) {
	o := newOverlay()
	a := o.startAgent(t, "alice", newPeerID())
	desk := newPhone(t, "desk", "alice", a, false) // not registered: uses the agent as outbound proxy only
	soft := newPhone(t, "soft", "alice", a, true)
	phone.MustRegister(t, soft)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	codes, err := desk.Call(ctx, aorURI("alice"))
	if err != nil {
		t.Fatalf("call: %v %v", err, codes)
	}
	wait.For(t, 5*time.Second, "ACK and BYE at the callee", func() bool { return soft.Acks.Load() == 1 && soft.Byes.Load() == 1 })
	wait.For(t, 5*time.Second, "INVITE, ACK and BYE forwarded once", func() bool {
		s := a.router.Stats()
		return s.Forwarded["INVITE"] == 1 && s.Forwarded["ACK"] == 1 && s.Forwarded["BYE"] == 1
	})
	if s := a.router.Stats(); s.TunnelOut != 0 || s.TunnelIn != 0 || o.frames.Load() != 0 {
		t.Errorf("tunnel used: out %d in %d", s.TunnelOut, s.TunnelIn)
	}
	if rrs := soft.LastInvite().GetHeaders("Record-Route"); len(rrs) != 1 {
		t.Errorf("Record-Route %v", rrs)
	}
}

// TestForking: bob has phones behind two agents; the first 200 wins and
// the other branch is cancelled (its phone sees CANCEL, answers 487).
// Agent C shares alice's super peer: two hops.
func TestForking(t *testing.T) {
	o := newOverlay()
	sp1 := newPeerID()
	a := o.startAgent(t, "alice", sp1)
	b := o.startAgent(t, "bob", newPeerID())
	c := o.startAgent(t, "bob", sp1)
	alice := newPhone(t, "alice", "alice", a, false)
	bobDesk := newPhone(t, "bob-desk", "bob", b, false)
	bobMobile := newPhone(t, "bob-mobile", "bob", c, false)
	phone.MustRegister(t, bobDesk)
	phone.MustRegister(t, bobMobile)
	bobDesk.SetBehaviour(phone.Answer(100*time.Millisecond, 200))
	bobMobile.SetBehaviour(phone.RingForever)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	codes, err := alice.Call(ctx, aorURI("bob"))
	if err != nil {
		t.Fatalf("call: %v %v", err, codes)
	}
	select {
	case <-bobMobile.Canceled():
	case <-ctx.Done():
		t.Fatal("the losing branch was not cancelled")
	}
	wait.For(t, 5*time.Second, "BYE at the winner", func() bool { return bobDesk.Byes.Load() == 1 })
	s := a.router.Stats()
	if s.Forks != 1 || s.Branches < 2 || s.Cancels != 1 {
		t.Errorf("stats %+v", s)
	}
	if bobMobile.Byes.Load() != 0 || bobMobile.Acks.Load() != 0 {
		t.Error("the cancelled phone got an in-dialog request")
	}
	if cs := c.router.Stats(); cs.MaxHops != 2 {
		t.Errorf("same super peer: max hops %d, want 2", cs.MaxHops)
	}
}

// TestCallerCancel: the caller gives up while the callee rings: the callee
// sees CANCEL, the caller gets 487.
func TestCallerCancel(t *testing.T) {
	_, a, b := twoAgents(t)
	alice := newPhone(t, "alice", "alice", a, false)
	bob := newPhone(t, "bob", "bob", b, false)
	phone.MustRegister(t, bob)
	bob.SetBehaviour(phone.RingForever)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := alice.Invite(ctx, aorURI("bob"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ring, stop := context.WithCancel(ctx)
	err = s.WaitAnswer(ring, sipgoAnswerHook(func(res *sip.Response) {
		if res.StatusCode == 180 {
			stop()
		}
	}))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitAnswer after cancel: %v", err)
	}
	if s.InviteResponse == nil || s.InviteResponse.StatusCode != 487 {
		t.Errorf("caller's final response %v, want 487", s.InviteResponse)
	}
	select {
	case <-bob.Canceled():
	case <-ctx.Done():
		t.Fatal("callee never saw CANCEL")
	}
	if n := a.router.Stats().Cancels; n != 1 {
		t.Errorf("agent A sent %d CANCELs", n)
	}
}

// TestNotReachable: unknown AoR → 404; a contact whose agent is gone (the
// tunnel refuses) → 480; a foreign domain → 403.
func TestNotReachable(t *testing.T) {
	o, a, _ := twoAgents(t)
	alice := newPhone(t, "alice", "alice", a, false)
	ghost := newPeerID()
	if err := o.put(&record.Record{Kind: record.KindLocation, Name: "sip:dave@example.net", Entries: []record.Entry{{
		Key: "sip:dave@192.0.2.7:5060", CallID: "x", CSeq: 1, Version: 1, Expires: time.Now().Add(time.Hour).Unix(),
		Contact: &record.Contact{URI: "sip:dave@192.0.2.7:5060", PeerID: ghost, SP: newPeerID()},
	}}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		to   sip.Uri
		want int
	}{
		{aorURI("nobody"), 404},
		{aorURI("dave"), 480},
		{sip.Uri{Scheme: "sip", User: "eve", Host: "elsewhere.example"}, 403},
	} {
		_, err := alice.Call(ctx, tc.to)
		if got := phone.ResponseCode(err); got != tc.want {
			t.Errorf("call %s: %v, want %d", tc.to.String(), err, tc.want)
		}
	}
	if a.router.Stats().TunnelErrors == 0 {
		t.Error("no tunnel error counted")
	}

	// A peer that swallows the INVITE: when the overlay reports it gone,
	// the call fails at once with 480 instead of timing out.
	hole := newPeerID()
	o.mu.Lock()
	o.holes[hole] = true
	o.mu.Unlock()
	if err := o.put(&record.Record{Kind: record.KindLocation, Name: "sip:carol@example.net", Entries: []record.Entry{{
		Key: "sip:carol@192.0.2.8:5060", CallID: "y", CSeq: 1, Version: 1, Expires: time.Now().Add(time.Hour).Unix(),
		Contact: &record.Contact{URI: "sip:carol@192.0.2.8:5060", PeerID: hole},
	}}}); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := alice.Call(ctx, aorURI("carol"))
		res <- err
	}()
	wait.For(t, 5*time.Second, "INVITE sent into the hole", func() bool { return a.router.Stats().Forwarded["INVITE"] >= 1 })
	start := time.Now()
	a.router.PeerGone(hole)
	if err := <-res; phone.ResponseCode(err) != 480 {
		t.Errorf("call to a vanished peer: %v, want 480", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("480 took %v after PeerGone", d)
	}
}

// rawUDP sends hand-written SIP to an agent and reads what comes back.
type rawUDP struct {
	t    *testing.T
	conn *net.UDPConn
}

func newRawUDP(t *testing.T) *rawUDP {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawUDP{t: t, conn: c}
}

func (u *rawUDP) port() int { return u.conn.LocalAddr().(*net.UDPAddr).Port }

func (u *rawUDP) send(to string, msg string) {
	a, _ := net.ResolveUDPAddr("udp", to)
	if _, err := u.conn.WriteToUDP([]byte(strings.ReplaceAll(msg, "\n", "\r\n")), a); err != nil {
		u.t.Fatal(err)
	}
}

// await reads messages until one starts with prefix.
func (u *rawUDP) await(prefix string, d time.Duration) string {
	buf := make([]byte, 65535)
	deadline := time.Now().Add(d)
	for {
		u.conn.SetReadDeadline(deadline) //nolint:errcheck
		n, _, err := u.conn.ReadFromUDP(buf)
		if err != nil {
			u.t.Fatalf("waiting for %q: %v", prefix, err)
		}
		if m := string(buf[:n]); strings.HasPrefix(m, prefix) {
			return m
		}
	}
}

func rawInvite(port int, id, ruri string) string {
	return "INVITE " + ruri + " SIP/2.0\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:" + itoa(port) + ";branch=z9hG4bK-raw-" + id + "\n" +
		"Max-Forwards: 70\n" +
		"From: <sip:alice@example.net>;tag=raw1\n" +
		"To: <sip:bob@example.net>\n" +
		"Call-ID: raw-" + id + "\n" +
		"CSeq: 1 INVITE\n" +
		"Contact: <sip:alice@127.0.0.1:" + itoa(port) + ">\n" +
		"Content-Length: 0\n\n"
}

// TestRetransmittedInvite: a UDP phone's retransmitted INVITE is absorbed
// by its agent, not forwarded a second time.
func TestRetransmittedInvite(t *testing.T) {
	_, a, b := twoAgents(t)
	bob := newPhone(t, "bob", "bob", b, false)
	phone.MustRegister(t, bob)
	bob.SetBehaviour(phone.Answer(300*time.Millisecond, 486))
	u := newRawUDP(t)
	inv := rawInvite(u.port(), "1", "sip:bob@example.net")
	u.send(a.addr(), inv)
	wait.For(t, 5*time.Second, "INVITE at bob", func() bool { return bob.Invites.Load() == 1 })
	u.send(a.addr(), inv) // the phone's Timer A fired
	u.send(a.addr(), inv)
	u.await("SIP/2.0 486", 5*time.Second)
	u.send(a.addr(), strings.Replace(strings.Replace(inv, "INVITE sip", "ACK sip", 1), "CSeq: 1 INVITE", "CSeq: 1 ACK", 1))
	if n := bob.Invites.Load(); n != 1 {
		t.Errorf("bob got %d INVITEs", n)
	}
	if n := a.router.Stats().Forwarded["INVITE"]; n != 1 {
		t.Errorf("agent A forwarded %d INVITEs", n)
	}
}

// TestBadRequests: hop limit, control characters and garbage.
func TestBadRequests(t *testing.T) {
	_, a, b := twoAgents(t)
	bob := newPhone(t, "bob", "bob", b, false)
	phone.MustRegister(t, bob)
	u := newRawUDP(t)

	u.send(a.addr(), strings.Replace(rawInvite(u.port(), "mf", "sip:bob@example.net"), "Max-Forwards: 70", "Max-Forwards: 0", 1))
	u.await("SIP/2.0 483", 5*time.Second)

	u.send(a.addr(), strings.Replace(rawInvite(u.port(), "ctl", "sip:bob@example.net"), "To: <sip:bob@example.net>", "To: <sip:bob\x01@example.net>", 1))
	u.await("SIP/2.0 400", 5*time.Second)

	// A Route naming agent A by another name would loop back to it.
	loop := rawInvite(u.port(), "loop", "sip:bob@example.net")
	loop = strings.Replace(loop, "Max-Forwards: 70\n", "Max-Forwards: 70\nRoute: <sip:localhost:"+itoa(a.port)+";lr>\n", 1)
	u.send(a.addr(), loop)
	u.await("SIP/2.0 482", 5*time.Second)

	u.send(a.addr(), "this is not SIP\n\n")
	// Garbage from the overlay: dropped and counted, the peer's connection
	// survives.
	before := b.router.Stats().Dropped
	b.router.Deliver(a.id, newPeerID(), 3, []byte("INVITE nonsense\r\n\r\n"))
	b.router.Deliver(a.id, newPeerID(), 3, []byte("MESSAGE sip:bob@example.net SIP/2.0\r\nContent-Length: 5\r\n\r\nhi"))
	b.router.Deliver(a.id, newPeerID(), 3, make([]byte, 70000))
	b.router.Deliver(a.id, newPeerID(), 4, []byte("SIP/2.0 200 OK\r\n\r\n"))
	if d := b.router.Stats().Dropped - before; d != 4 {
		t.Errorf("dropped %d of 4 bad payloads", d)
	}
	if bob.Invites.Load() != 0 {
		t.Error("bad requests reached bob")
	}
	// Routing still works afterwards.
	alice := newPhone(t, "alice", "alice", a, false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if codes, err := alice.Call(ctx, aorURI("bob")); err != nil {
		t.Fatalf("call after bad input: %v %v", err, codes)
	}
}
