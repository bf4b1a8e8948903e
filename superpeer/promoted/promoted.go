// Package promoted is the super-peer half of a node started with
// `p2psip peer --role auto` (ARCHITECTURE.md §5.6). Before promotion it
// holds the would-be super peer's peer-protocol socket and answers the
// overlay's dial-back tests there, proving with the agent's identity key
// that the node asking for promotion is the one listening; once the
// overlay grants promotion it runs a superpeer.Node in-process on that
// same socket, which joins the mesh and takes its share of records. The
// agent (ordinarypeer/agent) drives it through a small interface, so the
// ordinary-peer side never imports the super-peer side.
//
// The super peer has an identity of its own (DataDir), not the agent's:
// the agent attaches to its own super peer afterwards, and one Peer-ID
// cannot be both an attached agent and the super peer routing to it.
package promoted

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/superpeer"
)

// Config configures the would-be super peer.
type Config struct {
	// Listen is its peer-protocol address, where dial-back tests connect
	// (default 0.0.0.0:6084).
	Listen string
	// Listener, if set, is used instead of binding Listen (tests). Run
	// closes it.
	Listener net.Listener
	// Advertise is the IP others reach it at ("": the IP of the agent's
	// uplink, which promotion requires to be its public address anyway).
	Advertise string
	// DataDir keeps the super peer's own identity key and CA file (required).
	DataDir string
	// Template holds the super peer's other settings (ports, admin,
	// tuning). The overlay secret, the members to join, the replica
	// settings and the promotion policy come from the grant; Bind,
	// Advertise, DataDir and the peer listener from this Config.
	Template superpeer.Config
	// LeaveTimeout bounds the graceful leave when Run's context ends
	// (default 5s).
	LeaveTimeout time.Duration
	// ReadyTimeout bounds joining the mesh after the grant (default 30s).
	ReadyTimeout time.Duration
}

// Node is the would-be (then actual) super peer of a promotable agent.
type Node struct {
	cfg  Config
	log  zerolog.Logger
	base zerolog.Logger // for the super peer, which adds its own fields
	ln   net.Listener
	// left is closed once Run has made the super peer leave (or there was
	// none): then it may be stopped.
	left chan struct{}

	mu      sync.Mutex // guards the fields below
	runCtx  context.Context
	handoff *chanListener // the last super peer's listener (a new one per promotion; nil before)
	sp      *superpeer.Node
	spEnded chan error         // receives once when sp stops on its own
	spStop  context.CancelFunc // stops sp (StopForTest)
	// gossipPort is the first super peer's gossip port, kept for the next:
	// the mesh still lists a member that stopped, and memberlist refuses it
	// back from another address for a while (DeadNodeReclaimTime).
	gossipPort int
	stopped    bool
	wg         sync.WaitGroup // probes and the super peer's Run
}

// New binds the peer-protocol listener (its port goes into the promotion
// request) and checks cfg; Run serves it.
func New(cfg Config, log zerolog.Logger) (*Node, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("promoted: DataDir is required")
	}
	if cfg.Template.Overlay == "" {
		return nil, errors.New("promoted: Template.Overlay is required")
	}
	if cfg.Listen == "" {
		cfg.Listen = "0.0.0.0:6084"
	}
	if cfg.Advertise != "" {
		if ip := net.ParseIP(cfg.Advertise); ip == nil || ip.IsUnspecified() {
			return nil, fmt.Errorf("promoted: advertise %q is not a usable IP address", cfg.Advertise)
		}
	}
	if cfg.LeaveTimeout <= 0 {
		cfg.LeaveTimeout = 5 * time.Second
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 30 * time.Second
	}
	ln := cfg.Listener
	if ln == nil {
		host, _, err := net.SplitHostPort(cfg.Listen)
		ip := net.ParseIP(host)
		if err != nil || ip == nil {
			return nil, fmt.Errorf("promoted: listen %q: want IP:port", cfg.Listen)
		}
		// "tcp4" for an IPv4 address: Go would turn 0.0.0.0 into a
		// dual-stack [::] socket, and the super peer binds its other
		// services on the same address, some of which want IPv4.
		network := "tcp6"
		if ip.To4() != nil {
			network = "tcp4"
		}
		if ln, err = net.Listen(network, cfg.Listen); err != nil {
			return nil, fmt.Errorf("promoted: peer protocol listener: %w", err)
		}
	}
	return &Node{cfg: cfg, log: logx.Component(log, "promoted"), base: log, ln: ln, left: make(chan struct{})}, nil
}

// PeerAddr is the advertised peer-protocol address, given the IP of the
// agent's uplink (used when Advertise is empty).
func (n *Node) PeerAddr(localIP string) string {
	_, port, _ := net.SplitHostPort(n.ln.Addr().String())
	host := n.cfg.Advertise
	if host == "" {
		host = localIP
	}
	return net.JoinHostPort(host, port)
}

// SuperPeer is the running super peer (nil before promotion).
func (n *Node) SuperPeer() *superpeer.Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sp
}

// Run answers dial-back tests with key (the agent's identity) until the
// node is promoted, then hands connections to the super peer; when ctx
// ends the super peer leaves the mesh gracefully and everything stops.
func (n *Node) Run(ctx context.Context, key ed25519.PrivateKey) error {
	cert, err := auth.SelfSignedCertificate(key, time.Now())
	if err != nil {
		n.ln.Close()
		return fmt.Errorf("promoted: certificate: %w", err)
	}
	self := ids.PeerIDFromKey(key.Public().(ed25519.PublicKey))
	tlsConf := auth.ServerTLSConfig(cert)
	n.mu.Lock()
	n.runCtx = ctx
	n.mu.Unlock()
	go func() {
		<-ctx.Done()
		n.ln.Close()
	}()
	// A dial-back test is three round trips; a few at once is plenty, and
	// the bound keeps a flood of connections from costing more.
	sem := make(chan struct{}, 16)
	for {
		nc, err := n.ln.Accept()
		if err != nil {
			var ne net.Error
			if ctx.Err() == nil && errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if ctx.Err() == nil {
				n.log.Error().Err(err).Msg("accept")
			}
			break
		}
		if h := n.promotedListener(); h != nil {
			h.push(nc)
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			nc.Close()
			continue
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			defer func() { <-sem }()
			n.answerProbe(nc, tlsConf, self)
		}()
	}
	n.stop()
	n.wg.Wait()
	n.mu.Lock()
	if n.handoff != nil {
		n.handoff.Close()
	}
	n.mu.Unlock()
	return nil
}

// promotedListener is the running super peer's listener, nil before
// promotion (or after the super peer stopped on its own).
func (n *Node) promotedListener() *chanListener {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.sp == nil {
		return nil
	}
	return n.handoff
}

// stop makes the super peer, if any, leave the mesh; Promote's goroutine
// then stops it.
func (n *Node) stop() {
	defer close(n.left)
	n.mu.Lock()
	sp := n.sp
	n.stopped = true
	n.mu.Unlock()
	if sp == nil {
		return
	}
	select {
	case <-sp.Ready():
	default:
		return // never joined: nothing to hand off
	}
	if err := sp.Leave(n.cfg.LeaveTimeout); err != nil {
		n.log.Warn().Err(err).Msg("leave")
	}
}

// answerProbe serves one connection before promotion: TLS with the
// agent's key, then a HelloOK to a dial-back test; anything else is told
// this is not a super peer (yet).
func (n *Node) answerProbe(nc net.Conn, conf *tls.Config, self ids.PeerID) {
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck // a failed deadline shows as a failed read
	tc := tls.Server(nc, conf)
	if err := tc.Handshake(); err != nil {
		n.log.Debug().Err(err).Str("remote_addr", nc.RemoteAddr().String()).Msg("probe handshake")
		return
	}
	f, err := wire.ReadFrame(tc, 4<<10)
	if err != nil || f.Type != wire.TypeHello || f.IsResponse() {
		return
	}
	var h wire.Hello
	reply := &wire.Frame{Header: wire.Header{Type: wire.TypeHello, Flags: wire.FlagResponse, TxID: f.TxID}}
	var body any = &wire.HelloOK{PeerID: self, Overlay: n.cfg.Template.Overlay}
	if err := wire.Unmarshal(f.Body, &h); err != nil || h.Role != wire.RoleProbe {
		reply.Flags |= wire.FlagError
		body = wire.Errorf(wire.CodeUnavailable, "not a super peer (yet): this node only answers dial-back tests")
	}
	if reply.Body, err = wire.Marshal(body); err == nil {
		wire.WriteFrame(tc, reply) //nolint:errcheck // closing anyway
	}
	n.log.Debug().Str("remote_addr", nc.RemoteAddr().String()).Str("role", h.Role.String()).Msg("dial-back test answered")
}

// Promote starts the super peer with the overlay's grant on the
// peer-protocol socket; peerAddr is the address the node advertised. It
// returns the super peer's description once it has joined the mesh, and a
// channel that receives once, with the reason, if the super peer stops on
// its own rather than through Run's context: the node is then ordinary
// again and a later grant starts a new super peer (same identity).
func (n *Node) Promote(ctx context.Context, peerAddr string, g *wire.PromoteGrant) (wire.SuperPeerInfo, <-chan error, error) {
	if g == nil || len(g.Secret) == 0 || len(g.Join) == 0 {
		return wire.SuperPeerInfo{}, nil, errors.New("promoted: the grant lacks the secret or the members to join")
	}
	advHost, _, err := net.SplitHostPort(peerAddr)
	if err != nil {
		return wire.SuperPeerInfo{}, nil, fmt.Errorf("promoted: advertised address %q: %w", peerAddr, err)
	}
	n.mu.Lock()
	if n.sp != nil {
		sp, ended := n.sp, n.spEnded
		n.mu.Unlock()
		return info(sp), ended, nil
	}
	if n.runCtx == nil || n.stopped {
		n.mu.Unlock()
		return wire.SuperPeerInfo{}, nil, errors.New("promoted: not running")
	}
	// A fresh listener per promotion: the one of a super peer that stopped
	// on its own is closed.
	handoff := newChanListener(n.ln.Addr())
	cfg := n.cfg.Template
	bind, _, _ := net.SplitHostPort(n.ln.Addr().String())
	cfg.Bind, cfg.Advertise, cfg.DataDir, cfg.PeerListener = bind, advHost, n.cfg.DataDir, handoff
	cfg.Secret, cfg.SecretFile, cfg.Join = g.Secret, "", g.Join
	cfg.Replicas, cfg.WriteQuorum = g.Replicas, g.WriteQuorum
	cfg.Promotion, cfg.PromotionMinUptime, cfg.PromotionRatio = g.Promotion, time.Duration(g.MinUptimeS)*time.Second, g.Ratio
	if n.gossipPort > 0 {
		cfg.GossipPort = n.gossipPort
	}
	sp, err := superpeer.New(cfg, n.base)
	if err != nil {
		n.mu.Unlock()
		return wire.SuperPeerInfo{}, nil, fmt.Errorf("promoted: %w", err)
	}
	// The super peer runs on a context of its own so that Run can make it
	// leave the mesh before it stops (stop, then cancel here).
	spCtx, cancel := context.WithCancel(context.Background())
	ended := make(chan error, 1)
	n.sp, n.spEnded, n.spStop, n.handoff = sp, ended, cancel, handoff
	done := make(chan error, 1)
	n.wg.Add(1)
	n.mu.Unlock()

	go func() {
		defer n.wg.Done()
		errc := make(chan error, 1)
		go func() { errc <- sp.Run(spCtx) }()
		select {
		case err := <-errc:
			// The super peer stopped on its own: stop feeding it
			// connections (they are closed from now on) and forget it, so
			// that the node is back to answering dial-back tests and a
			// later grant starts a new one; the agent learns from ended.
			if err == nil {
				err = errors.New("stopped")
			}
			n.log.Error().Err(err).Msg("promoted super peer stopped on its own; the node is ordinary again")
			handoff.Close()
			cancel()
			n.mu.Lock()
			if n.sp == sp {
				n.sp, n.spEnded, n.spStop = nil, nil, nil
			}
			n.mu.Unlock()
			done <- err
			ended <- err
			return
		case <-n.left:
		}
		cancel()
		done <- <-errc
	}()
	t := time.NewTimer(n.cfg.ReadyTimeout)
	defer t.Stop()
	select {
	case <-sp.Ready():
	case err := <-done:
		done <- err
		return wire.SuperPeerInfo{}, nil, fmt.Errorf("promoted: super peer stopped before joining the mesh: %w", err)
	case <-t.C:
		return wire.SuperPeerInfo{}, nil, fmt.Errorf("promoted: not joined the mesh within %s", n.cfg.ReadyTimeout)
	case <-ctx.Done():
		return wire.SuperPeerInfo{}, nil, ctx.Err()
	}
	if _, p, err := net.SplitHostPort(sp.GossipAddr()); err == nil {
		n.mu.Lock()
		n.gossipPort, _ = strconv.Atoi(p)
		n.mu.Unlock()
	}
	n.log.Info().Str("sp_id", sp.ID().Short()).Str("peer_addr", sp.PeerAddr()).Int("members", len(sp.Mesh().View().Members)).Msg("promoted: super peer running")
	return info(sp), ended, nil
}

// StopForTest stops the running super peer as if it had failed on its own
// (its Run returns), not through Run's context: what a fatal error in one
// of its servers does.
func (n *Node) StopForTest() {
	n.mu.Lock()
	stop := n.spStop
	n.mu.Unlock()
	if stop != nil {
		stop()
	}
}

func info(sp *superpeer.Node) wire.SuperPeerInfo {
	return wire.SuperPeerInfo{PeerID: sp.ID(), PeerAddr: sp.PeerAddr(), TURNAddr: sp.TURNAddr()}
}
