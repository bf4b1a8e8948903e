package registrar

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wait"
)

const slowAOR = "sip:slow@example.net"

// blockFirst makes g's store block slow's writes until the returned
// release; it returns once the first write is blocked, started by first.
func blockFirst(t *testing.T, g *Registrar, st *memStore, first *sip.Request) (release func(), firstDone <-chan *sip.Response) {
	t.Helper()
	block := make(chan struct{})
	slow := &slowStore{memStore: st, block: block, slowAOR: slowAOR, entered: make(chan struct{})}
	g.cfg.Store = slow
	done := make(chan *sip.Response, 1)
	go func() { done <- g.handle(first) }()
	select {
	case <-slow.entered:
	case res := <-done:
		t.Fatalf("first REGISTER ended without writing: %d %s", res.StatusCode, res.Reason)
	}
	var once atomic.Bool
	release = func() {
		if once.CompareAndSwap(false, true) {
			close(block)
		}
	}
	t.Cleanup(release)
	return release, done
}

// queue starts each request in its own goroutine, in order, each once the
// one before waits in the AoR's queue; it returns their responses in order.
func queue(t *testing.T, g *Registrar, reqs ...*sip.Request) []chan *sip.Response {
	t.Helper()
	out := make([]chan *sip.Response, len(reqs))
	base := g.queue.queued(slowAOR)
	for i, req := range reqs {
		out[i] = make(chan *sip.Response, 1)
		go func() { out[i] <- g.handle(req) }()
		wait.For(t, 5*time.Second, fmt.Sprintf("%d REGISTERs queued", base+i+1), func() bool { return g.queue.queued(slowAOR) == base+i+1 })
	}
	return out
}

func recv(t *testing.T, c <-chan *sip.Response) *sip.Response {
	t.Helper()
	select {
	case res := <-c:
		return res
	case <-time.After(5 * time.Second):
		t.Fatal("no response")
		return nil
	}
}

// slowReg is a REGISTER of slow's AoR for contact i with its own Call-ID.
func slowReg(i int, expires int) *sip.Request {
	return register("slow", "slow", fmt.Sprintf("sip:slow@192.0.2.%d:5060", 10+i), "UDP", fmt.Sprintf("192.0.2.%d:5060", 10+i), expires)
}

// withCall sets a request's Call-ID and CSeq.
func withCall(req *sip.Request, callID string, cseq uint32) *sip.Request {
	req.RemoveHeader("Call-ID")
	req.RemoveHeader("CSeq")
	cid := sip.CallIDHeader(callID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: sip.REGISTER})
	return req
}

func contacts(res *sip.Response) []string {
	var out []string
	for _, h := range res.GetHeaders("Contact") {
		out = append(out, h.Value())
	}
	return out
}

// TestBatchOneWrite: REGISTERs of one AoR queued behind a write in flight
// are written together in the next single write, each gets its own 200
// listing every binding after that write, and all are bound.
func TestBatchOneWrite(t *testing.T) {
	g, st := newEdgeRegistrar(t)
	const n = 10
	release, first := blockFirst(t, g, st, slowReg(0, 600))
	var reqs []*sip.Request
	for i := 1; i <= n; i++ {
		reqs = append(reqs, slowReg(i, 600))
	}
	out := queue(t, g, reqs...)
	release()
	if res := recv(t, first); res.StatusCode != 200 {
		t.Fatalf("first: %d %s", res.StatusCode, res.Reason)
	}
	for i, c := range out {
		res := recv(t, c)
		if res.StatusCode != 200 {
			t.Fatalf("queued %d: %d %s", i, res.StatusCode, res.Reason)
		}
		if got := contacts(res); len(got) != n+1 {
			t.Errorf("queued %d: 200 lists %d contacts, want %d: %q", i, len(got), n+1, got)
		}
	}
	if st.puts != 2 {
		t.Errorf("%d store writes, want 2 (the first, then one for the queued batch)", st.puts)
	}
	if s := g.Stats(); s.Writes != 2 || s.Batched != n+1 {
		t.Errorf("stats %+v, want 2 writes carrying %d REGISTERs", s, n+1)
	}
	if b := g.Bindings(); b != n+1 || len(st.live(slowAOR)) != n+1 {
		t.Errorf("%d bindings, %d stored, want %d", b, len(st.live(slowAOR)), n+1)
	}
	if g.queue.queued(slowAOR) != 0 || len(g.queue.m) != 0 {
		t.Errorf("queue left behind: %d", g.queue.queued(slowAOR))
	}
}

// TestBatchInOrder: inside a batch each REGISTER is checked against the
// bindings as the earlier ones leave them: a CSeq not above the one an
// earlier REGISTER of the batch bound is refused, and nothing of a refused
// REGISTER is written; a removal of a binding added earlier in the batch
// removes it, and the write carries the last state of each key.
func TestBatchInOrder(t *testing.T) {
	g, st := newEdgeRegistrar(t)
	release, first := blockFirst(t, g, st, slowReg(0, 600))
	out := queue(t, g,
		withCall(slowReg(1, 600), "call-1", 5),  // binds contact 1
		withCall(slowReg(1, 600), "call-1", 5),  // same Call-ID, same CSeq: 500
		withCall(slowReg(2, 30), "call-2", 1),   // interval too brief: 423
		withCall(slowReg(3, 600), "call-3", 1),  // binds contact 3
		withCall(slowReg(3, 0), "call-3", 2),    // removes it again
		withCall(slowReg(1, 1200), "call-1", 6), // refreshes contact 1
	)
	release()
	if res := recv(t, first); res.StatusCode != 200 {
		t.Fatalf("first: %d", res.StatusCode)
	}
	want := []int{200, 500, 423, 200, 200, 200}
	var res []*sip.Response
	for i, c := range out {
		r := recv(t, c)
		res = append(res, r)
		if r.StatusCode != want[i] {
			t.Errorf("REGISTER %d: %d %s, want %d", i, r.StatusCode, r.Reason, want[i])
		}
	}
	if st.puts != 2 {
		t.Errorf("%d store writes, want 2", st.puts)
	}
	live := st.live(slowAOR)
	byKey := map[string]record.Entry{}
	for _, e := range live {
		byKey[e.Contact.URI] = e
	}
	if len(live) != 2 {
		t.Fatalf("stored %d live entries, want contacts 0 and 1: %+v", len(live), live)
	}
	if e := byKey["sip:slow@192.0.2.11:5060"]; e.CallID != "call-1" || e.CSeq != 6 || e.Expires < time.Now().Add(1100*time.Second).Unix() {
		t.Errorf("contact 1 stored as %+v, want the refresh (CSeq 6, 1200 s)", e)
	}
	st.mu.Lock()
	all := st.recs[slowAOR].Clone()
	st.mu.Unlock()
	for _, e := range all.Entries {
		switch {
		case strings.Contains(e.Key, "192.0.2.12"):
			t.Errorf("the refused REGISTER's contact was written: %+v", e)
		case strings.Contains(e.Key, "192.0.2.13") && (!e.Removed || e.CSeq != 2):
			t.Errorf("contact 3, added and removed in the batch, stored as %+v", e)
		}
	}
	// Every 200 of the batch lists the bindings after its write.
	for i, r := range res {
		if r.StatusCode == 200 && len(contacts(r)) != 2 {
			t.Errorf("REGISTER %d: 200 lists %q", i, contacts(r))
		}
	}
	if _, _, ok := g.Flow("sip:slow@192.0.2.13:5060"); ok {
		t.Error("contact 3 still bound")
	}
	if tp, addr, ok := g.Flow("sip:slow@192.0.2.11:5060"); !ok || tp != "UDP" || addr != "192.0.2.11:5060" {
		t.Errorf("contact 1: %s %s %v", tp, addr, ok)
	}
}

// TestBatchMaxBindings: the bindings limit counts those added earlier in
// the batch.
func TestBatchMaxBindings(t *testing.T) {
	g, st := newEdgeRegistrar(t)
	g.cfg.MaxBindings = 3
	release, first := blockFirst(t, g, st, slowReg(0, 600))
	out := queue(t, g, slowReg(1, 600), slowReg(2, 600), slowReg(3, 600), slowReg(0, 600))
	release()
	recv(t, first)
	for i, want := range []int{200, 200, 403, 200} {
		if r := recv(t, out[i]); r.StatusCode != want {
			t.Errorf("REGISTER %d: %d %s, want %d", i, r.StatusCode, r.Reason, want)
		}
	}
	if n := len(st.live(slowAOR)); n != 3 || g.Bindings() != 3 {
		t.Errorf("%d stored, %d bound, want 3", n, g.Bindings())
	}
}

// failStore fails writes while fail is set.
type failStore struct {
	*memStore
	fail atomic.Bool
}

func (f *failStore) Put(ctx context.Context, user string, rec *record.Record) error {
	if f.fail.Load() {
		return errors.New("no quorum")
	}
	return f.memStore.Put(ctx, user, rec)
}

// TestBatchStoreFails: a failed write answers every REGISTER of its batch
// 503 with Retry-After and binds none of them; the next batch starts from
// the bindings as they were.
func TestBatchStoreFails(t *testing.T) {
	g, st := newEdgeRegistrar(t)
	release, first := blockFirst(t, g, st, slowReg(0, 600))
	fs := &failStore{memStore: st}
	fs.fail.Store(true)
	g.cfg.Store = fs // the first write is blocked in slow already
	out := queue(t, g, slowReg(1, 600), slowReg(2, 600), withCall(slowReg(3, 600), "c3", 1), withCall(slowReg(3, 600), "c3", 1))
	release()
	if r := recv(t, first); r.StatusCode != 200 {
		t.Fatalf("first: %d", r.StatusCode)
	}
	for i, want := range []int{503, 503, 503, 500} {
		r := recv(t, out[i])
		if r.StatusCode != want {
			t.Errorf("REGISTER %d: %d %s, want %d", i, r.StatusCode, r.Reason, want)
		}
		if want == 503 && r.GetHeader("Retry-After") == nil {
			t.Errorf("REGISTER %d: 503 without Retry-After", i)
		}
	}
	if g.Bindings() != 1 {
		t.Errorf("%d bindings after a failed batch, want the first only", g.Bindings())
	}
	if s := g.Stats(); s.StoreFailed != 1 || s.Writes != 1 {
		t.Errorf("stats %+v, want 1 write and 1 failure", s)
	}
	fs.fail.Store(false)
	// Contact 3's failed REGISTER left nothing behind: the same Call-ID and
	// CSeq is new to the registrar.
	if r := g.handle(withCall(slowReg(3, 600), "c3", 1)); r.StatusCode != 200 || len(contacts(r)) != 2 {
		t.Errorf("after the failure: %d %s, %q", r.StatusCode, r.Reason, contacts(r))
	}
}

// TestConcurrentOneAOR: many REGISTERs of one AoR at once, from phones
// re-registering with new Call-IDs, all get 200 (the queue bound is not
// reached: it holds more than arrive at once) in fewer writes than
// REGISTERs, and the binding ends with the last CSeq of its Call-ID.
func TestConcurrentOneAOR(t *testing.T) {
	g, st := newEdgeRegistrar(t)
	sts := &stateStore{memStore: st}
	g.cfg.Store = sts
	const phones, rounds = 8, 20
	g.cfg.MaxQueuedPerAOR = phones
	errs := make(chan error, phones)
	for p := range phones {
		go func() {
			for r := range rounds {
				req := withCall(slowReg(p, 600), fmt.Sprintf("phone-%d", p), uint32(r+1))
				if res := g.handle(req); res.StatusCode != 200 {
					errs <- fmt.Errorf("phone %d round %d: %d %s", p, r, res.StatusCode, res.Reason)
					return
				}
			}
			errs <- nil
		}()
	}
	for range phones {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	s := g.Stats()
	if s.Batched != phones*rounds || s.Writes > s.Batched {
		t.Errorf("stats %+v, want %d REGISTERs written", s, phones*rounds)
	}
	t.Logf("%d REGISTERs in %d writes", s.Batched, s.Writes)
	live := st.live(slowAOR)
	if len(live) != phones {
		t.Fatalf("%d stored", len(live))
	}
	for _, e := range live {
		if e.CSeq != rounds {
			t.Errorf("%s stored with CSeq %d, want %d", e.Key, e.CSeq, rounds)
		}
	}
}

// BenchmarkRegister is one authenticated re-registration of an edge
// phone with a new Call-ID (the register benchmark's load) against a store
// that answers with the state, as the overlay's does.
func BenchmarkRegister(b *testing.B) {
	st := &stateStore{memStore: &memStore{recs: make(map[string]*record.Record)}}
	g, err := New(Config{
		Self: self, Overlay: "example.net", Store: st, Edge: true,
		Attachment: func() Attachment { return Attachment{SPAddr: "192.0.2.1:6084"} },
		Authorize:  func(*sip.Request, string) (string, *sip.Response) { return "load0", nil },
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		req := withCall(register("load0", "", "sip:load0@127.0.0.1:5060", "UDP", "127.0.0.1:5060", 3600), fmt.Sprintf("%d-1@127.0.0.1", i), 2)
		if res := g.handle(req); res.StatusCode != 200 {
			b.Fatal(res.StatusCode)
		}
	}
}
