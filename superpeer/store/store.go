// Package store is the overlay's distributed database on a super peer
// (ARCHITECTURE.md §3): rendezvous placement over the alive super peers,
// quorum writes coordinated by whichever super peer received them, reads
// that merge replicas and repair stale ones, hand-off of records on every
// membership change, periodic anti-entropy by bucket digests, and expiry
// sweeps. Records live in memory: they are soft state their owners refresh.
package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
)

// Errors callers branch on; they carry wire codes so a session can answer
// the peer with them unchanged.
var (
	ErrNotRunning = wire.Errorf(wire.CodeUnavailable, "store not running")
	ErrNoQuorum   = wire.Errorf(wire.CodeNoQuorum, "write quorum not reached")
	ErrNotFound   = wire.Errorf(wire.CodeNotFound, "no such record")
)

// Peers reaches other super peers over the pooled data-plane links.
type Peers interface {
	Request(ctx context.Context, to ids.PeerID, t wire.Type, body any) (*wire.Frame, error)
}

// Config tunes the store. Zero values mean the defaults.
type Config struct {
	// Self is this super peer (required).
	Self ids.PeerID
	// Overlay is the overlay name: location records must be in its domain.
	Overlay string
	// Replicas is the replica-set size (default 3).
	Replicas int
	// WriteQuorum is how many replicas must acknowledge a write (default: a
	// majority of the replica set, 2 of 3). With fewer alive super peers
	// than Replicas it shrinks to a majority of those alive.
	WriteQuorum int
	// Timeout bounds one replica request (default 2s).
	Timeout time.Duration
	// SweepInterval is how often expired entries are dropped (default 5s).
	SweepInterval time.Duration
	// AntiEntropyInterval is how often digests are compared with each
	// peer (default 30s).
	AntiEntropyInterval time.Duration
	// Batch is how many records one Replicate frame carries in hand-off and
	// repair (default 256).
	Batch int
	// Publishers lists, per service name, the users allowed to publish
	// providers of it; super peers may always publish.
	Publishers map[string][]string
	// Registerer receives the store's metrics (nil: not exported).
	Registerer prometheus.Registerer
	// Now is the clock (default time.Now); tests move it.
	Now func() time.Time
}

// Writer is who asks for a write, as authenticated by the session.
type Writer struct {
	User      string
	PeerID    ids.PeerID
	SuperPeer bool
}

// Name is how the writer is recorded in entries.
func (w Writer) Name() string {
	if w.SuperPeer {
		return "sp:" + w.PeerID.String()
	}
	return w.User
}

// Store is one super peer's part of the database. Its methods are safe for
// concurrent use; before Run starts and after it returns they fail with
// ErrNotRunning.
type Store struct {
	cfg   Config
	log   zerolog.Logger
	peers Peers
	local *local
	m     *metrics

	view    atomic.Pointer[[]ids.PeerID] // sorted alive super peers
	changed chan struct{}                // view changed: hand off

	run atomic.Pointer[runState]
}

type runState struct {
	ctx  context.Context
	wg   *sync.WaitGroup // background replica work started by operations
	work *workers        // runs the replica requests of reads and writes
	// mu orders begin's wg.Add before Run's final wg.Wait: an operation
	// that passed state() just as Run ended would otherwise Add while Wait
	// may have seen zero (the race detector caught it when super peers
	// were killed under writes).
	mu      sync.RWMutex
	stopped bool
}

// begin counts one piece of background work; false once Run is ending.
func (st *runState) begin() bool {
	st.mu.RLock()
	defer st.mu.RUnlock()
	if st.stopped {
		return false
	}
	st.wg.Add(1)
	return true
}

// New builds a store; nothing runs until Run.
func New(cfg Config, peers Peers, log zerolog.Logger) (*Store, error) {
	if cfg.Self.IsZero() {
		return nil, errors.New("store: Self is required")
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 3
	}
	if cfg.WriteQuorum < 0 || cfg.WriteQuorum > cfg.Replicas {
		return nil, fmt.Errorf("store: write quorum %d outside 1..%d", cfg.WriteQuorum, cfg.Replicas)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = 5 * time.Second
	}
	if cfg.AntiEntropyInterval <= 0 {
		cfg.AntiEntropyInterval = 30 * time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 256
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Store{
		cfg:     cfg,
		log:     logx.Component(log, "store"),
		peers:   peers,
		local:   newLocal(),
		changed: make(chan struct{}, 1),
	}
	s.m = newMetrics(cfg.Registerer, s.local)
	self := []ids.PeerID{cfg.Self}
	s.view.Store(&self)
	return s, nil
}

// SetView installs the alive membership (including this node) and starts
// a hand-off pass. It never blocks.
func (s *Store) SetView(members []ids.PeerID) {
	v := append([]ids.PeerID(nil), members...)
	if !contains(v, s.cfg.Self) {
		v = append(v, s.cfg.Self)
	}
	s.view.Store(&v)
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Held returns how many records this super peer holds, by kind.
func (s *Store) Held() map[string]int64 {
	out := make(map[string]int64, 3)
	for _, k := range []record.Kind{record.KindLocation, record.KindService, record.KindPeer} {
		out[k.String()] = s.local.counts[k].Load()
	}
	return out
}

// Replicas returns the replica set of rid under the current view.
func (s *Store) Replicas(rid ids.ResourceID) []ids.PeerID {
	return Place(rid, *s.view.Load(), s.cfg.Replicas)
}

// Run runs hand-off, anti-entropy and expiry until ctx ends, then waits for
// every replica request it or an operation started.
func (s *Store) Run(ctx context.Context) error {
	wg := &sync.WaitGroup{}
	st := &runState{ctx: ctx, wg: wg, work: newWorkers(ctx)}
	if !s.run.CompareAndSwap(nil, st) {
		return errors.New("store: Run called twice")
	}
	defer func() {
		st.mu.Lock()
		st.stopped = true
		st.mu.Unlock()
		wg.Wait()
	}()
	sweep := time.NewTicker(s.cfg.SweepInterval)
	defer sweep.Stop()
	ae := time.NewTicker(s.cfg.AntiEntropyInterval)
	defer ae.Stop()
	var prev []ids.PeerID // nil until the first view: nothing to hand off yet
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.changed:
			next := *s.view.Load()
			if prev != nil {
				s.handoff(ctx, prev, next)
			}
			prev = next
		case <-sweep.C:
			if n := s.local.sweep(s.cfg.Now()); n > 0 {
				s.m.swept.Add(float64(n))
			}
		case <-ae.C:
			s.antiEntropy(ctx)
		}
	}
}

func (s *Store) state() (*runState, error) {
	st := s.run.Load()
	if st == nil || st.ctx.Err() != nil {
		return nil, ErrNotRunning
	}
	return st, nil
}

// quorum is how many acks a write to a replica set of size n needs.
func (s *Store) quorum(n int) int {
	q := s.cfg.WriteQuorum
	if q == 0 {
		q = s.cfg.Replicas/2 + 1
	}
	if n < s.cfg.Replicas {
		q = min(q, n/2+1)
	}
	return min(q, n)
}

// observe records an operation's latency and outcome.
func (s *Store) observe(op string, start time.Time, err error) {
	s.m.opSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil {
		s.m.opErrors.WithLabelValues(op, reason(err)).Inc()
	}
}

func reason(err error) string {
	var e *wire.Error
	if errors.As(err, &e) {
		switch e.Code {
		case wire.CodeForbidden:
			return "forbidden"
		case wire.CodeBadRequest:
			return "invalid"
		case wire.CodeNotFound:
			return "not_found"
		case wire.CodeNoQuorum:
			return "no_quorum"
		case wire.CodeUnavailable:
			return "unavailable"
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return "timeout"
	}
	return "other"
}

// HoldsForTest reports whether this super peer holds a local copy of rid.
func (s *Store) HoldsForTest(rid ids.ResourceID) bool { return s.local.get(rid) != nil }

// DropForTest deletes the local copy of rid, as a lost message would leave it.
func (s *Store) DropForTest(rid ids.ResourceID) { s.local.remove(rid) }
