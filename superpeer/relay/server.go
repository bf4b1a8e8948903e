package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun"
	"github.com/pion/turn/v2"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/logx"
)

// relayGrace is how long Run waits, after pion's read loops ended, for
// pion to close the allocations before it closes the rest itself.
const relayGrace = 2 * time.Second

// Server is a super peer's STUN and TURN service. Create it with New, run
// it with Run; Allocations may be called at any time.
type Server struct {
	cfg     Config // read-only after New
	log     zerolog.Logger
	rlog    zerolog.Logger // sampled, for per-request refusals
	pionLF  logging.LoggerFactory
	quota   *quota
	metrics *metrics
	started atomic.Bool
	tcpIdle time.Duration // idle limit of a TCP connection without allocation; tests shorten it before Run

	// policy is set by Run before any socket is served and read-only
	// afterwards.
	policy *policy

	// loops counts pion read loops (one per gate) still running.
	loops sync.WaitGroup

	mu sync.Mutex // guards the fields below
	// relays holds the open relay sockets (= allocations).
	relays map[*relayConn]struct{}
	// drained, if set, is closed when relays becomes empty (shutdown).
	drained chan struct{}
	// tcp holds the gates of open TCP connections.
	tcp map[*gate]struct{}
	// closing is set once Run started shutting down: no new TCP gates.
	closing bool
	// udp holds the sockets reading the UDP port, PacketConn first; Run
	// sets it once, before it serves any.
	udp []net.PacketConn
}

// New validates cfg and registers the metrics. It does no I/O.
func New(cfg Config, log zerolog.Logger) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	log = log.With().Str("component", "relay").Logger()
	s := &Server{
		cfg:     cfg,
		log:     log,
		rlog:    log.Sample(&zerolog.BurstSampler{Burst: 20, Period: time.Second}),
		pionLF:  logx.Pion(log.Sample(&zerolog.BurstSampler{Burst: 20, Period: time.Second})),
		quota:   newQuota(cfg.MaxAllocations, cfg.MaxPerUser),
		tcpIdle: tcpIdle,
		relays:  make(map[*relayConn]struct{}),
		tcp:     make(map[*gate]struct{}),
	}
	if s.metrics, err = newMetrics(cfg.Registerer, s.Allocations); err != nil {
		return nil, fmt.Errorf("relay metrics: %w", err)
	}
	return s, nil
}

// Allocations returns the number of open allocations.
func (s *Server) Allocations() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.relays)
}

// Run serves STUN and TURN on the configured sockets until ctx ends, then
// closes the sockets and every allocation and returns. It returns an
// error if serving could not start or the TCP listener failed. pion's
// goroutines are not joinable; Run waits until each of them has stopped
// reading its socket and every relay socket is closed, which leaves them
// nothing but their return.
func (s *Server) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errRunTwice
	}
	s.policy = newPolicy(s.cfg.AllowLoopback, s.ownIPs(), s.denyPorts(), s.cfg.DenyAddrs)
	udp := []net.PacketConn{s.cfg.PacketConn}
	if n := s.cfg.UDPSockets - 1; n > 0 {
		more, err := siblings(s.cfg.PacketConn, n)
		if err != nil {
			s.log.Warn().Err(err).Msg("stun/turn udp served by one socket: relaying is capped near one core")
		}
		udp = append(udp, more...)
	}
	s.mu.Lock()
	s.udp = udp
	s.mu.Unlock()
	gates := make([]*gate, len(udp))
	for i, pc := range udp {
		setBuffers(pc)
		gates[i] = newGate(s, pc, "udp", s.loops.Done)
	}
	s.loops.Add(len(gates))
	if err := s.startTURN(gates...); err != nil {
		s.loops.Add(-len(gates))
		for _, pc := range udp {
			_ = pc.Close()
		}
		if s.cfg.Listener != nil {
			_ = s.cfg.Listener.Close()
		}
		return err
	}
	ev := s.log.Info().Str("udp", s.cfg.PacketConn.LocalAddr().String()).Int("udp_sockets", len(udp)).
		Str("relay_ip", s.cfg.RelayIP.String()).Int("min_port", s.cfg.MinPort).Int("max_port", s.cfg.MaxPort)
	if s.cfg.Listener != nil {
		ev = ev.Str("tcp", s.cfg.Listener.Addr().String())
	}
	ev.Msg("stun/turn serving")

	var acceptErr error
	var accepted chan struct{} // nil without a listener: never ready
	if s.cfg.Listener != nil {
		accepted = make(chan struct{})
		go func() {
			defer close(accepted)
			acceptErr = s.acceptLoop(ctx)
		}()
	}
	select {
	case <-ctx.Done():
	case <-accepted:
	}
	s.shutdown(accepted)
	return acceptErr
}

// startTURN starts a pion server reading gates, which share the realm,
// the credential handler, the policy and (within this pion server) the
// nonce key. pion gives each PacketConn its own read loop and allocation
// manager, and an allocation writes to its client through the socket its
// Allocate came in on; each gate is its own relay generator.
func (s *Server) startTURN(gates ...*gate) error {
	cfgs := make([]turn.PacketConnConfig, len(gates))
	for i, g := range gates {
		cfgs[i] = turn.PacketConnConfig{PacketConn: g, RelayAddressGenerator: g, PermissionHandler: s.permissionHandler}
	}
	_, err := turn.NewServer(turn.ServerConfig{
		Realm:             s.cfg.Realm,
		AuthHandler:       s.authHandler,
		LoggerFactory:     s.pionLF,
		PacketConnConfigs: cfgs,
	})
	if err != nil {
		return fmt.Errorf("start turn server on %s: %w", gates[0].LocalAddr(), err)
	}
	return nil
}

// sockBuffer is the kernel buffer asked for on every UDP socket the relay
// reads or writes (TESTING.md: the 208 KB default drops under load). The
// kernel caps it at net.core.rmem_max / wmem_max; it is a ceiling, not an
// allocation, so idle allocations cost nothing for it.
const sockBuffer = 4 << 20

// setBuffers enlarges pc's buffers, best effort.
func setBuffers(pc net.PacketConn) {
	if b, ok := pc.(interface{ SetReadBuffer(int) error }); ok {
		_ = b.SetReadBuffer(sockBuffer)
	}
	if b, ok := pc.(interface{ SetWriteBuffer(int) error }); ok {
		_ = b.SetWriteBuffer(sockBuffer)
	}
}

// acceptLoop serves TCP connections until the listener is closed.
func (s *Server) acceptLoop(ctx context.Context) error {
	backoff := 5 * time.Millisecond
	for {
		c, err := s.cfg.Listener.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("turn tcp listener: %w", err)
			}
			// EMFILE and friends: back off, as net/http does.
			s.rlog.Warn().Err(err).Dur("backoff", backoff).Msg("turn tcp accept failed")
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		s.serveTCP(c)
	}
}

// serveTCP gives one TCP connection its own pion server. pion's
// ListenerConfig would serve every connection with one shared relay
// generator from concurrent goroutines, so the generator could not tell
// which request (and user) it allocates for; and pion v2 keeps a TCP
// client's allocations after its connection is gone. With a server per
// connection, the one-goroutine-per-gate property holds and the
// allocations end with the connection (pion closes its allocation manager
// when the read loop ends), as RFC 6062 §3 and coturn do. The cost is a
// nonce key per connection.
func (s *Server) serveTCP(c net.Conn) {
	var g *gate
	g = newGate(s, turn.NewSTUNConn(c), "tcp", func() {
		s.mu.Lock()
		delete(s.tcp, g)
		s.mu.Unlock()
		_ = g.Close()
		s.loops.Done()
	})
	s.mu.Lock()
	if s.closing || len(s.tcp) >= s.maxTCP() {
		full := !s.closing
		s.mu.Unlock()
		_ = c.Close()
		if full {
			s.rlog.Warn().Str("remote_addr", c.RemoteAddr().String()).Int("connections", s.maxTCP()).
				Msg("turn tcp connection refused: too many")
		}
		return
	}
	s.tcp[g] = struct{}{}
	s.loops.Add(1)
	s.mu.Unlock()
	if err := s.startTURN(g); err != nil {
		s.log.Warn().Str("remote_addr", c.RemoteAddr().String()).Err(err).Msg("turn tcp connection not served")
		g.finish()
	}
}

// maxTCP caps concurrent TCP connections. Each can hold at most one
// allocation (one 5-tuple), so MaxAllocations of them plus some room for
// STUN-only clients is all a client population needs.
func (s *Server) maxTCP() int { return max(4096, s.cfg.MaxAllocations+1024) }

// shutdown closes every socket, waits for pion's read loops to end and
// for the allocations to close. accepted, if not nil, is closed when the
// accept loop has returned.
func (s *Server) shutdown(accepted <-chan struct{}) {
	if accepted != nil {
		_ = s.cfg.Listener.Close()
		<-accepted
	}
	s.mu.Lock()
	udp := s.udp
	s.mu.Unlock()
	for _, pc := range udp {
		_ = pc.Close()
	}
	s.mu.Lock()
	s.closing = true
	tcp := make([]*gate, 0, len(s.tcp))
	for g := range s.tcp {
		tcp = append(tcp, g)
	}
	s.mu.Unlock()
	for _, g := range tcp {
		_ = g.Close()
	}
	s.loops.Wait()

	// pion closes its allocations right after its read loop ends; wait
	// for that, then close what is left ourselves.
	s.mu.Lock()
	var drained chan struct{}
	if len(s.relays) > 0 {
		drained = make(chan struct{})
		s.drained = drained
	}
	s.mu.Unlock()
	if drained != nil {
		select {
		case <-drained:
		case <-time.After(relayGrace):
			s.mu.Lock()
			left := make([]*relayConn, 0, len(s.relays))
			for rc := range s.relays {
				left = append(left, rc)
			}
			s.mu.Unlock()
			s.log.Warn().Int("allocations", len(left)).Msg("closing allocations pion left open")
			for _, rc := range left {
				_ = rc.Close()
			}
		}
	}
	s.log.Info().Msg("stun/turn stopped")
}

// ownIPs lists this super peer's addresses for the deny list: RelayIP,
// RelayBind and the sockets' IPs, or every interface address when one of
// them is a wildcard.
func (s *Server) ownIPs() []netip.Addr {
	ips := []net.IP{s.cfg.RelayIP, net.ParseIP(s.cfg.RelayBind)}
	if ua, ok := s.cfg.PacketConn.LocalAddr().(*net.UDPAddr); ok {
		ips = append(ips, ua.IP)
	}
	if s.cfg.Listener != nil {
		if ta, ok := s.cfg.Listener.Addr().(*net.TCPAddr); ok {
			ips = append(ips, ta.IP)
		}
	}
	var out []netip.Addr
	wildcard := false
	for _, ip := range ips {
		if ip == nil || ip.IsUnspecified() {
			wildcard = true
			continue
		}
		out = append(out, ipOf(ip))
	}
	if wildcard {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			s.log.Warn().Err(err).Msg("interface addresses unknown: deny list covers the configured addresses only")
		}
		for _, a := range addrs {
			if in, ok := a.(*net.IPNet); ok {
				out = append(out, ipOf(in.IP))
			}
		}
	}
	return out
}

// denyPorts is DenyPorts plus the STUN/TURN ports.
func (s *Server) denyPorts() []int {
	ports := append([]int(nil), s.cfg.DenyPorts...)
	if ua, ok := s.cfg.PacketConn.LocalAddr().(*net.UDPAddr); ok {
		ports = append(ports, ua.Port)
	}
	if s.cfg.Listener != nil {
		if ta, ok := s.cfg.Listener.Addr().(*net.TCPAddr); ok {
			ports = append(ports, ta.Port)
		}
	}
	return ports
}

// key is the long-term key of a TURN-REST username:
// MD5(username ":" realm ":" password), the password being the username's
// HMAC under the overlay secret.
func (s *Server) key(username string) []byte {
	return turn.GenerateAuthKey(username, s.cfg.Realm, auth.Password(s.cfg.Secret, username))
}

// authenticate checks a request's credentials the way auth.Verify orders
// them: form, then the proof of the password (here MESSAGE-INTEGRITY,
// since TURN never sends the password), and only then expiry. It returns
// the user and the key to sign responses with.
func (s *Server) authenticate(m *stun.Message) (user string, key []byte, err error) {
	var un stun.Username
	if err := un.GetFrom(m); err != nil {
		return "", nil, fmt.Errorf("authenticate: %w", errNoUsername)
	}
	var realm stun.Realm
	if err := realm.GetFrom(m); err != nil || realm.String() != s.cfg.Realm {
		return "", nil, fmt.Errorf("authenticate: %w", errRealm)
	}
	username := un.String()
	expires, user, err := auth.ParseUsername(username)
	if err != nil {
		return "", nil, fmt.Errorf("authenticate: %w", err)
	}
	key = s.key(username)
	if err := stun.MessageIntegrity(key).Check(m); err != nil {
		return "", nil, fmt.Errorf("authenticate %q: %w", user, auth.ErrBadPassword)
	}
	if !s.cfg.Now().Before(expires) {
		return user, nil, fmt.Errorf("authenticate %q: %w at %s", user, auth.ErrExpired, expires.Format(time.RFC3339))
	}
	return user, key, nil
}

// authHandler is pion's AuthHandler. The gate has already authenticated
// every request that reaches pion with MESSAGE-INTEGRITY, so this only
// derives the key; it still refuses malformed and expired usernames in
// case a request got past the gate (pion would answer those 400).
func (s *Server) authHandler(username, realm string, _ net.Addr) ([]byte, bool) {
	expires, _, err := auth.ParseUsername(username)
	if err != nil || realm != s.cfg.Realm || !s.cfg.Now().Before(expires) {
		return nil, false
	}
	return s.key(username), true
}

// permissionHandler is pion's PermissionHandler, consulted for every
// CreatePermission and ChannelBind peer. The gate refuses forbidden peers
// before pion sees them, with a proper 403; this is the second line.
func (s *Server) permissionHandler(client net.Addr, peer net.IP) bool {
	reason := s.policy.checkIP(ipOf(peer))
	if reason == "" {
		return true
	}
	s.metrics.refused.WithLabelValues(reasonPermission).Inc()
	s.rlog.Info().Str("remote_addr", client.String()).Str("peer", peer.String()).Str("reason", reason).
		Msg("turn permission refused")
	return false
}
