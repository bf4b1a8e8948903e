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
	"slices"
	"sort"
	"strings"
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

	wg sync.WaitGroup // lookups, dials and gone notices in flight

	usableMu sync.Mutex
	// usable: the other super peers agents could use at the last
	// MembersChanged (alive, not draining), for telling what changed.
	usable map[ids.PeerID]wire.SuperPeerInfo

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

// usable: m is another super peer an agent may attach or relay to.
func usable(self ids.PeerID, m mesh.Member) bool {
	return m.PeerID != self && m.PeerAddr != "" && !m.Draining
}

func infoOf(m mesh.Member) wire.SuperPeerInfo {
	return wire.SuperPeerInfo{PeerID: m.PeerID, PeerAddr: m.PeerAddr, Load: m.Load, Capacity: m.Capacity, TURNAddr: m.TURNAddr}
}

// MembersChanged looks at the mesh view and, when the super peers agents
// may use changed, tells every attached agent (wire.MembersChange): which
// left, were declared dead or began draining, and which (re)joined.
// Agents learn their alternates when they attach; without this notice an
// agent would keep offering a departed super peer's relayed address in
// its contacts, its TURN allocation there dying unnoticed until its next
// self-probe (up to 15 s), and would try it first on failover. Load
// changes, which come every second, send nothing.
func (r *Router) MembersChanged() {
	now := make(map[ids.PeerID]wire.SuperPeerInfo)
	for _, m := range r.cfg.Members() {
		if usable(r.cfg.Self, m) {
			info := infoOf(m)
			info.Load, info.Capacity = 0, 0 // not compared, not sent
			now[m.PeerID] = info
		}
	}
	var ch wire.MembersChange
	r.usableMu.Lock()
	first := r.usable == nil
	for id, info := range r.usable {
		if cur, ok := now[id]; !ok || cur != info {
			ch.Gone = append(ch.Gone, info)
		}
	}
	for id, info := range now {
		if old, ok := r.usable[id]; !ok || old != info {
			ch.Joined = append(ch.Joined, info)
		}
	}
	r.usable = now
	r.usableMu.Unlock()
	if first || (len(ch.Gone) == 0 && len(ch.Joined) == 0) {
		return
	}
	byAddr := func(a, b wire.SuperPeerInfo) int { return strings.Compare(a.PeerAddr, b.PeerAddr) }
	slices.SortFunc(ch.Gone, byAddr)
	slices.SortFunc(ch.Joined, byAddr)
	body, err := wire.Marshal(&ch)
	if err != nil {
		r.log.Error().Err(err).Msg("members change notice")
		return
	}
	r.mu.RLock()
	conns := make([]*link.Conn, 0, len(r.attached))
	for _, c := range r.attached {
		conns = append(conns, c)
	}
	r.mu.RUnlock()
	if len(conns) == 0 {
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		// One way: an agent that does not know the type answers with an
		// error frame, which no request here waits for.
		f := &wire.Frame{Header: wire.Header{Type: wire.TypeMembers}, Body: body}
		sent := 0
		for _, c := range conns {
			if c.Send(f) == nil {
				sent++
			}
		}
		r.m.membersNotices.Add(float64(sent))
		r.log.Info().Int("gone", len(ch.Gone)).Int("joined", len(ch.Joined)).Int("agents", sent).
			Msg("told attached agents of a change among the super peers")
	}()
}

// candidates returns the least-loaded other super peer with room (nil if
// none) and up to four alternates, least loaded first.
func (r *Router) candidates() (*wire.SuperPeerInfo, []wire.SuperPeerInfo) {
	var others []wire.SuperPeerInfo
	for _, m := range r.cfg.Members() {
		if usable(r.cfg.Self, m) {
			others = append(others, infoOf(m))
		}
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
