// Package peers keeps the data-plane links between super peers
// (ARCHITECTURE.md §3): one persistent, TLS-authenticated peer-protocol
// connection per pair, dialled on first use, shared by both directions,
// and redialled when it breaks. Replication, reads and tunnelled frames
// all go through it; memberlist carries none of this.
package peers

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/client"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/link"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/wire"
)

// ErrUnknownPeer: the Peer-ID is not an alive member of the mesh.
var ErrUnknownPeer = wire.Errorf(wire.CodeUnknownPeer, "not a reachable super peer")

// redialBackoff keeps a dead peer from being dialled on every request in
// the seconds before the mesh declares it dead.
const redialBackoff = 500 * time.Millisecond

// Defaults of Config.Probe and Config.ProbeTimeout.
const (
	DefaultProbe        = 2 * time.Second
	DefaultProbeTimeout = 3 * time.Second
)

// Config describes this super peer's side of its links.
type Config struct {
	Self     ids.PeerID
	SelfAddr string // our advertised peer-protocol address, sent in Hello
	Overlay  string
	Secret   []byte
	Cert     tls.Certificate // our CA-signed node certificate
	CA       *x509.CertPool  // the overlay CA: the other side must chain to it
	// Handler builds the handler that serves requests arriving on a link
	// we dialled (links are used both ways).
	Handler func(from ids.PeerID) link.Handler
	// Link tunes each connection.
	Link link.Config
	// Probe is how often every link is pinged (default DefaultProbe;
	// negative: never). A link whose Ping
	// gets no answer within ProbeTimeout (default DefaultProbeTimeout) is
	// closed: a cut without a reset (a firewall dropping packets) leaves
	// the TCP connection open for many minutes, writes just buffer, and
	// memberlist keeps both ends alive through indirect probes, so tunnel
	// frames would vanish without the error frame that lets agents fall
	// back to their TURN relays. After the close, sends redial and fail
	// with errors that reach the agents.
	Probe, ProbeTimeout time.Duration
}

// Pool holds the links. Safe for concurrent use.
type Pool struct {
	cfg Config
	log zerolog.Logger

	mu    sync.Mutex // guards the fields below
	addrs map[ids.PeerID]string
	conns map[ids.PeerID]*slot
	ctx   context.Context
	// closing is set when Run is about to wait: nothing new may start.
	closing bool
	wg      sync.WaitGroup

	silent atomic.Uint64 // links closed for an unanswered probe
}

// slot is one peer's link, or the dial in progress.
type slot struct {
	conn     *link.Conn
	dialing  chan struct{} // closed when the dial ends
	err      error
	failedAt time.Time
}

// New builds an idle pool.
func New(cfg Config, log zerolog.Logger) *Pool {
	if cfg.Probe == 0 {
		cfg.Probe = DefaultProbe
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	return &Pool{
		cfg:   cfg,
		log:   logx.Component(log, "peers"),
		addrs: make(map[ids.PeerID]string),
		conns: make(map[ids.PeerID]*slot),
	}
}

// Run keeps the pool usable until ctx ends, then closes every link and
// waits for them.
func (p *Pool) Run(ctx context.Context) error {
	p.mu.Lock()
	p.ctx = ctx
	p.mu.Unlock()
	<-ctx.Done()
	p.mu.Lock()
	p.closing = true
	for _, s := range p.conns {
		if s.conn != nil {
			s.conn.Close()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

// SetAddrs installs the alive members' peer-protocol addresses; links to
// members that left are closed.
func (p *Pool) SetAddrs(addrs map[ids.PeerID]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.addrs = addrs
	for id, s := range p.conns {
		if _, ok := addrs[id]; !ok && s.conn != nil {
			s.conn.Close()
		}
	}
}

// Request sends a request to super peer to over its link, dialling it if
// needed; a link found broken is redialled once.
func (p *Pool) Request(ctx context.Context, to ids.PeerID, t wire.Type, body any) (*wire.Frame, error) {
	for attempt := 0; ; attempt++ {
		c, err := p.get(ctx, to)
		if err != nil {
			return nil, err
		}
		f, err := c.Request(ctx, t, body)
		if err != nil && errors.Is(err, link.ErrClosed) && attempt == 0 && ctx.Err() == nil {
			continue
		}
		return f, err
	}
}

// Conn returns the link to a super peer, dialling it if needed.
func (p *Pool) Conn(ctx context.Context, to ids.PeerID) (*link.Conn, error) { return p.get(ctx, to) }

// Up returns the established link to a super peer, or nil when there is
// none open right now (never dials or waits): the tunnel forwarding fast
// path, which costs no context or timer per frame.
func (p *Pool) Up(to ids.PeerID) *link.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.conns[to]; s != nil && s.conn != nil {
		select {
		case <-s.conn.Done():
		default:
			return s.conn
		}
	}
	return nil
}

func (p *Pool) get(ctx context.Context, to ids.PeerID) (*link.Conn, error) {
	if to == p.cfg.Self {
		return nil, fmt.Errorf("peers: link to self")
	}
	p.mu.Lock()
	for {
		s := p.conns[to]
		switch {
		case s == nil:
		case s.conn != nil:
			select {
			case <-s.conn.Done():
				delete(p.conns, to)
				continue
			default:
				p.mu.Unlock()
				return s.conn, nil
			}
		case s.dialing != nil:
			ch := s.dialing
			p.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			p.mu.Lock()
			continue
		case time.Since(s.failedAt) < redialBackoff:
			err := s.err
			p.mu.Unlock()
			return nil, err
		default:
			delete(p.conns, to)
			continue
		}
		break
	}
	addr, ok := p.addrs[to]
	runCtx := p.ctx
	if !ok || runCtx == nil {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrUnknownPeer, to.Short())
	}
	s := &slot{dialing: make(chan struct{})}
	p.conns[to] = s
	p.mu.Unlock()

	sess, err := p.dial(runCtx, to, addr)
	p.mu.Lock()
	close(s.dialing)
	s.dialing = nil
	if err != nil {
		s.err, s.failedAt = err, time.Now()
		p.mu.Unlock()
		return nil, err
	}
	if p.closing {
		p.mu.Unlock()
		sess.Close()
		return nil, fmt.Errorf("peers: shutting down")
	}
	s.conn = sess.Conn
	p.trackLocked(to, s, sess)
	p.mu.Unlock()
	return sess.Conn, nil
}

func (p *Pool) dial(ctx context.Context, to ids.PeerID, addr string) (*client.Session, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", to.Short(), err)
	}
	lc := p.cfg.Link
	if p.cfg.Handler != nil {
		lc.Handler = p.cfg.Handler(to)
	}
	sess, err := client.Dial(ctx, client.Config{
		Addr: addr,
		TLS:  auth.ClientTLSConfig(&p.cfg.Cert, p.cfg.CA, host),
		Hello: func(cs tls.ConnectionState) (wire.Hello, error) {
			got, err := auth.PeerIDFromState(cs)
			if err != nil {
				return wire.Hello{}, err
			}
			if got != to {
				return wire.Hello{}, fmt.Errorf("super peer at %s is %s, expected %s", addr, got.Short(), to.Short())
			}
			proof, err := auth.MeshProof(p.cfg.Secret, cs, p.cfg.Self, to)
			if err != nil {
				return wire.Hello{}, err
			}
			return wire.Hello{Role: wire.RoleSuperPeer, Overlay: p.cfg.Overlay, Proof: proof, PeerAddr: p.cfg.SelfAddr}, nil
		},
		Link: lc,
	}, p.log.With().Str("sp_id", to.Short()).Logger())
	if err != nil {
		p.log.Debug().Err(err).Str("sp_id", to.Short()).Msg("dial super peer")
		return nil, fmt.Errorf("link to %s: %w", to.Short(), err)
	}
	p.log.Debug().Str("sp_id", to.Short()).Str("remote_addr", addr).Msg("link up")
	return sess, nil
}

// trackLocked forgets the link when it ends and probes it meanwhile.
// p.mu must be held.
func (p *Pool) trackLocked(to ids.PeerID, s *slot, sess *client.Session) {
	c := s.conn
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.probe(to, s)
		<-c.Done()
		if sess != nil {
			sess.Close()
		}
		p.mu.Lock()
		if cur := p.conns[to]; cur != nil && cur.conn == c {
			delete(p.conns, to)
		}
		p.mu.Unlock()
	}()
}

// probe pings s's link every Probe and closes it when a Ping goes
// unanswered for ProbeTimeout; it returns when the link ends. Every link
// is probed, idle or not: users may keep a link they got from Conn and
// send on it for as long as it is open (the tunnel router does), so the
// pool cannot tell which links carry traffic; one Ping per link every
// Probe costs next to nothing.
func (p *Pool) probe(to ids.PeerID, s *slot) {
	c := s.conn
	if p.cfg.Probe < 0 {
		return
	}
	t := time.NewTicker(p.cfg.Probe)
	defer t.Stop()
	for {
		select {
		case <-c.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ProbeTimeout)
		start := time.Now()
		_, err := c.Request(ctx, wire.TypePing, &wire.Ping{})
		cancel()
		select {
		case <-c.Done():
			return
		default:
		}
		// Any answer, an error reply included, shows the link alive; a
		// full send queue (link.ErrQueueFull) is asked again next time.
		if errors.Is(err, context.DeadlineExceeded) {
			p.silent.Add(1)
			p.log.Warn().Str("sp_id", to.Short()).Dur("waited", time.Since(start)).
				Msg("link to super peer silent: closed (frames to it will fail instead of vanishing)")
			c.Close()
			return
		}
	}
}

// SilentCloses counts links closed because a probe went unanswered.
func (p *Pool) SilentCloses() uint64 { return p.silent.Load() }

// Warm dials, in the background, every member without a link, so the
// first write after a join does not pay for TLS handshakes.
func (p *Pool) Warm() {
	p.mu.Lock()
	ctx := p.ctx
	var todo []ids.PeerID
	for id := range p.addrs {
		if id != p.cfg.Self && p.conns[id] == nil {
			todo = append(todo, id)
		}
	}
	if ctx == nil || p.closing {
		p.mu.Unlock()
		return
	}
	p.wg.Add(len(todo))
	p.mu.Unlock()
	for _, id := range todo {
		go func() {
			defer p.wg.Done()
			if _, err := p.get(ctx, id); err != nil {
				p.log.Debug().Err(err).Str("sp_id", id.Short()).Msg("warm link")
			}
		}()
	}
}

// Adopt registers a link the other super peer dialled, so our requests
// can use it too. An existing live link is kept; both then stay usable.
func (p *Pool) Adopt(from ids.PeerID, c *link.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.conns[from]; p.closing || s != nil && (s.conn != nil || s.dialing != nil) {
		return
	}
	s := &slot{conn: c}
	p.conns[from] = s
	p.trackLocked(from, s, nil)
}

// Links returns the Peer-IDs with a live link, for status.
func (p *Pool) Links() []ids.PeerID {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []ids.PeerID
	for id, s := range p.conns {
		if s.conn != nil {
			out = append(out, id)
		}
	}
	return out
}
