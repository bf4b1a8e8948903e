package relay

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun"

	"github.com/p2psip/p2psip/common/auth"
)

// A gate stands between one client-facing socket (one of the sockets
// reading the UDP port, or one accepted TCP connection framed by
// turn.NewSTUNConn) and the pion turn.Server serving it. pion reads the socket only through the gate's
// ReadFrom, and it allocates relays only through the gate, which is also
// that socket's RelayAddressGenerator.
//
// Why a gate: pion/turn v2 has no hook for what we need to answer.
//
//   - 401 for bad credentials. pion's authenticateRequest answers 401
//     only to a request without MESSAGE-INTEGRITY (the challenge, with a
//     fresh NONCE and REALM); when the AuthHandler says no or the
//     integrity check fails it answers 400. RFC 5389 §10.2.2 wants 401,
//     with REALM and NONCE, in both cases. The gate checks USERNAME,
//     REALM, MESSAGE-INTEGRITY and expiry itself before pion sees the
//     request; if they fail it removes MESSAGE-INTEGRITY (and FINGERPRINT,
//     which follows it) from the request and hands that to pion. pion then
//     takes the unauthenticated path and answers exactly the RFC's 401: a
//     challenge carrying a NONCE from its own nonce hash (which we could
//     not mint ourselves, as it is internal) and our REALM. Rewriting the
//     outbound 400 instead would not work: a 400 does not say whether it
//     was about credentials or, say, a missing REQUESTED-TRANSPORT.
//   - 486 for quotas. pion's step 7 ("MAY ... 486") is a comment, and a
//     RelayAddressGenerator error becomes 508. So the gate answers 486
//     itself, with MESSAGE-INTEGRITY under the user's key, and pion never
//     sees that request.
//   - 403 for forbidden peers. pion answers a refused CreatePermission
//     with an error response without ERROR-CODE, and a refused ChannelBind
//     with 401 (which a client reads as "bad password"), and its
//     PermissionHandler cannot see ports. The gate answers 403 (443 for a
//     non-IPv4 peer) itself; the PermissionHandler stays as a second line.
//
// Quota accounting uses a property of pion's server that its code shows
// (Server.readLoop): each socket has one read goroutine, which handles a
// request completely, including the generator call that binds the relay
// and the response, before it reads the next. So the gate admits an
// Allocate by reserving a quota unit (pending); the relay socket the
// generator binds for it takes that unit over and holds it until Close;
// and when pion is done with the request (settle: when it writes the
// response to that transaction through the gate, or at the latest at the
// next ReadFrom) a unit nobody took goes back. A socket closed while its
// request is still pending (pion's EVEN-PORT probes) hands the unit back
// to the reservation. A user is never counted twice, and the count is
// exact by the time the client reads the response. A TCP Listener gets
// one turn.Server per accepted connection (see Server.serveTCP), so the
// one-goroutine-per-gate property holds for TCP too.
//
// pion has no allocation-closed event either, but it closes the relay
// socket whenever an allocation ends (expiry, Refresh with lifetime 0,
// server close, relay read error), so relayConn.Close is that event.
type gate struct {
	net.PacketConn // the client-facing socket (WriteTo is wrapped below)

	s      *Server
	proto  string // "udp" or "tcp", for logs
	onDone func() // called once when pion's read loop on this gate ends

	// scratch is the decode buffer; only the read goroutine uses it.
	scratch []byte

	// pending is the Allocate being handled, from admit to settle. It is
	// an atomic pointer so that WriteTo's check costs no lock; it and
	// its unit change under mu.
	pending atomic.Pointer[pending]

	mu sync.Mutex // guards the fields below
	// clients counts open relays per client address on this socket
	// (pion allows one per 5-tuple).
	clients map[string]int
	done    bool
}

// pending is an admitted Allocate, holding a reserved quota unit while
// pion handles it.
type pending struct {
	user   string
	client string
	txid   [stun.TransactionIDSize]byte
	free   bool // the reserved unit is not held by a relay socket; guarded by gate.mu
}

func newGate(s *Server, pc net.PacketConn, proto string, onDone func()) *gate {
	return &gate{PacketConn: pc, s: s, proto: proto, onDone: onDone, clients: make(map[string]int)}
}

// ReadFrom is pion's read loop's view of the socket: requests the gate
// answered itself are consumed here, rewritten ones are returned
// rewritten. An error ends pion's loop, so it marks the gate done.
func (g *gate) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		g.settle(nil)
		if g.proto == "tcp" {
			_ = g.PacketConn.SetReadDeadline(time.Now().Add(g.idleLimit()))
		}
		n, from, err := g.PacketConn.ReadFrom(p)
		if err != nil {
			g.finish()
			return n, from, err
		}
		if n, pass := g.screen(p, n, from); pass {
			return n, from, nil
		}
	}
}

// A TCP connection that sends nothing for tcpIdle is closed, or for
// tcpIdleAllocated while it holds an allocation: an allocation lives at
// most an hour without a Refresh (pion caps LIFETIME there), so by then
// it is gone anyway. Idle connections must not pin file descriptors.
const (
	tcpIdle          = time.Minute
	tcpIdleAllocated = 65 * time.Minute
)

func (g *gate) idleLimit() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.clients) > 0 {
		return tcpIdleAllocated
	}
	return g.s.tcpIdle
}

// authenticated lists the requests pion authenticates (internal/server).
var authenticated = map[uint16]bool{
	stun.NewType(stun.MethodAllocate, stun.ClassRequest).Value():         true,
	stun.NewType(stun.MethodRefresh, stun.ClassRequest).Value():          true,
	stun.NewType(stun.MethodCreatePermission, stun.ClassRequest).Value(): true,
	stun.NewType(stun.MethodChannelBind, stun.ClassRequest).Value():      true,
}

// screen inspects one datagram (p[:n]) and returns the length to hand to
// pion and whether to hand it over at all. ChannelData, indications and
// Binding requests pass without decoding.
func (g *gate) screen(p []byte, n int, from net.Addr) (int, bool) {
	b := p[:n]
	if !stun.IsMessage(b) || !authenticated[binary.BigEndian.Uint16(b[0:2])] {
		return n, true
	}
	g.scratch = append(g.scratch[:0], b...)
	m := &stun.Message{Raw: g.scratch}
	if err := m.Decode(); err != nil || !m.Contains(stun.AttrMessageIntegrity) {
		// Malformed: pion answers or drops it. No integrity: pion
		// answers the 401 challenge, the normal first round trip.
		return n, true
	}
	user, key, err := g.s.authenticate(m)
	if err != nil {
		g.s.metrics.refused.WithLabelValues(reasonAuth).Inc()
		g.s.rlog.Info().Str("remote_addr", from.String()).Str("proto", g.proto).
			Str("method", m.Type.Method.String()).Str("reason", authReason(err)).Err(err).
			Msg("turn request refused: 401")
		return stripIntegrity(m, p), true
	}
	switch m.Type.Method {
	case stun.MethodAllocate:
		return n, g.admit(m, from, user, key)
	case stun.MethodCreatePermission, stun.MethodChannelBind:
		return n, g.checkPeers(m, from, user, key)
	}
	return n, true
}

// authReason names an authentication failure for the log.
func authReason(err error) string {
	switch {
	case errors.Is(err, auth.ErrExpired):
		return "expired"
	case errors.Is(err, auth.ErrBadPassword):
		return "bad-password"
	case errors.Is(err, errRealm):
		return "realm"
	}
	return "malformed"
}

// stripIntegrity writes m without MESSAGE-INTEGRITY and FINGERPRINT into
// p (it is shorter than the original, so it fits) and returns its length.
// RFC 5389 §15.4: attributes after MESSAGE-INTEGRITY other than
// FINGERPRINT are ignored anyway.
func stripIntegrity(m *stun.Message, p []byte) int {
	out := &stun.Message{Type: m.Type, TransactionID: m.TransactionID}
	out.WriteHeader()
	for _, a := range m.Attributes {
		if a.Type == stun.AttrMessageIntegrity || a.Type == stun.AttrFingerprint {
			continue
		}
		out.Add(a.Type, a.Value)
	}
	return copy(p, out.Raw)
}

// admit decides an authenticated Allocate: quota or 486.
func (g *gate) admit(m *stun.Message, from net.Addr, user string, key []byte) bool {
	client := from.String()
	g.mu.Lock()
	has := g.clients[client] > 0
	g.mu.Unlock()
	if has {
		// This 5-tuple has its allocation (and holds its unit): pion
		// answers a retransmission from its cache, anything else 437.
		return true
	}
	if err := g.s.quota.reserve(user); err != nil {
		g.s.metrics.refused.WithLabelValues(reasonQuota).Inc()
		g.s.rlog.Info().Str("user", user).Str("remote_addr", client).Str("proto", g.proto).Err(err).
			Msg("turn allocation refused: 486")
		g.respond(m, from, stun.CodeAllocQuotaReached, key)
		return false
	}
	g.mu.Lock()
	g.pending.Store(&pending{user: user, client: client, txid: m.TransactionID, free: true})
	g.mu.Unlock()
	return true
}

// checkPeers refuses a CreatePermission or ChannelBind naming a peer the
// policy forbids, with 403 (443 for a non-IPv4 peer). Permissions are per
// IP, so only ChannelBind, which names a port, meets the deny list here;
// datagrams to denied ports are dropped by relayConn.WriteTo.
func (g *gate) checkPeers(m *stun.Message, from net.Addr, user string, key []byte) bool {
	var peer netip.AddrPort
	reason := ""
	_ = m.ForEach(stun.AttrXORPeerAddress, func(m *stun.Message) error {
		var a stun.XORMappedAddress
		if err := a.GetFromAs(m, stun.AttrXORPeerAddress); err != nil {
			return err // malformed: pion answers 400
		}
		peer = netip.AddrPortFrom(ipOf(a.IP), uint16(a.Port))
		if m.Type.Method == stun.MethodChannelBind {
			reason = g.s.policy.checkPeer(peer)
		} else {
			reason = g.s.policy.checkIP(peer.Addr())
		}
		if reason != "" {
			return errors.New(reason)
		}
		return nil
	})
	if reason == "" {
		return true
	}
	g.s.metrics.refused.WithLabelValues(reasonPermission).Inc()
	g.s.rlog.Info().Str("user", user).Str("remote_addr", from.String()).Str("peer", peer.String()).
		Str("method", m.Type.Method.String()).Str("reason", reason).Msg("turn peer refused")
	code := stun.CodeForbidden
	if reason == peerFamily {
		code = stun.CodePeerAddrFamilyMismatch
	}
	g.respond(m, from, code, key)
	return false
}

// respond sends an error response to an authenticated request, with
// MESSAGE-INTEGRITY under the user's key (RFC 5389 §10.2.2) and
// FINGERPRINT.
func (g *gate) respond(m *stun.Message, to net.Addr, code stun.ErrorCode, key []byte) {
	res, err := stun.Build(
		stun.NewTransactionIDSetter(m.TransactionID),
		stun.NewType(m.Type.Method, stun.ClassErrorResponse),
		code,
		stun.MessageIntegrity(key),
		stun.Fingerprint,
	)
	if err == nil {
		_, err = g.PacketConn.WriteTo(res.Raw, to)
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		g.s.rlog.Warn().Str("remote_addr", to.String()).Err(err).Msg("turn error response not sent")
	}
}

// settle ends the admitted request's handling (if want is nil, or is the
// pending request): a unit no relay socket took goes back.
func (g *gate) settle(want *pending) {
	g.mu.Lock()
	p := g.pending.Load()
	if p == nil || (want != nil && p != want) {
		g.mu.Unlock()
		return
	}
	g.pending.Store(nil)
	free := p.free
	g.mu.Unlock()
	if free {
		g.s.quota.release(p.user)
	}
}

// takeUnit gives a relay socket being bound for the pending request its
// quota unit: the reservation's if still free, else a new one (EVEN-PORT
// probing binds several). It returns the pending request, nil if there
// is none, and whether the unit is the reservation's.
func (g *gate) takeUnit() (*pending, bool) {
	g.mu.Lock()
	p := g.pending.Load()
	reserved := p != nil && p.free
	if reserved {
		p.free = false
	}
	g.mu.Unlock()
	if p != nil && !reserved {
		g.s.quota.acquire(p.user)
	}
	return p, reserved
}

// returnUnit gives back the unit of a relay socket that closes: to the
// reservation it came from if that request is still pending, else to the
// quota.
func (g *gate) returnUnit(user string, from *pending) {
	g.mu.Lock()
	back := from != nil && g.pending.Load() == from && !from.free
	if back {
		from.free = true
	}
	g.mu.Unlock()
	if !back {
		g.s.quota.release(user)
	}
}

// WriteTo is how pion answers (and relays to) the client. The response to
// the admitted Allocate settles its reservation before it leaves, so the
// client never sees a count that includes it. Other writes (most of them
// relayed data) only pay an atomic load.
func (g *gate) WriteTo(b []byte, addr net.Addr) (int, error) {
	if p := g.pending.Load(); p != nil && stun.IsMessage(b) && [stun.TransactionIDSize]byte(b[8:20]) == p.txid {
		g.settle(p)
	}
	return g.PacketConn.WriteTo(b, addr)
}

// finish runs once, when pion's read loop gets an error from ReadFrom.
func (g *gate) finish() {
	g.mu.Lock()
	done := g.done
	g.done = true
	g.mu.Unlock()
	if !done {
		g.settle(nil)
		g.onDone()
	}
}

// Validate implements turn.RelayAddressGenerator.
func (g *gate) Validate() error { return nil }

// AllocateConn implements turn.RelayAddressGenerator: pion v2 calls it for
// RFC 6062 TCP allocations, which we do not offer.
func (g *gate) AllocateConn(string, int) (net.Conn, net.Addr, error) {
	return nil, nil, errNoTCPRelay
}

// AllocatePacketConn implements turn.RelayAddressGenerator. pion calls it
// on this gate's read goroutine while it handles the Allocate that
// screen admitted (and, for EVEN-PORT, also to probe ports: those sockets
// are closed at once and hand their unit back).
func (g *gate) AllocatePacketConn(network string, requestedPort int) (net.PacketConn, net.Addr, error) {
	p, reserved := g.takeUnit()
	if p == nil {
		return nil, nil, errNoReservation // pion answers 508
	}
	pc, port, err := g.s.bindRelay(network, requestedPort)
	if err != nil {
		g.s.log.Warn().Str("user", p.user).Err(err).Msg("turn relay socket not bound")
		var from *pending
		if reserved {
			from = p
		}
		g.returnUnit(p.user, from)
		return nil, nil, err
	}
	rc := g.s.newRelayConn(pc, g, p, reserved)
	return rc, &net.UDPAddr{IP: g.s.cfg.RelayIP, Port: port}, nil
}

// relayOpened and relayClosed keep clients in step with the relays.
func (g *gate) relayOpened(client string) {
	g.mu.Lock()
	g.clients[client]++
	g.mu.Unlock()
}

func (g *gate) relayClosed(client string) {
	g.mu.Lock()
	if g.clients[client]--; g.clients[client] <= 0 {
		delete(g.clients, client)
	}
	g.mu.Unlock()
}
