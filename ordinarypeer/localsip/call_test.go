package localsip_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/p2psip/p2psip/common/siproute"
	"github.com/p2psip/p2psip/common/wait"
	"github.com/p2psip/p2psip/e2e/harness/phone"
)

// twoAgents: alice behind agent A (super peer 1), bob behind agent B (super
// peer 2), three overlay hops apart.
func twoAgents(t testing.TB) (*overlayNet, *agent, *agent) {
	o := newOverlay()
	return o, o.startAgent(t, "alice", newPeerID()), o.startAgent(t, "bob", newPeerID())
}

func TestCallAcrossAgents(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		callerTCP, calleeTCP bool
		calleeHangsUp        bool
	}{
		{name: "udp"},
		{name: "tcp caller", callerTCP: true},
		{name: "tcp callee hangs up", calleeTCP: true, calleeHangsUp: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, a, b := twoAgents(t)
			alice := newPhone(t, "alice", "alice", a, tc.callerTCP)
			bob := newPhone(t, "bob", "bob", b, tc.calleeTCP)
			phone.MustRegister(t, alice)
			phone.MustRegister(t, bob)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			if !tc.calleeHangsUp {
				codes, err := alice.Call(ctx, aorURI("bob"))
				if err != nil {
					t.Fatalf("call: %v (responses %v)", err, codes)
				}
				if !containsCode(codes, 180) || codes[len(codes)-1] != 200 {
					t.Errorf("caller saw %v, want 180 then 200", codes)
				}
			} else {
				hangup := make(chan error, 1)
				bob.SetBehaviour(func(p *phone.Phone, req *sip.Request, tx sip.ServerTransaction) {
					d, err := p.Answers.ReadInvite(req, tx)
					if err != nil {
						hangup <- err
						return
					}
					d.Respond(180, "Ringing", nil) //nolint:errcheck
					if err := d.RespondSDP(phone.SDP); err != nil {
						hangup <- err
						return
					}
					hangup <- d.Bye(ctx)
				})
				s, err := alice.Invite(ctx, aorURI("bob"))
				if err != nil {
					t.Fatal(err)
				}
				if err := s.WaitAnswer(ctx, sipgoAnswer()); err != nil {
					t.Fatal(err)
				}
				if err := s.Ack(ctx); err != nil {
					t.Fatal(err)
				}
				if err := <-hangup; err != nil {
					t.Fatalf("callee BYE: %v", err)
				}
				wait.For(t, 5*time.Second, "caller got BYE", func() bool { return alice.Byes.Load() == 1 })
				s.Close()
			}

			wait.For(t, 5*time.Second, "callee got ACK", func() bool { return bob.Acks.Load() == 1 })
			inv := bob.LastInvite()
			rrs := inv.GetHeaders("Record-Route")
			if len(rrs) != 2 || !strings.Contains(rrs[0].Value(), b.id.String()) || !strings.Contains(rrs[1].Value(), a.id.String()) {
				t.Errorf("callee's INVITE Record-Route = %v, want B's then A's", rrs)
			}
			for _, rr := range rrs {
				if !strings.Contains(rr.Value(), ";lr") || !strings.Contains(rr.Value(), "p2p") {
					t.Errorf("Record-Route %q lacks lr or p2p", rr.Value())
				}
			}
			// Counters move after the send returns: poll.
			var as, bs siproute.Stats
			forwardedOnce := func() bool {
				as, bs = a.router.Stats(), b.router.Stats()
				for _, m := range []string{"INVITE", "ACK", "BYE"} {
					if as.Forwarded[m] != 1 || bs.Forwarded[m] != 1 {
						return false
					}
				}
				return true
			}
			wait.For(t, 5*time.Second, "INVITE, ACK and BYE forwarded once by each agent", forwardedOnce)
			if bs.MaxHops != 3 || as.MaxHops != 3 || o.maxHops.Load() != 3 {
				t.Errorf("max hops A=%d B=%d overlay=%d, want 3", as.MaxHops, bs.MaxHops, o.maxHops.Load())
			}
			if as.Dropped != 0 || bs.Dropped != 0 {
				t.Errorf("dropped A=%d B=%d", as.Dropped, bs.Dropped)
			}
		})
	}
}

func containsCode(codes []int, c int) bool {
	for _, x := range codes {
		if x == c {
			return true
		}
	}
	return false
}
