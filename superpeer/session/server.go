// Package session is the super peer's peer-protocol server
// (ARCHITECTURE.md §4): it accepts TLS connections, authenticates the
// Hello (credentials for clients and agents, a session-bound mesh proof
// for super peers), and serves each connection's requests against the
// store. Requests that wait on the network run on their own goroutines,
// bounded; the reader never blocks.
package session

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/link"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/superpeer/store"
)

// Store is what sessions need of the database.
type Store interface {
	Put(ctx context.Context, w store.Writer, rec *record.Record) (store.Result, error)
	PutState(ctx context.Context, w store.Writer, rec *record.Record) (store.Result, *record.Record, error)
	Get(ctx context.Context, kind record.Kind, name string) (*record.Record, error)
	GetOne(ctx context.Context, kind record.Kind, name string) (*record.Record, error)
	Remove(ctx context.Context, w store.Writer, kind record.Kind, name string, keys []string) (store.Result, error)
	Find(ctx context.Context, service string) (*record.Record, error)
	HandleReplicate(from ids.PeerID, req *wire.ReplicateReq) (*wire.ReplicateResp, error)
	HandleRead(req *wire.ReadReq) (*wire.FetchResp, error)
	HandleDigest(from ids.PeerID, req *wire.DigestReq) (*wire.DigestResp, error)
	HandleSync(from ids.PeerID, req *wire.SyncReq) (*wire.ReplicateReq, error)
}

// Router admits agents and forwards tunnel frames (superpeer/route).
type Router interface {
	Attach(ctx context.Context, peer Peer, c *link.Conn, req *wire.Attach) (*wire.AttachResult, error)
	Detach(peer Peer, c *link.Conn)
	// Tunnel handles a Tunnel frame on the reader goroutine; it must not block.
	Tunnel(peer Peer, c *link.Conn, f *wire.Frame)
	// KeepaliveFor is the read timeout of an agent's session.
	KeepaliveFor() time.Duration
	Attached() int
	Capacity() int
}

// Promoter answers promotion requests from agents and dial-back tests
// asked by other super peers (superpeer/promote).
type Promoter interface {
	Promote(ctx context.Context, peer Peer, req *wire.PromoteReq) (*wire.PromoteResp, error)
	DialBack(ctx context.Context, req *wire.DialBackReq) (*wire.DialBackResp, error)
}

// promoteTimeout bounds a promotion request or a dial-back test served
// here: the design gives the verdict 30 s.
const promoteTimeout = 30 * time.Second

// Adopter takes inbound super-peer links into the pool.
type Adopter interface {
	Adopt(from ids.PeerID, c *link.Conn)
}

// Config configures the server. Zero values mean defaults.
type Config struct {
	// Listener is the bound TCP listener (required); Run closes it.
	Listener net.Listener
	// TLS is the server TLS configuration (auth.ServerTLSConfig).
	TLS     *tls.Config
	Self    ids.PeerID
	Overlay string
	Secret  []byte
	// CA verifies that a super peer's certificate belongs to the overlay.
	CA    *x509.CertPool
	Store Store
	Pool  Adopter
	// Router, if set, serves Attach and Tunnel.
	Router Router
	// Promoter, if set, serves Promote and DialBack.
	Promoter Promoter
	// MaxInFlight bounds concurrently served requests (default 4096);
	// past it requests are answered CodeUnavailable at once.
	MaxInFlight int
	// HandshakeTimeout bounds TLS plus Hello (default 5s).
	HandshakeTimeout time.Duration
	// RequestTimeout bounds one served request (default 10s).
	RequestTimeout time.Duration
	// Link tunes each connection.
	Link       link.Config
	Registerer prometheus.Registerer
	Now        func() time.Time
}

// Peer is an authenticated connection's identity.
type Peer struct {
	ID     ids.PeerID `json:"peer_id"`
	User   string     `json:"user,omitempty"`
	Role   wire.Role  `json:"role"`
	Remote string     `json:"remote_addr"`
}

// Server accepts and serves peer-protocol connections.
type Server struct {
	cfg Config
	log zerolog.Logger
	// refusedLog is log throttled (logx.Throttle): anyone can open a
	// connection and fail its handshake; p2psip_session_refused_total
	// counts them all.
	refusedLog zerolog.Logger
	m          *metrics
	sem        chan struct{}
	// jobs hands a request to an idle worker (see worker).
	jobs chan func()

	mu    sync.Mutex // guards conns and closed
	conns map[*link.Conn]Peer
	// closed is set once Run stops accepting: request goroutines may no
	// longer be added to wg (links dialled by the pool outlive the accept
	// loop by a moment).
	closed bool

	ctx atomic.Pointer[context.Context]
	wg  sync.WaitGroup
}

// New validates cfg.
func New(cfg Config, log zerolog.Logger) (*Server, error) {
	if cfg.Listener == nil || cfg.TLS == nil || cfg.Store == nil {
		return nil, errors.New("session: Listener, TLS and Store are required")
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 4096
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 5 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log = logx.Component(log, "session")
	if cfg.Router != nil {
		// Every attached agent holds a descriptor: say so at start rather
		// than with accept errors under load.
		if limit := openFileLimit(); limit > 0 && uint64(cfg.Router.Capacity())+fdReserve > limit {
			log.Warn().Uint64("open_file_limit", limit).Int("capacity", cfg.Router.Capacity()).
				Msgf("the open-file limit holds about %d attached agents, fewer than the capacity: raise it (ulimit -n, LimitNOFILE=)", limit-min(limit, fdReserve))
		}
	}
	return &Server{
		cfg:        cfg,
		log:        log,
		refusedLog: logx.Throttle(log),
		m:          newMetrics(cfg.Registerer),
		sem:        make(chan struct{}, cfg.MaxInFlight),
		jobs:       make(chan func()),
		conns:      make(map[*link.Conn]Peer),
	}, nil
}

// Run accepts connections until ctx ends, then closes them all and waits.
func (s *Server) Run(ctx context.Context) error {
	s.ctx.Store(&ctx)
	go func() {
		<-ctx.Done()
		s.cfg.Listener.Close()
	}()
	var err error
	var backoff time.Duration
	for {
		nc, aerr := s.cfg.Listener.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				var ne net.Error
				if errors.As(aerr, &ne) && ne.Timeout() {
					continue
				}
				if transientAccept(aerr) {
					// Out of file descriptors (or a connection reset
					// before we took it): refuse for a moment rather
					// than stop serving the sessions we hold.
					backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
					s.m.refused.WithLabelValues("accept").Inc()
					s.log.Warn().Err(aerr).Dur("retry_in", backoff).Int("sessions", s.count()).Msg("accept failed; is the open-file limit too low for the capacity?")
					select {
					case <-time.After(backoff):
						continue
					case <-ctx.Done():
					}
				} else {
					err = fmt.Errorf("session: accept: %w", aerr)
				}
			}
			break
		}
		backoff = 0
		s.wg.Add(1)
		go s.serve(ctx, nc) // calls s.wg.Done when the session has ended
	}
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// count is the number of live connections.
func (s *Server) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// transientAccept reports whether an accept error passes by itself: the
// process or system is out of descriptors or buffers, or the peer gave up
// before we took its connection.
func transientAccept(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Sessions counts live connections by role.
func (s *Server) Sessions() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for _, p := range s.conns {
		out[p.Role.String()]++
	}
	return out
}

// Peers lists the authenticated sessions (for /v1/peers).
func (s *Server) Peers() []Peer {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Peer, 0, len(s.conns))
	for _, p := range s.conns {
		out = append(out, p)
	}
	return out
}

// serve admits one connection and starts its link. The goroutine that
// ran the handshake (and grew a deep stack doing so) then ends: an idle
// session holds no goroutine of its own (link.Config.ParkAfter), and the
// clean-up runs when the link ends.
func (s *Server) serve(ctx context.Context, nc net.Conn) {
	remote := nc.RemoteAddr().String()
	tc, peer, err := s.handshake(ctx, nc)
	if err != nil {
		s.m.refused.WithLabelValues(refusal(err)).Inc()
		s.refusedLog.Info().Err(err).Str("remote_addr", remote).Msg("connection refused")
		nc.Close()
		s.wg.Done()
		return
	}
	// The session's logger is made when it logs: its context would
	// otherwise be half a KiB kept for every idle agent.
	log := func() zerolog.Logger {
		return s.log.With().Str("peer_id", peer.ID.Short()).Str("role", peer.Role.String()).Str("user", peer.User).Logger()
	}
	lc := s.cfg.Link
	lc.Handler = s.Handler(peer)
	if peer.Role == wire.RoleAgent && s.cfg.Router != nil {
		// An agent pings every keepalive; silence for three of them
		// means it is gone (its NAT binding is likely gone too).
		lc.ReadTimeout = s.cfg.Router.KeepaliveFor()
	}
	if peer.Role == wire.RoleAgent && lc.ParkAfter == 0 {
		lc.ParkAfter = agentParkAfter
	}
	c := link.New(tc, lc, s.log)
	s.mu.Lock()
	s.conns[c] = peer
	s.mu.Unlock()
	s.m.sessions.WithLabelValues(peer.Role.String()).Inc()
	if peer.Role == wire.RoleSuperPeer && s.cfg.Pool != nil {
		s.cfg.Pool.Adopt(peer.ID, c)
	}
	if e := s.log.Debug(); e.Enabled() {
		e.Discard()
		l := log()
		l.Debug().Str("remote_addr", remote).Msg("session up")
	}
	c.Start(ctx, func(err error) {
		defer s.wg.Done()
		if s.cfg.Router != nil && peer.Role == wire.RoleAgent {
			s.cfg.Router.Detach(peer, c)
		}
		s.m.sessions.WithLabelValues(peer.Role.String()).Dec()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		if err != nil && !errors.Is(err, link.ErrClosed) {
			s.m.closed.WithLabelValues(closeReason(err)).Inc()
			l := log()
			l.Info().Err(err).Str("remote_addr", remote).Msg("session closed")
		}
	})
}

// fdReserve is the descriptors a super peer needs besides its agents'
// sessions (listeners, mesh links, SIP, TURN, files).
const fdReserve = 1000

// agentParkAfter is how long an agent's session stays quiet before its
// reader parks: longer than the gaps inside a burst of frames, much
// shorter than the keepalive, and short enough that the readers, writers
// and read buffers of the sessions a ping just woke are few.
const agentParkAfter = 500 * time.Millisecond

// handshake runs TLS and checks the Hello; it answers refusals itself.
func (s *Server) handshake(ctx context.Context, nc net.Conn) (*tls.Conn, Peer, error) {
	deadline := time.Now().Add(s.cfg.HandshakeTimeout)
	nc.SetDeadline(deadline) //nolint:errcheck // a failed deadline shows as a failed read
	tc := tls.Server(nc, s.cfg.TLS)
	hctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, Peer{}, fmt.Errorf("tls: %w", err)
	}
	f, err := wire.ReadFrame(tc, 64<<10)
	if err != nil {
		return nil, Peer{}, fmt.Errorf("read hello: %w", err)
	}
	if f.Type != wire.TypeHello || f.IsResponse() {
		return nil, Peer{}, s.refuse(tc, f, wire.Errorf(wire.CodeBadRequest, "first frame must be hello, got %s", f.Type))
	}
	var h wire.Hello
	if err := wire.Unmarshal(f.Body, &h); err != nil {
		return nil, Peer{}, s.refuse(tc, f, wire.Errorf(wire.CodeBadRequest, "%v", err))
	}
	peer, err := s.authenticate(tc.ConnectionState(), &h)
	if err != nil {
		return nil, Peer{}, s.refuse(tc, f, err)
	}
	peer.Remote = nc.RemoteAddr().String()
	ok := wire.HelloOK{PeerID: s.cfg.Self, Overlay: s.cfg.Overlay, User: peer.User}
	body, err := wire.Marshal(&ok)
	if err != nil {
		return nil, Peer{}, err
	}
	if err := wire.WriteFrame(tc, &wire.Frame{Header: wire.Header{Type: wire.TypeHello, Flags: wire.FlagResponse, TxID: f.TxID}, Body: body}); err != nil {
		return nil, Peer{}, fmt.Errorf("write hello: %w", err)
	}
	tc.SetDeadline(time.Time{}) //nolint:errcheck
	return tc, peer, nil
}

// refuse answers the Hello with err (best effort) and returns err.
func (s *Server) refuse(tc *tls.Conn, req *wire.Frame, err error) error {
	var e *wire.Error
	if !errors.As(err, &e) {
		e = wire.Errorf(wire.CodeInternal, "%v", err)
	}
	if body, merr := wire.Marshal(e); merr == nil {
		wire.WriteFrame(tc, &wire.Frame{Header: wire.Header{Type: wire.TypeHello, Flags: wire.FlagResponse | wire.FlagError, TxID: req.TxID}, Body: body}) //nolint:errcheck // closing anyway
	}
	return err
}

func (s *Server) authenticate(cs tls.ConnectionState, h *wire.Hello) (Peer, error) {
	id, err := auth.PeerIDFromState(cs)
	if err != nil {
		return Peer{}, wire.Errorf(wire.CodeUnauthorized, "no identity certificate: %v", err)
	}
	if h.Overlay != s.cfg.Overlay {
		theirs := h.Overlay
		if len(theirs) > 255 { // a DNS name's limit: anything longer is noise for the log line
			theirs = theirs[:255] + "..."
		}
		return Peer{}, wire.Errorf(wire.CodeForbidden, "overlay %q is not %q", theirs, s.cfg.Overlay)
	}
	switch h.Role {
	case wire.RoleSuperPeer:
		if err := auth.PeerVerifiedByCA(cs, s.cfg.CA); err != nil {
			return Peer{}, wire.Errorf(wire.CodeUnauthorized, "super peer certificate: %v", err)
		}
		if err := auth.CheckMeshProof(s.cfg.Secret, cs, id, s.cfg.Self, h.Proof); err != nil {
			return Peer{}, wire.Errorf(wire.CodeUnauthorized, "mesh proof: %v", err)
		}
		return Peer{ID: id, Role: h.Role}, nil
	case wire.RoleClient, wire.RoleAgent:
		user, _, err := auth.Verify(s.cfg.Secret, h.Username, h.Password, s.cfg.Now())
		if err != nil {
			return Peer{}, wire.Errorf(wire.CodeUnauthorized, "credentials: %v", err)
		}
		return Peer{ID: id, User: user, Role: h.Role}, nil
	}
	return Peer{}, wire.Errorf(wire.CodeBadRequest, "unknown role %d", h.Role)
}

func refusal(err error) string {
	switch wire.CodeOf(err) {
	case wire.CodeUnauthorized:
		return "unauthorized"
	case wire.CodeForbidden:
		return "forbidden"
	case wire.CodeBadRequest:
		return "bad_hello"
	}
	return "handshake"
}

func closeReason(err error) string {
	switch {
	case errors.Is(err, wire.ErrTooLarge):
		return "too_large"
	case errors.Is(err, wire.ErrVersion):
		return "version"
	case errors.Is(err, wire.ErrMalformed), errors.Is(err, wire.ErrHopLimit):
		return "malformed"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "io"
}
