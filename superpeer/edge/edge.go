package edge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/registrar"
	"github.com/p2psip/p2psip/common/siproute"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/superpeer/store"
)

// Store is the overlay database as the edge uses it (*store.Store).
type Store interface {
	Put(ctx context.Context, w store.Writer, rec *record.Record) (store.Result, error)
	PutState(ctx context.Context, w store.Writer, rec *record.Record) (store.Result, *record.Record, error)
	Get(ctx context.Context, kind record.Kind, name string) (*record.Record, error)
	GetOne(ctx context.Context, kind record.Kind, name string) (*record.Record, error)
}

// Sender originates tunnel frames at this super peer (*route.Router).
type Sender interface {
	Send(dst, hint ids.PeerID, txid uint64, payload []byte) error
}

// Config configures the edge. Sockets passed in are owned by the edge from
// New on: Run closes them (and so does a failing New).
type Config struct {
	// Self is this super peer's Peer-ID, stored as SP of every contact.
	Self ids.PeerID
	// Overlay is the overlay domain, also the digest realm.
	Overlay string
	// Secret is the overlay secret the credentials derive from.
	Secret []byte
	// SPAddr is this super peer's peer-protocol address, stored with each
	// contact.
	SPAddr string
	// Host and Port are the edge's SIP address as phones reach it (the
	// advertised IP and the UDP/TCP port): Record-Route and Via.
	Host string
	Port int
	// UDP, TCP and TLS are the phone-side sockets; any may be nil, not
	// all. TLS must be a crypto/tls listener.
	UDP net.PacketConn
	TCP net.Listener
	TLS net.Listener

	Store  Store
	Router Sender

	// MaxInFlight bounds SIP requests handled at once; past it the edge
	// answers 503 with Retry-After (RetryAfter, 0: 1s). 0 means 1000.
	MaxInFlight int
	// MaxWaiting bounds proxied requests waiting for answers
	// (siproute.Config.MaxWaiting; 0: 64 × MaxInFlight).
	MaxWaiting int
	RetryAfter time.Duration
	// ForeignDomain is the status for requests to domains other than the
	// overlay: 403 (0 too) or 404.
	ForeignDomain int
	// NonceLifetime is how long a digest nonce is accepted; 0 means 5 min.
	NonceLifetime time.Duration
	// MinExpires is the shortest registration accepted (0: 60s); tests
	// use shorter ones.
	MinExpires time.Duration
	// MaxConns bounds the phones' TCP and TLS connections together,
	// MaxConnsPerIP those from one IP address; past them a new connection
	// is closed at once. ConnSilence is how long a connection may stay
	// silent before its first bytes (a TLS one: its handshake included).
	// 0 means DefaultMaxConns, DefaultMaxConnsPerIP, DefaultConnSilence.
	MaxConns      int
	MaxConnsPerIP int
	ConnSilence   time.Duration

	Log zerolog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Edge is the SIP edge of one super peer.
type Edge struct {
	cfg    Config
	log    zerolog.Logger
	digest *digestAuth
	reg    *registrar.Registrar
	router *siproute.Router
	flows  *flowWatch
	ls     siproute.Listeners
	conns  *connLimits
	txid   atomic.Uint64
	stats  counters
}

// New validates cfg and builds the edge; it does no I/O.
func New(cfg Config) (*Edge, error) {
	e, err := build(cfg)
	if err != nil {
		closeAll(cfg.UDP, cfg.TCP, cfg.TLS)
		return nil, err
	}
	return e, nil
}

func build(cfg Config) (*Edge, error) {
	switch {
	case cfg.Self.IsZero() || cfg.Overlay == "" || len(cfg.Secret) == 0:
		return nil, errors.New("edge: Self, Overlay and Secret required")
	case cfg.Store == nil || cfg.Router == nil:
		return nil, errors.New("edge: Store and Router required")
	case cfg.UDP == nil && cfg.TCP == nil && cfg.TLS == nil:
		return nil, errors.New("edge: no SIP socket")
	case cfg.Host == "" || cfg.Port <= 0 || cfg.Port > 65535:
		return nil, errors.New("edge: Host and Port required")
	case cfg.ForeignDomain != 0 && cfg.ForeignDomain != 403 && cfg.ForeignDomain != 404:
		return nil, fmt.Errorf("edge: foreign-domain status %d: want 403 or 404", cfg.ForeignDomain)
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	e := &Edge{cfg: cfg, log: cfg.Log.With().Str("component", "edge").Logger()}
	e.digest = newDigestAuth(cfg.Overlay, cfg.Secret, cfg.NonceLifetime, cfg.Now)
	e.flows = newFlowWatch()
	var err error
	e.reg, err = registrar.New(registrar.Config{
		Self: cfg.Self, Overlay: cfg.Overlay, Store: regStore{cfg.Store}, Edge: true,
		Authorize:  e.authorizeRegister,
		Attachment: func() registrar.Attachment { return registrar.Attachment{SP: cfg.Self, SPAddr: cfg.SPAddr} },
		MinExpires: cfg.MinExpires, Log: cfg.Log, Now: cfg.Now,
	})
	if err != nil {
		return nil, err
	}
	e.router, err = siproute.New(siproute.Config{
		Self: cfg.Self, Overlay: cfg.Overlay, UserAgent: "p2psip-edge",
		Locator: locator{cfg.Store}, Sender: sender{e}, Local: e.reg,
		RecordRouteHost: cfg.Host, RecordRoutePort: cfg.Port,
		Register: e.handleRegister, Admit: e.admit, ForeignDomain: cfg.ForeignDomain,
		MaxInFlight: cfg.MaxInFlight, MaxWaiting: cfg.MaxWaiting, RetryAfter: cfg.RetryAfter, Log: cfg.Log,
	})
	if err != nil {
		return nil, err
	}
	e.ls.UDP = cfg.UDP
	if uc, ok := cfg.UDP.(*net.UDPConn); ok {
		// The default 208 KB buffer drops bursts (notes/TESTING.md).
		uc.SetReadBuffer(4 << 20)  //nolint:errcheck // best effort
		uc.SetWriteBuffer(4 << 20) //nolint:errcheck
	}
	e.conns = newConnLimits(cfg.MaxConns, cfg.MaxConnsPerIP, cfg.ConnSilence, e.log)
	if cfg.TCP != nil {
		e.ls.TCP = e.flows.wrap(cfg.TCP, "TCP", e.conns, nil)
	}
	if cfg.TLS != nil {
		e.ls.TLS = e.flows.wrap(cfg.TLS, "TLS", e.conns, e.refuseTLS)
	}
	return e, nil
}

func closeAll(udp net.PacketConn, ls ...net.Listener) {
	if udp != nil {
		udp.Close()
	}
	for _, l := range ls {
		if l != nil {
			l.Close()
		}
	}
}

// Run serves SIP until ctx ends; it closes the sockets and waits for
// everything it started.
func (e *Edge) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return e.router.ServeAll(ctx, e.ls) })
	g.Go(func() error { return e.reg.Run(ctx) })
	g.Go(func() error { return e.watchFlows(ctx) })
	return g.Wait()
}

// Deliver takes a tunnel frame addressed to this super peer
// (route.Config.Local). It never blocks for long. An error frame says its
// Src could not be reached: that peer's virtual connection is closed so
// its transactions fail at once.
func (e *Edge) Deliver(f *wire.Frame) {
	if f.Flags&wire.FlagError != 0 {
		e.router.PeerGone(f.Src)
		return
	}
	e.router.Deliver(f.Src, f.Via, f.Hops, f.Body)
}

// Router exposes the SIP router (statistics, tests).
func (e *Edge) Router() *siproute.Router { return e.router }

// Registrar exposes the bindings (tests, status).
func (e *Edge) Registrar() *registrar.Registrar { return e.reg }

// regStore adapts the store to the registrar: writes are made as the
// authenticated user, and the store checks once more that the AoR is
// that user's.
type regStore struct{ s Store }

func (r regStore) Put(ctx context.Context, user string, rec *record.Record) error {
	_, err := r.s.Put(ctx, store.Writer{User: user}, rec)
	return err
}

// PutState writes and returns the quorum's state after the write, so that
// the registrar's 200 costs no second quorum read.
func (r regStore) PutState(ctx context.Context, user string, rec *record.Record) (*record.Record, error) {
	_, state, err := r.s.PutState(ctx, store.Writer{User: user}, rec)
	return state, err
}

func (r regStore) Get(ctx context.Context, aor string) (*record.Record, error) {
	return r.s.Get(ctx, record.KindLocation, aor)
}

// locator adapts the store to siproute.
type locator struct{ s Store }

func (l locator) Lookup(ctx context.Context, aor string) ([]record.Contact, error) {
	rec, err := l.s.GetOne(ctx, record.KindLocation, aor)
	return siproute.Contacts(aor, rec, err)
}

// sender adapts the route.Router to siproute: each message is one tunnel
// frame with a transaction id of its own.
type sender struct{ e *Edge }

func (s sender) SendTunnel(dst, hint ids.PeerID, payload []byte) error {
	return s.e.cfg.Router.Send(dst, hint, s.e.txid.Add(1), payload)
}
