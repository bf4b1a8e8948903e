package siproute

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/record"
)

// Locator finds the live contacts of an overlay AoR (normalized,
// "sip:user@overlay"). An error wrapping ErrNotFound means there is no
// record (404); other errors and an empty list mean nobody is reachable
// (480). It is called from SIP handler goroutines and may block until ctx
// ends.
type Locator interface {
	Lookup(ctx context.Context, aor string) ([]record.Contact, error)
}

// Sender carries one SIP message to a peer over the overlay. spHint is the
// super peer the peer was last seen behind (zero if unknown). It must not
// keep payload's backing array past the call unless it owns it: the router
// hands over a fresh copy each time, so it may. An error fails the SIP
// transaction at once (the caller sees 480) instead of letting it time out.
type Sender interface {
	SendTunnel(dst, spHint ids.PeerID, payload []byte) error
}

// Local says how to reach a phone registered at this node: the sipgo
// transport name ("UDP", "TCP") and the source ip:port it registered from.
// contactURI is a Request-URI or a stored contact URI; implementations
// should match it leniently (scheme, user, host and port; parameters
// ignored).
type Local interface {
	Flow(contactURI string) (transport, addr string, ok bool)
}

// URILocal is what a Local may implement as well: Flow for a URI the
// router has parsed already, sparing a print and a parse per request.
type URILocal interface {
	FlowURI(u *sip.Uri) (transport, addr string, ok bool)
}

// Config configures a Router. Interfaces are called concurrently from SIP
// handler goroutines.
type Config struct {
	// Self is this node's Peer-ID; it is the user part of our Record-Route.
	Self ids.PeerID
	// Overlay is the overlay domain; Request-URIs in it are looked up.
	Overlay string
	// UA, if nil (recommended), is built and owned by the Router with what
	// the overlay needs and sipgo accepts only at construction: a dialer
	// that refuses tunnel addresses, stateless forwarding of late 2xx
	// retransmissions, and transaction failure on connection loss. A
	// caller-supplied UA lacks those three, must not be used by anything
	// else that serves TLS, and is closed by its owner. See Router.UA.
	UA *sipgo.UserAgent
	// UserAgent is the UA name when the Router builds the UA; "" means
	// "p2psip".
	UserAgent string

	Locator Locator
	Sender  Sender
	Local   Local

	// RecordRouteHost and RecordRoutePort are the node's local SIP
	// address, the one its phones reach; they go into our Record-Route and
	// identify Route headers that point at us. Required.
	RecordRouteHost string
	RecordRoutePort int

	// Register handles REGISTER from local phones (the registrar); nil
	// answers 405. REGISTER from the tunnel is always refused (403).
	Register func(req *sip.Request, tx sip.ServerTransaction)
	// Admit, if set, vets every other request from the phone side (not
	// from the tunnel) once routing has chosen its target and before
	// anything is sent: nil lets it through, a response is sent instead
	// (e.g. a 407 challenge); an ACK that is not let through is dropped.
	// It runs on the request's handler goroutine, must be safe for
	// concurrent use, and must not modify req. The SIP edge uses it for
	// its authentication policy; nil admits everything.
	Admit func(req *sip.Request, to Target) *sip.Response
	// ForeignDomain is the status for a request from a phone whose
	// Request-URI is neither in the overlay nor a phone or node here: 403
	// (also for 0) or 404.
	ForeignDomain int

	// LookupTimeout bounds one Locator.Lookup; 0 means 5s.
	LookupTimeout time.Duration
	// QueueLen bounds the inbound payloads queued per peer before sipgo
	// reads them, and QueueBytes their bytes; 0 means 4096 and 1 MiB.
	// Payloads beyond either are dropped and counted. sipgo takes the
	// tunnel for a reliable transport and never retransmits over it, so a
	// dropped payload is a failed transaction: the bounds are there
	// against a flooding peer, and leave room for the bursts a busy peer
	// queues while this node's SIP goroutines are held up (a collection,
	// a scheduling stall): 256 payloads were 40 ms of one peer's traffic
	// at 1,900 calls/s and dropped calls in issue 7's benchmark.
	QueueLen, QueueBytes int
	// TimerC bounds how long an INVITE branch may ring (RFC 3261 §16.6
	// step 11) before it is cancelled; 0 means 3 minutes.
	TimerC time.Duration

	// MaxInFlight bounds requests being handled at once (parsed, routed,
	// looked up, written to the store: the work that costs CPU); past it
	// new requests get 503 with Retry-After (0: no limit). A proxied
	// request stops counting once its branches are sent: then it only
	// waits for answers, and counts in MaxWaiting.
	MaxInFlight int
	// MaxWaiting bounds proxied requests waiting for their answers (up to
	// Timer B/F, 32 s, for a target that never answers); past it new
	// requests get 503 too. 0 means 64 × MaxInFlight. Without the split, a
	// burst of requests to a silent target held every in-flight slot for
	// 32 s and the node refused everything else meanwhile.
	MaxWaiting int
	// RetryAfter is the Retry-After of those 503s; 0 means 1s.
	RetryAfter time.Duration

	Log zerolog.Logger
}

// Router is the SIP proxy of one overlay node: phone side on UDP/TCP,
// overlay side on the tunnel. Create it with New, run it with Serve.
type Router struct {
	cfg      Config
	log      zerolog.Logger
	selfHex  string
	ownUA    bool
	ua       *sipgo.UserAgent
	srv      *sipgo.Server
	cli      *sipgo.Client
	tun      *tunnel
	stats    counters
	inflight atomic.Int64
	waiting  atomic.Int64 // proxied requests past their branches' start
	byPeer   peerBranches // branches going over the tunnel, for PeerGone

	mu sync.Mutex // guards state, runCtx and stop; handlers.Add happens under it
	// state is 0 before Serve, 1 while serving, 2 after.
	state    int
	runCtx   context.Context
	stop     context.CancelFunc
	handlers sync.WaitGroup // handler goroutines and what they started
}

// New validates cfg and builds the router; it does no I/O.
func New(cfg Config) (*Router, error) {
	switch {
	case cfg.Self.IsZero():
		return nil, errors.New("siproute: Self required")
	case cfg.Overlay == "":
		return nil, errors.New("siproute: Overlay required")
	case cfg.Locator == nil || cfg.Sender == nil || cfg.Local == nil:
		return nil, errors.New("siproute: Locator, Sender and Local required")
	case cfg.RecordRouteHost == "" || cfg.RecordRoutePort <= 0 || cfg.RecordRoutePort > 65535:
		return nil, errors.New("siproute: RecordRouteHost and RecordRoutePort required")
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "p2psip"
	}
	if cfg.LookupTimeout <= 0 {
		cfg.LookupTimeout = 5 * time.Second
	}
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = 4096
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = 1 << 20
	}
	if cfg.TimerC <= 0 {
		cfg.TimerC = 3 * time.Minute
	}
	r := &Router{
		cfg: cfg, selfHex: cfg.Self.String(),
		log: cfg.Log.With().Str("component", "siproute").Str("peer_id", cfg.Self.Short()).Logger(),
	}
	r.tun = newTunnel(cfg.Sender, cfg.QueueLen, cfg.QueueBytes, &r.stats, r.log)
	// sipgo logs every malformed datagram, at error and with its bytes:
	// sampled, so that strangers cannot fill the disk.
	slog := logx.Slog(logx.Throttle(r.log.With().Str("lib", "sipgo").Logger()))
	r.ua = cfg.UA
	if r.ua == nil {
		ua, err := r.newUA(slog)
		if err != nil {
			return nil, err
		}
		r.ua, r.ownUA = ua, true
	}
	var err error
	if r.srv, err = sipgo.NewServer(r.ua, sipgo.WithServerLogger(slog)); err != nil {
		return nil, fmt.Errorf("siproute: sip server: %w", err)
	}
	// Via sent-by: our local host; sipgo fills the port from the
	// connection each request leaves on.
	if r.cli, err = sipgo.NewClient(r.ua, sipgo.WithClientHostname(cfg.RecordRouteHost), sipgo.WithClientLogger(slog)); err != nil {
		return nil, fmt.Errorf("siproute: sip client: %w", err)
	}
	// Every method goes through one handler: a proxy forwards methods it
	// does not know.
	r.srv.OnNoRoute(r.handle)
	return r, nil
}

// UA is the sipgo user agent the router serves on (for tests and for
// callers that add listeners, e.g. TLS on the SIP edge).
func (r *Router) UA() *sipgo.UserAgent { return r.ua }

// Stats returns a snapshot of the counters.
func (r *Router) Stats() Stats { return r.stats.snapshot() }

// Serve serves the phone side on udp and tcp (either may be nil) and the
// tunnel side until ctx ends or a listener fails. It closes the sockets it
// was given, ends every transaction, waits for every handler, and closes
// the UA if it built it. It can be called once (Serve or ServeAll).
func (r *Router) Serve(ctx context.Context, udp net.PacketConn, tcp net.Listener) error {
	return r.ServeAll(ctx, Listeners{UDP: udp, TCP: tcp})
}

// Listeners are the phone-side sockets ServeAll serves; nil ones are
// skipped. TLS must be a crypto/tls listener (sipgo does no handshake of
// its own). Its connections share sipgo's "TLS" transport with the tunnel,
// whose fake addresses lie in 100.64.0.0/10: the caller must refuse phones
// connecting from that prefix, or one could pass for an overlay peer.
type Listeners struct {
	UDP net.PacketConn
	TCP net.Listener
	TLS net.Listener
}

// ServeAll is Serve with a TLS listener as well.
func (r *Router) ServeAll(ctx context.Context, ls Listeners) error {
	r.mu.Lock()
	if r.state != 0 {
		r.mu.Unlock()
		return errors.New("siproute: Serve called twice")
	}
	r.state = 1
	r.runCtx, r.stop = context.WithCancel(ctx)
	runCtx := r.runCtx
	r.mu.Unlock()
	r.tun.start()

	g, gctx := errgroup.WithContext(runCtx)
	serve := func(name string, f func() error) {
		g.Go(func() error {
			err := f()
			if gctx.Err() != nil {
				return nil
			}
			if err == nil {
				err = net.ErrClosed
			}
			return fmt.Errorf("siproute: serve %s: %w", name, err)
		})
	}
	if ls.UDP != nil {
		serve("udp "+ls.UDP.LocalAddr().String(), func() error { return r.srv.ServeUDP(ls.UDP) })
	}
	if ls.TCP != nil {
		serve("tcp "+ls.TCP.Addr().String(), func() error { return r.srv.ServeTCP(ls.TCP) })
	}
	if ls.TLS != nil {
		serve("tls "+ls.TLS.Addr().String(), func() error { return r.srv.ServeTLS(ls.TLS) })
	}
	serve("tunnel", func() error { return r.srv.ServeTLS(r.tun) })
	g.Go(func() error {
		<-gctx.Done()
		r.shutdown(ls)
		return nil
	})
	r.log.Info().Str("rr", r.recordRoute().Value()).Msg("sip router serving")
	err := g.Wait()
	r.log.Info().Msg("sip router stopped")
	return err
}

// shutdown refuses new handlers, closes the listeners, cancels running
// handlers and waits for them, closes the UA (which ends every transaction,
// then closes sipgo's pooled connections) and last the tunnel connections
// sipgo never adopted.
func (r *Router) shutdown(ls Listeners) {
	r.mu.Lock()
	r.state = 2
	r.mu.Unlock()
	if ls.UDP != nil {
		ls.UDP.Close()
	}
	if ls.TCP != nil {
		ls.TCP.Close()
	}
	if ls.TLS != nil {
		ls.TLS.Close()
	}
	r.tun.stop()
	r.stop()
	r.handlers.Wait()
	if r.ownUA {
		r.ua.Close()
		drainPools(r.ua.TransportLayer())
	}
	r.tun.Close()
}

// drainPools closes connections sipgo opens after its UA was closed. sipgo
// hands every message read to a goroutine of its own; one read just before
// its socket closed can run after UserAgent.Close, find no pooled
// connection for its answer and open a new socket, which nothing would
// ever close. Such stragglers run within microseconds, so a short watch
// catches them.
func drainPools(tp *sip.TransportLayer) {
	quiet := 0
	for range 40 {
		n := 0
		for _, network := range []string{"udp", "tcp", "tls"} {
			if p := tp.Pool(network); p != nil && p.Size() > 0 {
				n += p.Size()
				p.Clear() //nolint:errcheck // closing is all we can do
			}
		}
		if n == 0 {
			if quiet++; quiet == 4 {
				return
			}
		} else {
			quiet = 0
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// enter registers a handler goroutine; false once the router is stopping.
func (r *Router) enter() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state != 1 {
		return false
	}
	r.handlers.Add(1)
	return true
}

// running returns the serve context, or nil outside Serve.
func (r *Router) running() context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state != 1 {
		return nil
	}
	return r.runCtx
}

// Deliver takes one inbound tunnel payload (a whole SIP message) from src,
// which reached us through super peer via in hops overlay hops. It never
// blocks for long: the payload is checked and queued for sipgo, or dropped
// and counted. Deliver takes ownership of payload.
func (r *Router) Deliver(src, via ids.PeerID, hops uint8, payload []byte) {
	r.stats.tunnelIn.Add(1)
	r.stats.hops(hops)
	if hops > 3 {
		r.stats.dropped.Add(1)
		r.log.Warn().Str("src", src.Short()).Uint8("hops", hops).Msg("tunnel payload over the hop bound dropped")
		return
	}
	if err := r.tun.deliver(src, via, payload); err != nil {
		r.stats.dropped.Add(1)
		r.log.Debug().Err(err).Str("src", src.Short()).Msg("tunnel payload dropped")
	}
}

// PeerGone closes the virtual connection of a peer whose agent went away
// (or that the overlay could not reach): its pending transactions fail at
// once and the next message to it starts a new connection.
func (r *Router) PeerGone(p ids.PeerID) {
	if r.tun.gone(p) {
		r.log.Debug().Str("dst", p.Short()).Msg("tunnel connection closed")
	}
	for _, tx := range r.byPeer.take(p) {
		tx.Terminate() // its proxy loop answers 480
	}
}

// peerBranches holds the client transactions of proxy branches sent to
// each peer over the tunnel. PeerGone ends them itself rather than have
// sipgo end a closed connection's transactions
// (WithTransactionLayerTerminateOnConnClose): sipgo enters a transaction
// in its table before it initializes it, and ending one in between
// dereferences its nil state — a crash seen under load when a peer went
// away while calls to it were starting.
type peerBranches struct {
	mu sync.Mutex
	m  map[ids.PeerID]map[sip.ClientTransaction]struct{}
}

func (pb *peerBranches) add(p ids.PeerID, tx sip.ClientTransaction) {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	if pb.m == nil {
		pb.m = make(map[ids.PeerID]map[sip.ClientTransaction]struct{})
	}
	s := pb.m[p]
	if s == nil {
		s = make(map[sip.ClientTransaction]struct{}, 1)
		pb.m[p] = s
	}
	s[tx] = struct{}{}
}

func (pb *peerBranches) remove(p ids.PeerID, tx sip.ClientTransaction) {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	if s := pb.m[p]; s != nil {
		delete(s, tx)
		if len(s) == 0 {
			delete(pb.m, p)
		}
	}
}

// take removes and returns p's transactions.
func (pb *peerBranches) take(p ids.PeerID) []sip.ClientTransaction {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	s := pb.m[p]
	delete(pb.m, p)
	out := make([]sip.ClientTransaction, 0, len(s))
	for tx := range s {
		out = append(out, tx)
	}
	return out
}
