package superpeer

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/link"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/superpeer/admin"
	"github.com/p2psip/p2psip/superpeer/edge"
	"github.com/p2psip/p2psip/superpeer/mesh"
	"github.com/p2psip/p2psip/superpeer/peers"
	"github.com/p2psip/p2psip/superpeer/promote"
	"github.com/p2psip/p2psip/superpeer/relay"
	"github.com/p2psip/p2psip/superpeer/route"
	"github.com/p2psip/p2psip/superpeer/session"
	"github.com/p2psip/p2psip/superpeer/store"
)

// Files in the data directory.
const (
	IdentityFile = auth.IdentityFile
	CAFile       = "ca.pem"
	SecretFile   = "overlay.secret"
)

// Node is one super peer.
type Node struct {
	cfg   Config
	log   zerolog.Logger
	id    ids.PeerID
	start time.Time

	reg      *prometheus.Registry
	mesh     *mesh.Mesh
	store    *store.Store
	pool     *peers.Pool
	sessions *session.Server
	router   *route.Router
	edge     *edge.Edge
	relay    *relay.Server
	turnAddr string // advertised STUN/TURN address, set by New

	sipAddr, sipsAddr string // set by New

	peerAddr  atomic.Value // string, once bound
	adminAddr atomic.Value
	ready     chan struct{}
	isReady   atomic.Bool
	// leaving: Leave has begun; the node is not ready any more (load
	// balancers and Kubernetes stop sending it new work) and publishes no
	// service records.
	leaving   atomic.Bool
	memberLog admin.MemberLog // membership changes, for the status page
}

// New loads the identity and secret, binds the peer-protocol listener (so
// PeerAddr is known at once) and builds every part; Run starts them.
func New(cfg Config, log zerolog.Logger) (*Node, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("superpeer config: %w", err)
	}
	key, id, err := auth.LoadNodeIdentity(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	log = log.With().Str("peer_id", id.Short()).Str("role", "superpeer").Logger()
	if cfg.Secret == nil {
		path := cfg.SecretFile
		if path == "" {
			path = filepath.Join(cfg.DataDir, SecretFile)
			secret, created, err := auth.LoadOrCreateSecret(path)
			if err != nil {
				return nil, fmt.Errorf("overlay secret: %w", err)
			}
			if created {
				log.Warn().Str("secret_file", path).Msg("created a development overlay secret; give every super peer of the overlay the same --secret-file")
			}
			cfg.Secret = secret
		} else if cfg.Secret, err = auth.LoadSecret(path); err != nil {
			return nil, fmt.Errorf("overlay secret: %w", err)
		}
	}
	n := &Node{cfg: cfg, log: log, id: id, reg: prometheus.NewRegistry(), ready: make(chan struct{})}
	n.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := n.build(key); err != nil {
		closeSIP(&n.cfg)
		return nil, err
	}
	return n, nil
}

// ID is this super peer's Peer-ID.
func (n *Node) ID() ids.PeerID { return n.id }

// Registry exposes the node's metrics (tests read them).
func (n *Node) Registry() *prometheus.Registry { return n.reg }

// Store is the node's database part (tests and the SIP edge use it).
func (n *Node) Store() *store.Store { return n.store }

// Mesh is the node's membership.
func (n *Node) Mesh() *mesh.Mesh { return n.mesh }

// PeerAddr is the bound peer-protocol address ("" before Run binds it).
func (n *Node) PeerAddr() string { s, _ := n.peerAddr.Load().(string); return s }

// AdminAddr is the bound admin address ("" before Run or when off).
func (n *Node) AdminAddr() string { s, _ := n.adminAddr.Load().(string); return s }

// GossipAddr is the bound gossip address.
func (n *Node) GossipAddr() string { return n.mesh.GossipAddr() }

// Ready is closed once the node listens and has joined the mesh.
func (n *Node) Ready() <-chan struct{} { return n.ready }

func (n *Node) build(key ed25519.PrivateKey) error {
	cfg := &n.cfg
	ca, err := auth.OverlayCA(cfg.Secret, cfg.Overlay)
	if err != nil {
		return fmt.Errorf("overlay CA: %w", err)
	}
	caPath := filepath.Join(cfg.DataDir, CAFile)
	if err := os.WriteFile(caPath, ca.PEM, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", caPath, err)
	}
	cert, err := ca.NodeCertificate(key, []string{cfg.Bind, cfg.Advertise}, time.Now())
	if err != nil {
		return fmt.Errorf("node certificate: %w", err)
	}
	if cfg.PeerListener == nil {
		l, err := net.Listen("tcp", net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.PeerPort)))
		if err != nil {
			return fmt.Errorf("peer protocol listener: %w", err)
		}
		cfg.PeerListener = l
	}
	_, portStr, _ := net.SplitHostPort(cfg.PeerListener.Addr().String())
	advertised := net.JoinHostPort(cfg.Advertise, portStr)
	n.peerAddr.Store(advertised)

	n.pool = peers.New(peers.Config{
		Self: n.id, SelfAddr: advertised, Overlay: cfg.Overlay, Secret: cfg.Secret,
		Cert: cert, CA: ca.Pool(),
		// Links we dial are served like the ones we accept.
		Handler: func(from ids.PeerID) link.Handler {
			return n.sessions.Handler(session.Peer{ID: from, Role: wire.RoleSuperPeer})
		},
	}, n.log)
	n.store, err = store.New(store.Config{
		Self: n.id, Overlay: cfg.Overlay, Replicas: cfg.Replicas, WriteQuorum: cfg.WriteQuorum,
		Timeout: cfg.StoreTimeout, SweepInterval: cfg.SweepInterval, AntiEntropyInterval: cfg.AntiEntropyInterval,
		Publishers: cfg.Publishers, Registerer: n.reg,
	}, n.pool, n.log)
	if err != nil {
		return err
	}
	if err := n.buildRelay(); err != nil {
		return fmt.Errorf("stun/turn: %w", err)
	}
	n.router, err = route.New(route.Config{
		Self: n.id, SelfAddr: advertised, TURNAddr: n.turnAddr, Capacity: cfg.Capacity, Keepalive: cfg.Keepalive,
		Members: func() []mesh.Member { return n.mesh.View().Members },
		Links:   n.pool, Records: n.store, Registerer: n.reg,
		Local: n.edgeFrame,
	}, n.log)
	if err != nil {
		return err
	}
	if err := n.buildEdge(cert, advertised); err != nil {
		return fmt.Errorf("sip edge: %w", err)
	}
	promoter, err := promote.New(promote.Config{
		Self: n.id, Overlay: cfg.Overlay, Secret: cfg.Secret, Replicas: cfg.Replicas, WriteQuorum: cfg.WriteQuorum,
		Policy:  promote.Policy{Mode: cfg.Promotion, MinUptime: cfg.PromotionMinUptime, Ratio: cfg.PromotionRatio},
		Members: func() []mesh.Member { return n.mesh.View().Members },
		Links:   n.pool, Cert: &cert, Registerer: n.reg,
	}, n.log)
	if err != nil {
		return err
	}
	n.sessions, err = session.New(session.Config{
		Listener: cfg.PeerListener, TLS: auth.ServerTLSConfig(cert), Self: n.id, Overlay: cfg.Overlay,
		Secret: cfg.Secret, CA: ca.Pool(), Store: n.store, Pool: n.pool, Router: n.router, Promoter: promoter, Registerer: n.reg,
	}, n.log)
	if err != nil {
		return err
	}
	n.mesh, err = mesh.New(mesh.Config{
		Meta:          mesh.Meta{PeerID: n.id, PeerAddr: advertised, SIPAddr: n.sipAddr, TURNAddr: n.turnAddr, Admin: cfg.Admin, Capacity: uint32(cfg.Capacity)},
		BindAddr:      cfg.Bind,
		BindPort:      cfg.GossipPort,
		AdvertiseAddr: cfg.Advertise,
		Key:           auth.MemberlistKey(cfg.Secret),
		Label:         cfg.Overlay,
		Join:          cfg.Join,
		ProbeInterval: cfg.ProbeInterval,
		SuspicionMult: cfg.SuspicionMult,
	}, n.log)
	if err != nil {
		return err
	}
	n.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "p2psip", Subsystem: "mesh", Name: "members", Help: "Alive super peers in this node's view.",
	}, func() float64 { return float64(len(n.mesh.View().Members)) }))
	return nil
}

// Run serves until ctx ends. Cancelling ctx without Leave looks like a
// crash to the rest of the overlay (tests use that to kill a super peer).
func (n *Node) Run(ctx context.Context) error {
	n.start = time.Now()
	g, ctx := errgroup.WithContext(ctx)
	if n.cfg.Admin != "off" {
		l := n.cfg.AdminListener
		if l == nil {
			var err error
			if l, err = net.Listen("tcp", n.cfg.Admin); err != nil {
				n.cfg.PeerListener.Close()
				closeSIP(&n.cfg)
				return fmt.Errorf("admin listener: %w", err)
			}
		}
		n.adminAddr.Store(l.Addr().String())
		adm, err := admin.New(admin.Config{Listener: l, Gatherer: n.reg, Source: n}, n.log)
		if err != nil {
			return err
		}
		g.Go(func() error { return adm.Run(ctx) })
	}
	g.Go(func() error { return n.pool.Run(ctx) })
	g.Go(func() error { return n.store.Run(ctx) })
	g.Go(func() error { return n.sessions.Run(ctx) })
	g.Go(func() error { return n.mesh.Run(ctx) })
	g.Go(func() error { return n.edge.Run(ctx) })
	g.Go(func() error { return n.relay.Run(ctx) })
	g.Go(func() error { return n.publishServices(ctx) })
	g.Go(func() error { return n.watch(ctx) })
	return g.Wait()
}

// watch feeds membership changes to the store and the link pool.
func (n *Node) watch(ctx context.Context) error {
	select {
	case <-n.mesh.Ready():
	case <-ctx.Done():
		return nil
	}
	n.applyView()
	if !n.leaving.Load() { // Leave may have begun before the mesh was ready
		n.isReady.Store(true)
	}
	close(n.ready)
	n.log.Info().
		Str("overlay", n.cfg.Overlay).
		Str("peer_addr", n.PeerAddr()).
		Str("gossip_addr", n.GossipAddr()).
		Str("sip_addr", n.SIPAddr()).
		Str("sips_addr", n.SIPSAddr()).
		Str("admin", n.AdminAddr()).
		Str("ca_file", filepath.Join(n.cfg.DataDir, CAFile)).
		Msg("super peer ready")
	load := time.NewTicker(time.Second)
	defer load.Stop()
	for {
		select {
		case <-ctx.Done():
			n.router.Wait()
			return nil
		case <-n.mesh.Changes():
			n.applyView()
		case <-load.C:
			// Gossip our attach load so bootstrap super peers can redirect
			// newcomers to the least loaded one.
			n.mesh.SetLoad(uint32(n.router.Attached()), uint32(n.router.Capacity()))
		}
	}
}

func (n *Node) applyView() {
	n.router.MembersChanged()
	v := n.mesh.View()
	addrs := make(map[ids.PeerID]string, len(v.Members))
	for _, m := range v.Members {
		addrs[m.PeerID] = m.PeerAddr
	}
	n.pool.SetAddrs(addrs)
	n.pool.Warm()
	n.store.SetView(v.IDs())
	seen := make(map[string]any, len(v.Members))
	for _, m := range v.Members {
		seen[m.PeerID.String()] = m
	}
	n.memberLog.Observe(time.Now().UTC(), seen)
}

// Leave departs gracefully, bounded by timeout: it stops admitting agents,
// hands every record to the replicas that take over, asks the attached
// agents to move (they reattach elsewhere before their session closes),
// and leaves the mesh so others learn at once. Run must still be running;
// cancel its context afterwards.
func (n *Node) Leave(timeout time.Duration) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// First, so that the others stop offering this super peer to agents
	// (and tell theirs to move TURN allocations off it) while it drains,
	// that /readyz says no, and that `service find` stops listing it.
	n.leaving.Store(true)
	n.isReady.Store(false)
	n.mesh.SetDraining()
	var errs []error
	if err := n.withdrawServices(ctx); err != nil {
		errs = append(errs, err)
	}
	moved, err := n.store.Drain(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("hand off records: %w", err))
	}
	if err := n.router.Drain(ctx); err != nil {
		errs = append(errs, err)
	}
	left := max(time.Until(start.Add(timeout)), 500*time.Millisecond)
	if err := n.mesh.Leave(left); err != nil {
		errs = append(errs, err)
	}
	n.log.Info().Int("records_handed_off", moved).Dur("took", time.Since(start)).Errs("errors", errs).Msg("left the overlay")
	return errors.Join(errs...)
}

// ---- admin.Source ----

// Status summarises the node for /v1/status and `p2psip status`.
type Status struct {
	PeerID     ids.PeerID       `json:"peer_id"`
	Overlay    string           `json:"overlay"`
	PeerAddr   string           `json:"peer_addr"`
	GossipAddr string           `json:"gossip_addr"`
	SIPAddr    string           `json:"sip_addr"`
	Ready      bool             `json:"ready"`
	Uptime     string           `json:"uptime"`
	Members    int              `json:"members"`
	Replicas   int              `json:"replicas"`
	Records    map[string]int64 `json:"records"`
	Sessions   map[string]int   `json:"sessions"`
	Links      int              `json:"links"`
	Attached   int              `json:"attached"`
	Capacity   int              `json:"capacity"`
}

// Status implements admin.Source.
func (n *Node) Status() any {
	replicas := n.cfg.Replicas
	if replicas == 0 {
		replicas = 3
	}
	return Status{
		PeerID: n.id, Overlay: n.cfg.Overlay, PeerAddr: n.PeerAddr(), GossipAddr: n.GossipAddr(), SIPAddr: n.SIPAddr(),
		Ready: n.isReady.Load(), Uptime: time.Since(n.start).Round(time.Second).String(),
		Members: len(n.mesh.View().Members), Replicas: replicas, Records: n.store.Held(),
		Sessions: n.sessions.Sessions(), Links: len(n.pool.Links()),
		Attached: n.router.Attached(), Capacity: n.router.Capacity(),
	}
}

// Peers implements admin.Source.
func (n *Node) Peers() any { return n.sessions.Peers() }

// Members implements admin.Source.
func (n *Node) Members() any { return n.mesh.View().Members }

// MeshDetail implements admin.Source for the status page: the membership
// changes applyView saw, and the super peers we hold a link to.
func (n *Node) MeshDetail() admin.MeshDetail {
	d := admin.MeshDetail{Events: n.memberLog.Events()}
	for _, id := range n.pool.Links() {
		d.Links = append(d.Links, id.String())
	}
	return d
}

// Serving implements admin.Source: listening and joined.
func (n *Node) Serving() bool { return n.isReady.Load() }

// Location implements admin.Source.
func (n *Node) Location(ctx context.Context, aor string) (*record.Record, error) {
	norm, err := ids.NormalizeAOR(aor)
	if err != nil {
		return nil, wire.Errorf(wire.CodeBadRequest, "%v", err)
	}
	return n.store.Get(ctx, record.KindLocation, norm)
}
