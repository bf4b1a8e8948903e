// Package route is the super peer's part in carrying traffic for ordinary
// peers (ARCHITECTURE.md §5–6): admission of attaching agents (admit,
// redirect to the least-loaded super peer, or refuse when full), the
// registry of attached agents, and forwarding of Tunnel frames by Peer-ID
// without looking inside them: X → SP(X) → SP(Y) → Y, never a fourth hop.
package route

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/link"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/superpeer/mesh"
	"github.com/p2psip/p2psip/superpeer/session"
)

// Links reaches other super peers.
type Links interface {
	Conn(ctx context.Context, to ids.PeerID) (*link.Conn, error)
	// Up is the open link to a super peer, nil when there is none now.
	Up(to ids.PeerID) *link.Conn
}

// Records reads the store (peer records: where an agent is attached now).
type Records interface {
	Get(ctx context.Context, kind record.Kind, name string) (*record.Record, error)
}

// Config configures the router.
type Config struct {
	Self     ids.PeerID
	SelfAddr string
	// TURNAddr is this super peer's STUN/TURN address, told to agents.
	TURNAddr string
	// Capacity is how many agents may attach here (default 100000).
	Capacity int
	// Keepalive is the Ping interval agents are told to keep (default 25s).
	Keepalive time.Duration
	// Members returns the current mesh view.
	Members func() []mesh.Member
	Links   Links
	Records Records
	// Local receives tunnel frames addressed to this super peer itself (its
	// SIP edge). It runs on a reader goroutine and must not block.
	Local func(f *wire.Frame)
	// MaxLookups bounds concurrent peer-record lookups for frames whose
	// destination super peer is unknown (default 256).
	MaxLookups int
	Registerer prometheus.Registerer
}

// Router admits agents and forwards their tunnel frames.
type Router struct {
	cfg Config
	log zerolog.Logger
	m   *metrics
	sem chan struct{}

	mu       sync.RWMutex // guards attached
	attached map[ids.PeerID]*link.Conn
	count    atomic.Int64
	draining atomic.Bool

	wg sync.WaitGroup // lookups and dials in flight

	blocked sync.Map // ids.PeerID → bool (drop silently): super peers BlockForTest/DropForTest cut off
}

// New builds a router.
func New(cfg Config, log zerolog.Logger) (*Router, error) {
	if cfg.Members == nil || cfg.Links == nil || cfg.Records == nil {
		return nil, errors.New("route: Members, Links and Records are required")
	}
	if cfg.Capacity <= 0 {
		cfg.Capacity = 100000
	}
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = 25 * time.Second
	}
	if cfg.MaxLookups <= 0 {
		cfg.MaxLookups = 256
	}
	r := &Router{
		cfg:      cfg,
		log:      logx.Component(log, "route"),
		sem:      make(chan struct{}, cfg.MaxLookups),
		attached: make(map[ids.PeerID]*link.Conn),
	}
	r.m = newMetrics(cfg.Registerer, r)
	return r, nil
}

// Attached is how many agents are attached here.
func (r *Router) Attached() int { return int(r.count.Load()) }

// Capacity is the configured attach capacity.
func (r *Router) Capacity() int { return r.cfg.Capacity }

// Wait waits for background forwarding work (tests, shutdown).
func (r *Router) Wait() { r.wg.Wait() }

// Attach decides on an agent's Attach and, when admitting it, makes c its
// attachment. It never blocks: the decision uses the gossiped loads.
func (r *Router) Attach(_ context.Context, peer session.Peer, c *link.Conn, req *wire.Attach) (*wire.AttachResult, error) {
	self := r.info()
	best, alternates := r.candidates()
	full := r.Attached() >= r.cfg.Capacity || r.draining.Load()
	switch {
	case full && (req.NoRedirect || best == nil):
		r.m.refused.Inc()
		if r.draining.Load() {
			return nil, wire.Errorf(wire.CodeUnavailable, "super peer is leaving the overlay")
		}
		return nil, wire.Errorf(wire.CodeUnavailable, "super peer full (%d of %d attached)", r.Attached(), r.cfg.Capacity)
	case !req.NoRedirect && best != nil && (full || lessLoaded(best, self)):
		r.m.redirects.Inc()
		return &wire.AttachResult{Status: wire.AttachRedirect, Redirect: best, Self: *self}, nil
	}
	r.mu.Lock()
	if old, ok := r.attached[peer.ID]; ok && old != c {
		// The agent reconnected before we noticed its old session die.
		old.Close()
	} else if !ok {
		r.count.Add(1)
	}
	r.attached[peer.ID] = c
	r.mu.Unlock()
	r.log.Debug().Str("peer_id", peer.ID.Short()).Str("user", peer.User).Msg("agent attached")
	return &wire.AttachResult{
		Status:      wire.AttachOK,
		KeepaliveMS: uint32(r.cfg.Keepalive / time.Millisecond),
		Alternates:  alternates,
		Self:        *self,
	}, nil
}

// Drain stops admitting agents and asks every attached agent to move to
// another super peer; it returns once none is attached or ctx ends.
func (r *Router) Drain(ctx context.Context) error {
	r.draining.Store(true)
	_, alternates := r.candidates()
	r.mu.RLock()
	conns := make([]*link.Conn, 0, len(r.attached))
	for _, c := range r.attached {
		conns = append(conns, c)
	}
	r.mu.RUnlock()
	body := &wire.Leave{Reason: "super peer leaving", Alternates: alternates}
	for _, c := range conns {
		// Fire and forget: the agent answers by reattaching elsewhere and
		// closing this session, which is what we wait for below.
		go c.Request(ctx, wire.TypeLeave, body) //nolint:errcheck
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for r.Attached() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain: %d agents still attached: %w", r.Attached(), ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Detach forgets an agent whose session ended.
func (r *Router) Detach(peer session.Peer, c *link.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur, ok := r.attached[peer.ID]; ok && cur == c {
		delete(r.attached, peer.ID)
		r.count.Add(-1)
	}
}

// KeepaliveFor is the read timeout of an attached session: three missed
// pings and the super peer drops the agent.
func (r *Router) KeepaliveFor() time.Duration { return 3 * r.cfg.Keepalive }

func (r *Router) info() *wire.SuperPeerInfo {
	return &wire.SuperPeerInfo{PeerID: r.cfg.Self, PeerAddr: r.cfg.SelfAddr, Load: uint32(r.Attached()), Capacity: uint32(r.cfg.Capacity), TURNAddr: r.cfg.TURNAddr}
}

// lessLoaded says whether a is clearly less loaded than b. The margin
// keeps agents from bouncing between super peers on stale gossip.
func lessLoaded(a, b *wire.SuperPeerInfo) bool {
	ra := float64(a.Load) / float64(max(a.Capacity, 1))
	rb := float64(b.Load) / float64(max(b.Capacity, 1))
	return ra+0.05 < rb && a.Load+10 < b.Load
}

// candidates returns the least-loaded other super peer with room (nil if
// none) and up to four alternates, least loaded first.
func (r *Router) candidates() (*wire.SuperPeerInfo, []wire.SuperPeerInfo) {
	var others []wire.SuperPeerInfo
	for _, m := range r.cfg.Members() {
		if m.PeerID == r.cfg.Self || m.PeerAddr == "" {
			continue
		}
		others = append(others, wire.SuperPeerInfo{PeerID: m.PeerID, PeerAddr: m.PeerAddr, Load: m.Load, Capacity: m.Capacity, TURNAddr: m.TURNAddr})
	}
	sort.Slice(others, func(i, j int) bool {
		ri := float64(others[i].Load) / float64(max(others[i].Capacity, 1))
		rj := float64(others[j].Load) / float64(max(others[j].Capacity, 1))
		return ri < rj
	})
	var best *wire.SuperPeerInfo
	if len(others) > 0 && others[0].Load < others[0].Capacity {
		b := others[0]
		best = &b
	}
	if len(others) > 4 {
		others = others[:4]
	}
	return best, others
}
