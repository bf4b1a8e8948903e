package registrar

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
)

// memStore is an in-memory location store that, like the real one, lets a
// user write only the user's own AoR.
type memStore struct {
	mu   sync.Mutex
	recs map[string]*record.Record
	puts int
}

var errNoRecord = errors.New("no record")

func (m *memStore) Put(_ context.Context, user string, rec *record.Record) error {
	if rec.Owner() != user {
		return fmt.Errorf("user %q may not write %s", user, rec.Name)
	}
	if err := rec.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.puts++
	cur := m.recs[rec.Name]
	if cur == nil {
		cur = &record.Record{Kind: rec.Kind, Name: rec.Name}
		m.recs[rec.Name] = cur
	}
	_, err := record.Merge(cur, rec.Clone())
	return err
}

func (m *memStore) Get(_ context.Context, aor string) (*record.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := m.recs[aor]; r != nil {
		return r.Live(time.Now()), nil
	}
	return nil, errNoRecord
}

func (m *memStore) live(aor string) []record.Entry {
	r, err := m.Get(context.Background(), aor)
	if err != nil {
		return nil
	}
	return r.Entries
}

var self = ids.PeerID{0xed, 1}

// newEdgeRegistrar is a many-user registrar whose Authorize takes the user
// from an X-User header (401 without one).
func newEdgeRegistrar(t testing.TB) (*Registrar, *memStore) {
	t.Helper()
	st := &memStore{recs: make(map[string]*record.Record)}
	g, err := New(Config{
		Self: self, Overlay: "example.net", Store: st, Edge: true,
		Attachment: func() Attachment { return Attachment{SPAddr: "192.0.2.1:6084"} },
		Authorize: func(req *sip.Request, _ string) (string, *sip.Response) {
			if h := req.GetHeader("X-User"); h != nil {
				return h.Value(), nil
			}
			return "", sip.NewResponseFromRequest(req, 401, "Unauthorized", nil)
		},
		Log: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return g, st
}

// register builds a REGISTER for user's AoR from transport/source.
func register(user, authUser, contact, transport, source string, expires int) *sip.Request {
	aor := sip.Uri{Scheme: "sip", User: user, Host: "example.net"}
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: "example.net"})
	req.AppendHeader(&sip.FromHeader{Address: aor, Params: sip.NewParams()})
	req.AppendHeader(&sip.ToHeader{Address: aor})
	cid := sip.CallIDHeader(user + "-" + contact + "-" + source)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: uint32(time.Now().UnixNano() % 1e9), MethodName: sip.REGISTER})
	var u sip.Uri
	if err := sip.ParseUri(contact, &u); err != nil {
		panic(err)
	}
	req.AppendHeader(&sip.ContactHeader{Address: u, Params: sip.NewParams()})
	req.AppendHeader(sip.NewHeader("Expires", fmt.Sprint(expires)))
	if authUser != "" {
		req.AppendHeader(sip.NewHeader("X-User", authUser))
	}
	req.SetTransport(transport)
	req.SetSource(source)
	return req
}

func TestEdgeMode(t *testing.T) {
	g, st := newEdgeRegistrar(t)
	do := func(req *sip.Request) int { return g.handle(req).StatusCode }

	if c := do(register("alice", "", "sip:alice@192.168.1.10:5060", "UDP", "198.51.100.7:40000", 600)); c != 401 {
		t.Fatalf("unauthenticated: %d", c)
	}
	if c := do(register("bob", "alice", "sip:bob@192.168.1.11:5060", "UDP", "198.51.100.7:40001", 600)); c != 403 {
		t.Fatalf("alice registering bob: %d", c)
	}
	if c := do(register("alice", "alice", "sip:x@example.net", "UDP", "198.51.100.7:40000", 600)); c != 403 {
		t.Fatalf("contact in the overlay domain: %d", c)
	}
	if st.puts != 0 {
		t.Fatalf("%d writes for refused requests", st.puts)
	}

	if c := do(register("alice", "alice", "sip:alice@192.168.1.10:5060", "UDP", "198.51.100.7:40000", 600)); c != 200 {
		t.Fatalf("alice: %d", c)
	}
	if c := do(register("carol", "carol", "sip:carol@192.168.1.10:5060;transport=tcp", "TCP", "203.0.113.9:50000", 600)); c != 200 {
		t.Fatalf("carol: %d", c)
	}
	es := st.live("sip:alice@example.net")
	if len(es) != 1 || es[0].Writer != "alice" || es[0].Contact.SP != self || !es[0].Contact.PeerID.IsZero() ||
		es[0].Contact.Flow != "udp 198.51.100.7:40000" || es[0].Contact.SPAddr != "192.0.2.1:6084" {
		t.Fatalf("stored %+v", es)
	}
	if tp, addr, ok := g.Flow("sip:alice@192.168.1.10:5060;ob"); !ok || tp != "UDP" || addr != "198.51.100.7:40000" {
		t.Errorf("alice's flow: %s %s %v", tp, addr, ok)
	}
	if u, ok := g.FlowUser("TCP", "203.0.113.9:50000"); !ok || u != "carol" {
		t.Errorf("FlowUser = %q %v", u, ok)
	}
	// Two NATs, one private address: a contact without its user part is
	// ambiguous and reaches neither.
	if _, _, ok := g.Flow("sip:192.168.1.10:5060"); ok {
		t.Error("an ambiguous contact was given a flow")
	}
	// FlowURI, the router's way in, answers as Flow does.
	for _, s := range []string{"sip:alice@192.168.1.10:5060;ob", "sip:alice@192.168.1.10", "sip:192.168.1.10:5060",
		"sip:carol@192.168.1.10:5060;transport=tcp", "sip:198.51.100.7:40000", "sips:alice@192.168.1.10", "sip:nobody@192.0.2.9"} {
		var u sip.Uri
		if err := sip.ParseUri(s, &u); err != nil {
			t.Fatal(err)
		}
		tp, addr, ok := g.Flow(s)
		tp2, addr2, ok2 := g.FlowURI(&u)
		if tp != tp2 || addr != addr2 || ok != ok2 {
			t.Errorf("%s: Flow %s %s %v, FlowURI %s %s %v", s, tp, addr, ok, tp2, addr2, ok2)
		}
	}

	// Carol's TCP connection closes: her binding and only hers goes.
	if n := g.DropFlow("TCP", "203.0.113.9:50000"); n != 1 {
		t.Fatalf("DropFlow removed %d", n)
	}
	if es := st.live("sip:carol@example.net"); len(es) != 0 {
		t.Errorf("carol still stored: %+v", es)
	}
	if g.Bindings() != 1 || len(st.live("sip:alice@example.net")) != 1 {
		t.Errorf("alice lost her binding")
	}
	if _, _, ok := g.Flow("sip:carol@192.168.1.10:5060;transport=tcp"); ok {
		t.Error("carol's flow outlived her connection")
	}
}

// TestPerAORLocking: REGISTERs for different AoRs do not wait for each
// other's store writes.
func TestPerAORLocking(t *testing.T) {
	g, st := newEdgeRegistrar(t)
	block := make(chan struct{})
	slow := &slowStore{memStore: st, block: block, slowAOR: "sip:slow@example.net", entered: make(chan struct{})}
	g.cfg.Store = slow
	done := make(chan int)
	go func() {
		done <- g.handle(register("slow", "slow", "sip:slow@192.0.2.5:5060", "UDP", "192.0.2.5:5060", 600)).StatusCode
	}()
	select {
	case <-slow.entered:
	case c := <-done:
		t.Fatalf("slow register ended without writing: %d", c)
	}
	start := time.Now()
	if c := g.handle(register("fast", "fast", "sip:fast@192.0.2.6:5060", "UDP", "192.0.2.6:5060", 600)).StatusCode; c != 200 {
		t.Fatalf("fast: %d", c)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("another AoR's REGISTER took %v while one was blocked", d)
	}
	close(block)
	if c := <-done; c != 200 {
		t.Fatalf("slow: %d", c)
	}
}

type slowStore struct {
	*memStore
	block   chan struct{}
	slowAOR string
	once    sync.Once
	entered chan struct{}
}

func (s *slowStore) Put(ctx context.Context, user string, rec *record.Record) error {
	if strings.EqualFold(rec.Name, s.slowAOR) {
		s.once.Do(func() { close(s.entered) })
		<-s.block
	}
	return s.memStore.Put(ctx, user, rec)
}

// stateStore is a memStore that answers writes with the state after them,
// as the overlay's store does (StoreReq.Echo), and counts reads.
type stateStore struct {
	*memStore
	gets int
}

func (s *stateStore) PutState(ctx context.Context, user string, rec *record.Record) (*record.Record, error) {
	if err := s.memStore.Put(ctx, user, rec); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recs[rec.Name].Live(time.Now()), nil
}

func (s *stateStore) Get(ctx context.Context, aor string) (*record.Record, error) {
	s.mu.Lock()
	s.gets++
	s.mu.Unlock()
	return s.memStore.Get(ctx, aor)
}

// TestStateFromWrite: with a store that returns the state after a write,
// a REGISTER costs one write and no read, and its 200 still lists every
// binding of the AoR, including those another registrar wrote.
func TestStateFromWrite(t *testing.T) {
	g, mem := newEdgeRegistrar(t)
	st := &stateStore{memStore: mem}
	g.cfg.Store = st
	// Another registrar (another super peer's edge) bound alice elsewhere.
	other := &record.Record{Kind: record.KindLocation, Name: "sip:alice@example.net", Entries: []record.Entry{{
		Key: "sip:alice@198.51.100.99:5060", Version: 1, Expires: time.Now().Add(time.Hour).Unix(), Writer: "alice",
		Contact: &record.Contact{URI: "sip:alice@198.51.100.99:5060", SP: ids.PeerID{0xed, 2}},
	}}}
	if err := mem.Put(context.Background(), "alice", other); err != nil {
		t.Fatal(err)
	}
	res := g.handle(register("alice", "alice", "sip:alice@192.168.1.10:5060", "UDP", "198.51.100.7:40000", 600))
	if res.StatusCode != 200 {
		t.Fatalf("register: %d %s", res.StatusCode, res.Reason)
	}
	if st.gets != 0 {
		t.Errorf("%d reads for a REGISTER whose write returned the state", st.gets)
	}
	var got []string
	for _, h := range res.GetHeaders("Contact") {
		got = append(got, h.Value())
	}
	if len(got) != 2 || !strings.Contains(strings.Join(got, " "), "198.51.100.99") || !strings.Contains(strings.Join(got, " "), "192.168.1.10") {
		t.Errorf("200 lists %q, want both bindings", got)
	}
}

// TestPerAORQueueBound: past MaxQueuedPerAOR REGISTERs of one AoR handled
// or waiting, the next is answered 503 with Retry-After at once instead
// of queueing behind a slow write; the queued ones complete, and other
// AoRs are not affected.
func TestPerAORQueueBound(t *testing.T) {
	g, st := newEdgeRegistrar(t)
	g.cfg.MaxQueuedPerAOR = 3
	block := make(chan struct{})
	slow := &slowStore{memStore: st, block: block, slowAOR: "sip:slow@example.net", entered: make(chan struct{})}
	g.cfg.Store = slow
	done := make(chan int, 3)
	reg := func(i int) *sip.Request {
		return register("slow", "slow", fmt.Sprintf("sip:slow@192.0.2.%d:5060", 10+i), "UDP", fmt.Sprintf("192.0.2.%d:5060", 10+i), 600)
	}
	go func() { done <- g.handle(reg(0)).StatusCode }()
	<-slow.entered
	for i := 1; i <= 2; i++ {
		go func() { done <- g.handle(reg(i)).StatusCode }()
	}
	// Wait until the two wait behind the first.
	deadline := time.Now().Add(5 * time.Second)
	for {
		refs := g.queue.queued("sip:slow@example.net")
		if refs == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d REGISTERs of slow's AoR in the queue, want 3", refs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	res := g.handle(reg(3))
	if res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
		t.Fatalf("fourth REGISTER: %d %s, want 503 with Retry-After", res.StatusCode, res.Reason)
	}
	if c := g.handle(register("fast", "fast", "sip:fast@192.0.2.6:5060", "UDP", "192.0.2.6:5060", 600)).StatusCode; c != 200 {
		t.Fatalf("another AoR: %d", c)
	}
	close(block)
	for range 3 {
		if c := <-done; c != 200 {
			t.Errorf("queued REGISTER: %d", c)
		}
	}
}
