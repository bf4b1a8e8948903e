package localsip_test

import (
	"context"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/p2psip/p2psip/e2e/harness/phone"
)

// BenchmarkRouterCall measures one whole call (INVITE, 180, 200, ACK, BYE,
// 200) between sipgo phones behind two agents: both routers, the tunnel
// and the fake overlay in between. Compare with BenchmarkDirectCall, the
// same phones calling each other with nothing in between.
func BenchmarkRouterCall(b *testing.B) {
	_, a, c := twoAgents(b)
	alice := newPhone(b, "alice", "alice", a, false)
	bob := newPhone(b, "bob", "bob", c, false)
	bob.SetBehaviour(phone.Answer(0, 200))
	phone.MustRegister(b, bob)
	frames := func() uint64 { return a.router.Stats().TunnelOut + c.router.Stats().TunnelOut }
	benchCalls(b, alice, aorURI("bob"), frames)
}

// BenchmarkDirectCall is the reference: the same sipgo phones, phone to
// phone over loopback UDP.
func BenchmarkDirectCall(b *testing.B) {
	alice := newPhone(b, "alice", "alice", nil, false)
	bob := newPhone(b, "bob", "bob", nil, false)
	bob.SetBehaviour(phone.Answer(0, 200))
	benchCalls(b, alice, bob.Contact.Address, nil)
}

// benchCalls runs calls one after the other ("serial": latency) and 16 at
// a time ("parallel": throughput). frames, if set, counts tunnel frames.
func benchCalls(b *testing.B, caller *phone.Phone, to sip.Uri, frames func() uint64) {
	perCall := func(b *testing.B, before uint64) {
		if frames != nil {
			b.ReportMetric(float64(frames()-before)/float64(b.N), "frames/call")
		}
	}
	count := func() uint64 {
		if frames == nil {
			return 0
		}
		return frames()
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		before := count()
		for b.Loop() {
			benchCall(b, caller, to)
		}
		perCall(b, before)
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(8)
		before := count()
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				benchCall(b, caller, to)
			}
		})
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
		perCall(b, before)
	})
}

func benchCall(b *testing.B, caller *phone.Phone, to sip.Uri) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if codes, err := caller.Call(ctx, to); err != nil {
		b.Fatalf("call: %v %v", err, codes)
	}
}
