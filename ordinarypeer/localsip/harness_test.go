package localsip_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/registrar"
	"github.com/p2psip/p2psip/common/siproute"
)

const overlay = "example.net"

// testLevel is info, or debug with P2PSIP_TEST_DEBUG set (very verbose:
// sipgo logs every transaction).
func testLevel() zerolog.Level {
	if os.Getenv("P2PSIP_TEST_DEBUG") != "" {
		return zerolog.DebugLevel
	}
	return zerolog.InfoLevel
}

// testLog sends logs to t until the test is over; later lines (from
// library goroutines still winding down) are dropped instead of panicking.
func testLog(t testing.TB) zerolog.Logger { return logx.ForTest(t, testLevel()) }

// overlayNet is the in-memory overlay: a location store and tunnels
// between the agents that count hops as the real one would (2 hops when
// both agents share a super peer, else 3).
type overlayNet struct {
	mu      sync.Mutex
	records map[string]*record.Record
	agents  map[ids.PeerID]*agent
	// holes swallow what is sent to them, as a super peer would for a
	// peer that vanished before its error frame comes back.
	holes   map[ids.PeerID]bool
	failPut atomic.Bool
	maxHops atomic.Uint32
	frames  atomic.Uint64
}

func newOverlay() *overlayNet {
	return &overlayNet{records: make(map[string]*record.Record), agents: make(map[ids.PeerID]*agent),
		holes: make(map[ids.PeerID]bool)}
}

var errNoRecord = errors.New("no record")

func (o *overlayNet) put(rec *record.Record) error {
	if o.failPut.Load() {
		return errors.New("overlay unreachable")
	}
	if err := rec.Validate(); err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	cur := o.records[rec.Name]
	if cur == nil {
		cur = &record.Record{Kind: rec.Kind, Name: rec.Name}
		o.records[rec.Name] = cur
	}
	_, err := record.Merge(cur, rec)
	return err
}

func (o *overlayNet) get(aor string) (*record.Record, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	cur := o.records[aor]
	if cur == nil {
		return nil, fmt.Errorf("%s: %w", aor, errNoRecord)
	}
	return cur.Live(time.Now()), nil
}

// Lookup implements siproute.Locator.
func (o *overlayNet) Lookup(_ context.Context, aor string) ([]record.Contact, error) {
	rec, err := o.get(aor)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", siproute.ErrNotFound, err)
	}
	var out []record.Contact
	for _, e := range rec.Entries {
		out = append(out, *e.Contact)
	}
	return out, nil
}

// store is one agent's Store (its session).
type store struct{ o *overlayNet }

func (s store) Put(_ context.Context, _ string, rec *record.Record) error {
	return s.o.put(rec.Clone())
}
func (s store) Get(_ context.Context, aor string) (*record.Record, error) {
	return s.o.get(aor)
}

// sender is one agent's uplink.
type sender struct {
	o    *overlayNet
	from *agent
}

func (s sender) SendTunnel(dst, _ ids.PeerID, payload []byte) error {
	s.o.mu.Lock()
	to, hole := s.o.agents[dst], s.o.holes[dst]
	s.o.mu.Unlock()
	if hole {
		return nil
	}
	if to == nil {
		return fmt.Errorf("peer %s unknown", dst.Short())
	}
	hops := uint8(3)
	if to.sp == s.from.sp {
		hops = 2
	}
	s.o.frames.Add(1)
	for {
		m := s.o.maxHops.Load()
		if uint32(hops) <= m || s.o.maxHops.CompareAndSwap(m, uint32(hops)) {
			break
		}
	}
	to.router.Deliver(s.from.id, s.from.sp, hops, payload)
	return nil
}

// agent is the SIP half of one ordinary-peer agent on loopback.
type agent struct {
	id, sp ids.PeerID
	user   string
	router *siproute.Router
	reg    *registrar.Registrar
	port   int
}

func (a *agent) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.port)) }

var peerSeq atomic.Uint32

func newPeerID() ids.PeerID {
	var p ids.PeerID
	n := peerSeq.Add(1)
	p[0], p[14], p[15] = 0xa5, byte(n>>8), byte(n)
	return p
}

// listenPair binds TCP and UDP on the same loopback port, as a phone that
// sends to our Record-Route host:port over either transport needs.
func listenPair(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 50 {
		tcp, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		udp, err := net.ListenPacket("udp", tcp.Addr().String())
		if err != nil {
			tcp.Close()
			continue
		}
		return udp, tcp
	}
	t.Fatal("no free UDP+TCP port pair")
	return nil, nil
}

type agentOpt func(*siproute.Config, *registrar.Config)

// startAgent runs an agent for user behind super peer sp until the test
// ends.
func (o *overlayNet) startAgent(t testing.TB, user string, sp ids.PeerID, opts ...agentOpt) *agent {
	t.Helper()
	log := testLog(t).With().Str("agent", user).Logger()
	a := &agent{id: newPeerID(), sp: sp, user: user}
	udp, tcp := listenPair(t)
	a.port = tcp.Addr().(*net.TCPAddr).Port
	rcfg := registrar.Config{
		Self: a.id, User: user, Overlay: overlay, Store: store{o},
		Attachment: func() registrar.Attachment { return registrar.Attachment{SP: sp, SPAddr: "198.51.100.1:6084"} },
		Log:        log,
	}
	scfg := siproute.Config{
		Self: a.id, Overlay: overlay, Locator: o, Sender: sender{o, a},
		RecordRouteHost: "127.0.0.1", RecordRoutePort: a.port, Log: log,
	}
	for _, f := range opts {
		f(&scfg, &rcfg)
	}
	var err error
	if a.reg, err = registrar.New(rcfg); err != nil {
		t.Fatal(err)
	}
	scfg.Local, scfg.Register = a.reg, a.reg.HandleRegister
	if a.router, err = siproute.New(scfg); err != nil {
		t.Fatal(err)
	}
	o.mu.Lock()
	o.agents[a.id] = a
	o.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := a.router.Serve(ctx, udp, tcp); err != nil {
			t.Errorf("agent %s: serve: %v", user, err)
		}
	}()
	go func() {
		defer wg.Done()
		a.reg.Run(ctx) //nolint:errcheck // returns nil
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return a
}
