// Package agent is the ordinary-peer agent's composition root
// (ARCHITECTURE.md §5–6): the uplink to a super peer, the registrar and
// SIP router for the endpoint's phone(s), and the glue between them
// (tunnel frames in and out, records re-stored after every failover).
// Logic lives in the subpackages.
package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/registrar"
	"github.com/p2psip/p2psip/common/siproute"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/ordinarypeer/fallback"
	"github.com/p2psip/p2psip/ordinarypeer/uplink"
)

// Files in the data directory.
const (
	IdentityFile = auth.IdentityFile
	CacheFile    = "superpeers.json"
)

// peerRecordTTL is how long a peer record lives; it is refreshed at half.
const peerRecordTTL = time.Hour

// Config is everything an agent needs; cmd/p2psip fills it.
type Config struct {
	Overlay     string
	Bootstrap   []string
	Credentials auth.Credentials
	// CredentialsFile, if set, is where Credentials came from: it is
	// re-read when it changes, and the TURN allocation moves to renewed
	// credentials before the old ones expire.
	CredentialsFile string
	// DataDir keeps the identity key and the super-peer cache.
	DataDir string
	// SIPListen is the local SIP address for the phone (UDP and TCP;
	// default 127.0.0.1:5060).
	SIPListen string
	// SIPAdvertise is the host phones reach the agent at, written into its
	// Record-Route (default: the SIPListen host; required when that is
	// 0.0.0.0 or ::, which a phone cannot send to).
	SIPAdvertise string
	// SIPUDP and SIPTCP, if set, are used instead of binding SIPListen.
	SIPUDP net.PacketConn
	SIPTCP net.Listener
	// Roots verify super peers; nil with Insecure set skips verification.
	Roots    *x509.CertPool
	Insecure bool
	// Keepalive overrides the super peer's Ping interval (0: its choice).
	Keepalive time.Duration
	// RelayAfter is the TURN fallback's bound: a request sent over the
	// overlay whose destination sends no response (a 100 Trying counts)
	// within it is re-sent through the relays (0: DefaultRelayAfter;
	// negative: only error frames trigger the fallback).
	RelayAfter time.Duration
	// Role is "ordinary" or "auto" (promotable).
	Role string
	// Promoter, with Role auto, is the node's would-be super peer
	// (superpeer/promoted); without it the agent is never promoted.
	Promoter Promoter
	// RepromoteAfter is how long the node stays ordinary after its own
	// super peer stopped on its own (0: DefaultRepromoteAfter).
	RepromoteAfter time.Duration
	// Admin serves /healthz and /v1/status ("" : off).
	Admin         string
	AdminListener net.Listener
}

// Agent is one ordinary peer.
type Agent struct {
	cfg    Config
	log    zerolog.Logger
	self   ids.PeerID
	up     *uplink.Uplink
	reg    *registrar.Registrar
	router *siproute.Router
	udp    net.PacketConn
	tcp    net.Listener
	user   string
	nat    natState
	// TURN fallback (fallback.go): the allocation, the router's Sender
	// wrapping the uplink, and the wake-up for a new attachment.
	fb        *fallback.Relay
	send      *sender
	relayKick chan struct{}
	// pubKick asks runPublish to store the peer record and the contacts
	// (capacity 1: kicks while it works coalesce into one more round).
	pubKick chan struct{}
	creds   *credSource // credentials for attaching and TURN, reloaded from the file

	// Promotion (promote.go): the identity key proves the node at its
	// advertised address in the dial-back test.
	key   ed25519.PrivateKey
	promo promotion
}

// New builds the agent and binds its local SIP sockets (so the router's
// Record-Route address is known); Run connects and serves.
func New(cfg Config, log zerolog.Logger) (*Agent, error) {
	if cfg.Overlay == "" {
		return nil, errors.New("agent: overlay name required")
	}
	if cfg.Roots == nil && !cfg.Insecure {
		return nil, errors.New("agent: a CA file is required to verify super peers (or insecure mode for development)")
	}
	if cfg.Credentials.Username == "" {
		return nil, errors.New("agent: credentials required")
	}
	if cfg.DataDir == "" {
		cfg.DataDir = "p2psip-agent"
	}
	if cfg.SIPListen == "" {
		cfg.SIPListen = "127.0.0.1:5060"
	}
	switch cfg.Role {
	case "", "ordinary", "auto":
	default:
		return nil, fmt.Errorf("agent: role %q: want ordinary or auto", cfg.Role)
	}
	_, user, err := auth.ParseUsername(cfg.Credentials.Username)
	if err != nil {
		return nil, fmt.Errorf("agent: credentials: %w", err)
	}
	key, self, err := auth.LoadNodeIdentity(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a := &Agent{cfg: cfg, self: self, user: user, key: key, promo: promotion{kick: make(chan struct{}, 1)},
		log: log.With().Str("peer_id", self.Short()).Str("role", "agent").Logger()}
	a.send, a.relayKick, a.pubKick = newSender(a), make(chan struct{}, 1), make(chan struct{}, 1)
	a.creds = &credSource{path: cfg.CredentialsFile, log: &a.log, cur: cfg.Credentials}
	a.fb = a.newRelay()
	a.up, err = uplink.New(uplink.Config{
		Overlay: cfg.Overlay, Bootstrap: cfg.Bootstrap, Credentials: cfg.Credentials, Renewed: a.creds.get, Key: key,
		Roots: cfg.Roots, CacheFile: filepath.Join(cfg.DataDir, CacheFile), Keepalive: cfg.Keepalive,
		Promotable: cfg.Role == "auto", Tunnel: a.tunnel, OnAttach: a.attached,
		// A super peer holding our TURN allocation may be the one gone.
		OnMembers: a.kickRelay,
	}, a.log)
	if err != nil {
		return nil, err
	}
	if a.udp, a.tcp, err = a.listen(); err != nil {
		return nil, err
	}
	host, portStr, _ := net.SplitHostPort(tcpOrUDPAddr(a.udp, a.tcp))
	port, _ := strconv.Atoi(portStr)
	if cfg.SIPAdvertise != "" {
		host = cfg.SIPAdvertise
	} else if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		a.closeSockets()
		return nil, fmt.Errorf("agent: --sip-listen %s is a wildcard: give the address phones reach (--sip-advertise)", a.SIPAddr())
	}
	a.reg, err = registrar.New(registrar.Config{
		Self: a.self, User: a.user, Overlay: cfg.Overlay, Store: store{a}, Attachment: a.attachment,
		Log: a.log,
	})
	if err == nil {
		a.router, err = siproute.New(siproute.Config{
			Self: a.self, Overlay: cfg.Overlay, UserAgent: "p2psip-agent",
			Locator: locator{a}, Sender: a.send, Local: a.reg, // a.send: uplink + TURN fallback
			RecordRouteHost: host, RecordRoutePort: port, Register: a.reg.HandleRegister, Log: a.log,
		})
	}
	if err != nil {
		a.closeSockets()
		return nil, err
	}
	return a, nil
}

func (a *Agent) closeSockets() {
	if a.udp != nil {
		a.udp.Close()
	}
	if a.tcp != nil {
		a.tcp.Close()
	}
}

// SIPAddr is the local SIP address phones register at.
func (a *Agent) SIPAddr() string { return tcpOrUDPAddr(a.udp, a.tcp) }

// ID is the agent's Peer-ID.
func (a *Agent) ID() ids.PeerID { return a.self }

// Uplink exposes the connection (tests, status).
func (a *Agent) Uplink() *uplink.Uplink { return a.up }

// Router exposes SIP routing statistics (tests, status).
func (a *Agent) Router() *siproute.Router { return a.router }

// Registrar exposes the phone bindings (tests, status).
func (a *Agent) Registrar() *registrar.Registrar { return a.reg }

// Run serves until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.up.Run(ctx) })
	g.Go(func() error { return a.reg.Run(ctx) })
	g.Go(func() error { return a.router.Serve(ctx, a.udp, a.tcp) })
	g.Go(func() error { return a.refreshPeerRecord(ctx) })
	g.Go(func() error { return a.runPublish(ctx) })
	a.promo.startd = time.Now()
	if a.cfg.Role == "auto" && a.cfg.Promoter != nil {
		g.Go(func() error { return a.cfg.Promoter.Run(ctx, a.key) })
	}
	g.Go(func() error { return a.runPromotion(ctx) })
	g.Go(func() error { return a.runRelay(ctx) })         // TURN fallback allocation
	g.Go(func() error { return a.send.runTimeouts(ctx) }) // and its timeout trigger
	if a.cfg.Admin != "" || a.cfg.AdminListener != nil {
		g.Go(func() error { return a.serveAdmin(ctx) })
	}
	a.log.Info().Str("sip", a.SIPAddr()).Str("user", a.user).Strs("bootstrap", a.cfg.Bootstrap).Msg("agent starting")
	return g.Wait()
}

func (a *Agent) listen() (net.PacketConn, net.Listener, error) {
	udp, tcp := a.cfg.SIPUDP, a.cfg.SIPTCP
	if udp == nil && tcp == nil {
		_, port, _ := net.SplitHostPort(a.cfg.SIPListen)
		// With port 0 the UDP port is the kernel's pick, and a TCP socket
		// may hold the same number: pick again rather than fail.
		for try := 0; ; try++ {
			var err error
			if udp, err = net.ListenPacket("udp", a.cfg.SIPListen); err != nil {
				return nil, nil, fmt.Errorf("agent: sip udp: %w", err)
			}
			if tcp, err = net.Listen("tcp", udp.LocalAddr().String()); err != nil {
				udp.Close()
				if port == "0" && errors.Is(err, syscall.EADDRINUSE) && try < 20 {
					continue
				}
				return nil, nil, fmt.Errorf("agent: sip tcp: %w", err)
			}
			break
		}
	}
	if uc, ok := udp.(*net.UDPConn); ok {
		// The default 208 KB buffer drops bursts (notes/TESTING.md).
		uc.SetReadBuffer(4 << 20)  //nolint:errcheck // best effort
		uc.SetWriteBuffer(4 << 20) //nolint:errcheck
	}
	return udp, tcp, nil
}

func tcpOrUDPAddr(udp net.PacketConn, tcp net.Listener) string {
	if udp != nil {
		return udp.LocalAddr().String()
	}
	return tcp.Addr().String()
}

// tunnel feeds inbound tunnel frames to the SIP router. Error frames mean
// the destination could not be reached: its virtual connection is closed
// so pending transactions fail fast instead of timing out.
func (a *Agent) tunnel(f *wire.Frame) {
	if f.Flags&wire.FlagError != 0 {
		var e wire.Error
		wire.Unmarshal(f.Body, &e) //nolint:errcheck // the reason is only logged
		a.log.Info().Str("peer_id", f.Src.Short()).Str("reason", e.Reason).Msg("tunnel destination unreachable")
		// TURN fallback: the failed payload is re-sent through the relays
		// and the transaction goes on.
		if a.send.failed(f.Src, f.TxID) {
			return
		}
		a.router.PeerGone(f.Src)
		return
	}
	// The overlay path from f.Src works: stop sending to it through the
	// relays (TURN fallback).
	a.send.unstick(f.Src)
	if a.send.inbound(f.Src, f.Body) { // TURN fallback: answers, duplicates
		a.router.Deliver(f.Src, f.Via, f.Hops, f.Body)
	}
}

func (a *Agent) attachment() registrar.Attachment {
	att, _ := a.up.Attachment()
	// Relay: the TURN fallback's relayed address, stamped into contacts.
	return registrar.Attachment{SP: att.SP, SPAddr: att.SPAddr, Relay: a.fb.Addr()}
}

// attached re-stores the peer record and every phone contact with the new
// attachment, so routing to this agent works at once after a failover.
func (a *Agent) attached(ctx context.Context, att uplink.Attachment) {
	a.kickRelay() // the allocation must not sit on the new attachment
	// Routing first: every millisecond the overlay still names the old
	// super peer, calls to this phone fail.
	a.kickPublish()
	if att.Reattach > 0 {
		a.log.Info().Dur("reattach", att.Reattach).Str("sp_id", att.SP.Short()).Msg("failover done")
	}
	// NAT discovery may wait seconds on a STUN server that just died (the
	// alternates still list it until the mesh notices); its result only
	// refines the peer record, so it runs last.
	if a.discoverNAT(ctx, att) != nil {
		a.kickPublish()
	}
	a.kickPromotion() // role auto: ask with the addresses just learnt
}

// publishFor bounds runPublish's retries; past it the periodic refresh and
// the phones' next REGISTERs are left to repair the records.
const publishFor = 2 * time.Minute

// kickPublish asks runPublish for a round; it never blocks.
func (a *Agent) kickPublish() {
	select {
	case a.pubKick <- struct{}{}:
	default:
	}
}

// runPublish stores the peer record and re-stores the phones' contacts
// with the current attachment and relayed address whenever kicked (an
// attachment, a new relayed address, NAT discovery), retrying (200 ms
// doubling to 5 s, for up to publishFor) while the overlay refuses: a
// write fails when no write quorum of a record's replicas is reachable,
// e.g. when they died with our super peer and the mesh has not declared
// them dead yet. The agent holds the truth about its phones, so it must
// not give up after one try: until the records are stored the overlay
// names the old super peer or has no contact at all, and calls to the
// phones fail. One goroutine does it all, so nothing else (the TURN
// allocation's upkeep) waits on a write the overlay refuses.
func (a *Agent) runPublish(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.pubKick:
		}
		backoff := 200 * time.Millisecond
		until := time.Now().Add(publishFor)
		for tries := 1; ; tries++ {
			err := errors.Join(a.storePeerRecord(ctx), a.reg.Restore(ctx))
			if err == nil {
				if tries > 1 {
					a.log.Info().Int("tries", tries).Msg("peer record and contacts stored")
				}
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			if time.Now().After(until) {
				a.log.Error().Err(err).Int("tries", tries).Msg("peer record and contacts not stored; giving up until the next refresh")
				break
			}
			a.log.Warn().Err(err).Dur("retry_in", backoff).Msg("peer record and contacts not stored")
			select {
			case <-time.After(backoff):
			case <-a.pubKick: // newer state to store: now
			case <-ctx.Done():
				return nil
			}
			backoff = min(2*backoff, 5*time.Second)
		}
	}
}

func (a *Agent) storePeerRecord(ctx context.Context) error {
	att, ok := a.up.Attachment()
	if !ok {
		return uplink.ErrNotAttached
	}
	s, err := a.up.Session(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	rec := &record.Record{Kind: record.KindPeer, Name: a.self.String(), Entries: []record.Entry{{
		Key: record.PeerKey, Version: uint64(now.UnixNano()), Expires: now.Add(peerRecordTTL).Unix(),
		Peer: a.peerInfo(att),
	}}}
	_, err = s.Put(ctx, rec)
	return err
}

func (a *Agent) refreshPeerRecord(ctx context.Context) error {
	t := time.NewTicker(peerRecordTTL / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := a.storePeerRecord(ctx); err != nil {
				a.log.Warn().Err(err).Msg("refresh peer record")
			}
		}
	}
}

// store adapts the uplink session to the registrar's Store.
type store struct{ a *Agent }

func (s store) Put(ctx context.Context, _ string, rec *record.Record) error {
	sess, err := s.a.up.Session(ctx)
	if err != nil {
		return err
	}
	_, err = sess.Put(ctx, rec)
	return err
}

// PutState writes and returns the overlay's state after the write (nil
// from a super peer that does not echo it: the registrar then reads).
func (s store) PutState(ctx context.Context, _ string, rec *record.Record) (*record.Record, error) {
	sess, err := s.a.up.Session(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := sess.PutState(ctx, rec)
	if err != nil {
		return nil, err
	}
	return resp.Record, nil
}

func (s store) Get(ctx context.Context, aor string) (*record.Record, error) {
	sess, err := s.a.up.Session(ctx)
	if err != nil {
		return nil, err
	}
	return sess.Get(ctx, record.KindLocation, aor)
}

// getOne is the routing read (client.Session.GetOne).
func (s store) getOne(ctx context.Context, aor string) (*record.Record, error) {
	sess, err := s.a.up.Session(ctx)
	if err != nil {
		return nil, err
	}
	return sess.GetOne(ctx, record.KindLocation, aor)
}

// locator adapts the uplink session to the router's Locator.
type locator struct{ a *Agent }

func (l locator) Lookup(ctx context.Context, aor string) ([]record.Contact, error) {
	rec, err := store(l).getOne(ctx, aor)
	if errors.Is(err, context.DeadlineExceeded) {
		// Our super peer did not answer: it may have died silently, and
		// every call fails until the uplink notices. Ask it now.
		l.a.up.Suspect()
	}
	cs, err := siproute.Contacts(aor, rec, err)
	l.a.send.learnContacts(cs) // relayed addresses for the TURN fallback
	return cs, err
}

// peerInfo is this agent's peer record payload: where it is attached and
// what its NAT looks like.
func (a *Agent) peerInfo(att uplink.Attachment) *record.PeerInfo {
	p := &record.PeerInfo{PeerID: a.self, SP: att.SP, SPAddr: att.SPAddr, Relay: a.fb.Addr()}
	if res, _ := a.nat.get(); res != nil {
		p.Reflexive = res.Reflexive
		p.NAT = res.Mapping.String()
		if !res.Behind {
			p.NAT = "none"
		}
	}
	return p
}
