// Package mesh is the super peers' membership (ARCHITECTURE.md §3, "Super-peer
// mesh"): hashicorp/memberlist for gossip and failure detection, nothing
// else. Each member advertises its Meta (Peer-ID and service addresses);
// the rest of the super peer reads an immutable View of the alive members
// and is told when it changes. Data never travels over memberlist.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/hashicorp/memberlist"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/logx"
)

// ProtoVersion is advertised in Meta so mixed-version meshes can be refused.
const ProtoVersion = 1

// metaLimit is memberlist's hard NodeMeta limit; exceeding it panics inside
// memberlist, so we check before handing it over.
const metaLimit = memberlist.MetaMaxSize

// Meta is what a super peer advertises to the mesh.
type Meta struct {
	PeerID   ids.PeerID `cbor:"1,keyasint" json:"peer_id"`
	PeerAddr string     `cbor:"2,keyasint" json:"peer_addr"`
	SIPAddr  string     `cbor:"3,keyasint,omitempty" json:"sip_addr,omitempty"`
	TURNAddr string     `cbor:"4,keyasint,omitempty" json:"turn_addr,omitempty"`
	Admin    string     `cbor:"5,keyasint,omitempty" json:"admin,omitempty"`
	Capacity uint32     `cbor:"6,keyasint,omitempty" json:"capacity"`
	Load     uint32     `cbor:"7,keyasint,omitempty" json:"load"`
	Proto    uint8      `cbor:"8,keyasint" json:"proto"`
	// Draining: the super peer is leaving (handing off its records and
	// moving its agents); others stop offering it to agents. Older
	// members ignore the field.
	Draining bool `cbor:"9,keyasint,omitempty" json:"draining,omitempty"`
}

// Member is one alive super peer.
type Member struct {
	Meta
	Gossip string `json:"gossip"`
}

// View is an immutable snapshot of the alive members, sorted by Peer-ID.
type View struct {
	Members []Member
	// Seq increases with every change seen by this node.
	Seq uint64
}

// IDs returns the members' Peer-IDs in order.
func (v *View) IDs() []ids.PeerID {
	out := make([]ids.PeerID, len(v.Members))
	for i, m := range v.Members {
		out[i] = m.PeerID
	}
	return out
}

// Lookup finds a member by Peer-ID.
func (v *View) Lookup(id ids.PeerID) (Member, bool) {
	i := sort.Search(len(v.Members), func(i int) bool { return !lessID(v.Members[i].PeerID, id) })
	if i < len(v.Members) && v.Members[i].PeerID == id {
		return v.Members[i], true
	}
	return Member{}, false
}

func lessID(a, b ids.PeerID) bool { return string(a[:]) < string(b[:]) }

// Config configures the mesh. Zero values mean defaults.
type Config struct {
	// Meta is advertised; Meta.PeerID names the node (required).
	Meta Meta
	// BindAddr and BindPort are the gossip socket (UDP and TCP on one
	// port); port 0 picks a free one.
	BindAddr string
	BindPort int
	// AdvertiseAddr/Port, if set, are what other members dial.
	AdvertiseAddr string
	AdvertisePort int
	// Key encrypts gossip (16, 24 or 32 bytes); derived from the overlay secret.
	Key []byte
	// Label separates overlays sharing a network: packets with another
	// label are dropped. The overlay name.
	Label string
	// Join lists gossip addresses of existing members (host:port).
	Join []string
	// ProbeInterval, ProbeTimeout and SuspicionMult tune failure detection;
	// defaults (1s, 500ms, 3 with no suspicion stretch) declare a killed
	// member dead in about 4–5 s on a LAN.
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	SuspicionMult int
	// GossipInterval defaults to 100ms so views converge fast.
	GossipInterval time.Duration
}

// Mesh is this super peer's membership.
type Mesh struct {
	cfg Config
	log zerolog.Logger

	metaMu sync.Mutex // guards meta
	meta   Meta

	ml atomic.Pointer[memberlist.Memberlist]
	// gossipAddr is the bound gossip address, read once at Run: the local
	// node memberlist hands out is its live state, which UpdateNode
	// rewrites under memberlist's own lock (a data race to read).
	gossipAddr atomic.Pointer[string]
	view       atomic.Pointer[View]
	seq        atomic.Uint64
	changes    chan struct{}
	ready      chan struct{}
	joined     atomic.Bool

	membersMu sync.Mutex // guards members
	members   map[string]Member
}

// New validates cfg; nothing is bound until Run.
func New(cfg Config, log zerolog.Logger) (*Mesh, error) {
	if cfg.Meta.PeerID.IsZero() {
		return nil, errors.New("mesh: Meta.PeerID is required")
	}
	switch len(cfg.Key) {
	case 0, 16, 24, 32:
	default:
		return nil, fmt.Errorf("mesh: key must be 16, 24 or 32 bytes, got %d", len(cfg.Key))
	}
	if cfg.BindAddr == "" {
		cfg.BindAddr = "127.0.0.1"
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = time.Second
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = cfg.ProbeInterval / 2
	}
	if cfg.SuspicionMult == 0 {
		cfg.SuspicionMult = 3
	}
	if cfg.GossipInterval == 0 {
		cfg.GossipInterval = 100 * time.Millisecond
	}
	cfg.Meta.Proto = ProtoVersion
	m := &Mesh{
		cfg:     cfg,
		log:     logx.Component(log, "mesh"),
		meta:    cfg.Meta,
		changes: make(chan struct{}, 1),
		ready:   make(chan struct{}),
		members: make(map[string]Member),
	}
	if _, err := m.encodeMeta(); err != nil {
		return nil, err
	}
	m.view.Store(&View{Members: []Member{{Meta: cfg.Meta}}})
	return m, nil
}

func (m *Mesh) encodeMeta() ([]byte, error) {
	m.metaMu.Lock()
	b, err := cbor.Marshal(m.meta)
	m.metaMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("mesh: encode meta: %w", err)
	}
	if len(b) > metaLimit {
		return nil, fmt.Errorf("mesh: meta is %d bytes, limit %d", len(b), metaLimit)
	}
	return b, nil
}

func (m *Mesh) memberlistConfig() *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.Name = m.cfg.Meta.PeerID.String()
	c.BindAddr = m.cfg.BindAddr
	c.BindPort = m.cfg.BindPort
	c.AdvertisePort = m.cfg.BindPort
	if m.cfg.AdvertiseAddr != "" {
		c.AdvertiseAddr = m.cfg.AdvertiseAddr
	}
	if m.cfg.AdvertisePort != 0 {
		c.AdvertisePort = m.cfg.AdvertisePort
	}
	c.SecretKey = m.cfg.Key
	c.Label = m.cfg.Label
	c.ProbeInterval = m.cfg.ProbeInterval
	c.ProbeTimeout = m.cfg.ProbeTimeout
	c.SuspicionMult = m.cfg.SuspicionMult
	// No stretching of the suspicion timeout: a carrier wants a dead super
	// peer declared dead in seconds, and our agents' own keepalives catch
	// the false-positive cost (a member that comes back simply rejoins).
	c.SuspicionMaxTimeoutMult = 1
	c.GossipInterval = m.cfg.GossipInterval
	c.PushPullInterval = 15 * time.Second
	c.TCPTimeout = 2 * time.Second
	c.DeadNodeReclaimTime = 10 * time.Second
	c.Delegate = delegate{m}
	c.Events = events{m}
	c.Logger = logx.Memberlist(m.log)
	return c
}

// Run creates the memberlist node, joins, and keeps the view current until
// ctx ends; then it shuts the node down (a graceful departure calls Leave
// first).
func (m *Mesh) Run(ctx context.Context) error {
	ml, err := memberlist.Create(m.memberlistConfig())
	if err != nil {
		return fmt.Errorf("mesh: create: %w", err)
	}
	local := ml.LocalNode()
	addr := net.JoinHostPort(local.Addr.String(), strconv.Itoa(int(local.Port)))
	m.gossipAddr.Store(&addr)
	m.ml.Store(ml)
	defer func() {
		if err := ml.Shutdown(); err != nil {
			m.log.Warn().Err(err).Msg("memberlist shutdown")
		}
	}()
	if len(m.cfg.Join) == 0 {
		m.joined.Store(true)
		close(m.ready)
	}
	retry := time.NewTicker(time.Second)
	defer retry.Stop()
	for {
		if !m.joined.Load() {
			n, err := ml.Join(m.cfg.Join)
			if err == nil && n > 0 {
				m.log.Info().Int("contacted", n).Int("members", ml.NumMembers()).Msg("joined mesh")
				m.joined.Store(true)
				close(m.ready)
			} else {
				m.log.Warn().Err(err).Strs("join", m.cfg.Join).Msg("join failed, retrying")
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-retry.C:
		}
	}
}

// Ready is closed once the node has joined (or is the first member).
func (m *Mesh) Ready() <-chan struct{} { return m.ready }

// Leave announces a graceful departure and waits up to timeout for it to
// spread. Run must still be running; it shuts down when its ctx ends.
func (m *Mesh) Leave(timeout time.Duration) error {
	ml := m.ml.Load()
	if ml == nil {
		return nil
	}
	if err := ml.Leave(timeout); err != nil {
		return fmt.Errorf("mesh: leave: %w", err)
	}
	return nil
}

// GossipAddr is the bound gossip address (valid once Run has started).
func (m *Mesh) GossipAddr() string {
	if a := m.gossipAddr.Load(); a != nil {
		return *a
	}
	return ""
}

// View returns the current snapshot of alive members.
func (m *Mesh) View() *View { return m.view.Load() }

// Changes is signalled (coalesced) whenever the view changes.
func (m *Mesh) Changes() <-chan struct{} { return m.changes }

// SetLoad updates the advertised load; it spreads with the next gossip.
func (m *Mesh) SetLoad(load, capacity uint32) {
	m.updateMeta(func(mt *Meta) { mt.Load, mt.Capacity = load, capacity })
}

// SetDraining advertises that this super peer is leaving, before its
// hand-off: the others stop offering it to agents as an alternate or a
// TURN server at once, not only when it has left the mesh.
func (m *Mesh) SetDraining() {
	m.updateMeta(func(mt *Meta) { mt.Draining = true })
}

// updateMeta applies change to the advertised meta and, if that changed
// it, spreads it with the next gossip.
func (m *Mesh) updateMeta(change func(*Meta)) {
	m.metaMu.Lock()
	before := m.meta
	change(&m.meta)
	same := m.meta == before
	m.metaMu.Unlock()
	if same {
		return
	}
	if ml := m.ml.Load(); ml != nil {
		if err := ml.UpdateNode(time.Second); err != nil {
			m.log.Debug().Err(err).Msg("update node meta")
		}
	}
}

// apply records one member's state and publishes a new view. It is called
// from memberlist's event callbacks, which hold memberlist's node lock, so
// it must neither block nor call back into memberlist.
func (m *Mesh) apply(n *memberlist.Node, alive bool) {
	m.membersMu.Lock()
	defer m.membersMu.Unlock()
	if !alive {
		delete(m.members, n.Name)
	} else {
		var meta Meta
		switch err := decodeMeta(n.Meta, &meta); {
		case err != nil:
			m.log.Warn().Err(err).Str("node", n.Name).Msg("ignoring member with bad meta")
			delete(m.members, n.Name)
		case meta.Proto != ProtoVersion:
			m.log.Warn().Str("node", n.Name).Uint8("proto", meta.Proto).Msg("ignoring member with another protocol version")
			delete(m.members, n.Name)
		case meta.PeerID.String() != n.Name:
			m.log.Warn().Str("node", n.Name).Msg("ignoring member whose name is not its Peer-ID")
			delete(m.members, n.Name)
		default:
			m.members[n.Name] = Member{Meta: meta, Gossip: net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))}
		}
	}
	members := make([]Member, 0, len(m.members))
	for _, mb := range m.members {
		members = append(members, mb)
	}
	sort.Slice(members, func(i, j int) bool { return lessID(members[i].PeerID, members[j].PeerID) })
	m.view.Store(&View{Members: members, Seq: m.seq.Add(1)})
	select {
	case m.changes <- struct{}{}:
	default:
	}
}

func decodeMeta(b []byte, meta *Meta) error {
	if len(b) == 0 || len(b) > metaLimit {
		return fmt.Errorf("meta of %d bytes", len(b))
	}
	dm, err := cbor.DecOptions{MaxNestedLevels: 4, MaxMapPairs: 16, MaxArrayElements: 16}.DecMode()
	if err != nil {
		return err
	}
	return dm.Unmarshal(b, meta)
}

// delegate serves memberlist's Delegate; only NodeMeta matters to us.
type delegate struct{ m *Mesh }

func (d delegate) NodeMeta(limit int) []byte {
	b, err := d.m.encodeMeta()
	if err != nil || len(b) > limit {
		// Checked in New; an oversized meta would make memberlist panic.
		d.m.log.Error().Err(err).Msg("node meta over limit; advertising none")
		return nil
	}
	return b
}
func (delegate) NotifyMsg([]byte)                           {}
func (delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (delegate) LocalState(join bool) []byte                { return nil }
func (delegate) MergeRemoteState(buf []byte, join bool)     {}

// events turns membership callbacks into view rebuilds.
type events struct{ m *Mesh }

func (e events) NotifyJoin(n *memberlist.Node) {
	e.m.log.Info().Str("sp_id", shortName(n.Name)).Str("remote_addr", n.Address()).Msg("member joined")
	e.m.apply(n, true)
}
func (e events) NotifyLeave(n *memberlist.Node) {
	e.m.log.Info().Str("sp_id", shortName(n.Name)).Str("remote_addr", n.Address()).Msg("member left or failed")
	e.m.apply(n, false)
}
func (e events) NotifyUpdate(n *memberlist.Node) { e.m.apply(n, true) }

func shortName(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return s
}
