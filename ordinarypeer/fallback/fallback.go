// Package fallback is the ordinary-peer agent's TURN fallback
// (ARCHITECTURE.md §6 "TURN fallback"): one TURN allocation (pion/turn/v2
// client over its own UDP socket) on a super peer other than the agent's
// attachment, with permissions for every super peer's IP. When the
// overlay path to a peer fails, the agent sends the same SIP payload from
// its allocation to the peer's relayed address: X → relay(X) → relay(Y) →
// Y, three hops.
//
// Datagrams between relays carry a 108-byte header: the magic "P2R2", the
// sender's Ed25519 public key (its Peer-ID is the key's hash), the send
// time in Unix milliseconds and a signature, followed by one whole SIP
// message. The signature covers the destination's Peer-ID, the header and
// the message: anyone with credentials can get a TURN allocation on a
// super peer, so a receiver believes neither a claimed sender nor an
// address, only the key (ARCHITECTURE.md §2: a Peer-ID cannot be claimed
// without its key).
package fallback

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/turn/v2"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/logx"
)

// Magic starts every relayed datagram ("P2R1", unsigned, is refused).
const Magic = "P2R2"

// HeaderLen is the relayed datagram header: magic, the sender's public
// key, the send time and the signature.
const HeaderLen = len(Magic) + ed25519.PublicKeySize + 8 + ed25519.SignatureSize

// MaxSkew bounds how far a datagram's send time may be from the
// receiver's clock: a captured datagram cannot be replayed later, and
// agents' clocks (NTP-synchronised, as their credentials' expiry already
// requires) may differ by this much.
const MaxSkew = time.Minute

// sigContext separates these signatures from any other use of the key.
const sigContext = "p2psip relayed datagram\x00"

// maxDatagram bounds a relayed SIP message (UDP SIP stays well below).
const maxDatagram = 65535

// Errors.
var (
	ErrNoAllocation = errors.New("fallback: no TURN allocation")
	errShort        = errors.New("fallback: short datagram")
	errMagic        = errors.New("fallback: bad magic")
	errSignature    = errors.New("fallback: bad signature")
	errStale        = errors.New("fallback: send time outside the allowed skew")
)

const (
	keyAt  = len(Magic)
	timeAt = keyAt + ed25519.PublicKeySize
	sigAt  = timeAt + 8
)

// Encode frames payload for dst, sent now from the relayed address from,
// signed with key.
func Encode(key ed25519.PrivateKey, dst ids.PeerID, from string, now time.Time, payload []byte) []byte {
	b := make([]byte, HeaderLen, HeaderLen+len(payload))
	copy(b, Magic)
	copy(b[keyAt:], key.Public().(ed25519.PublicKey))
	binary.BigEndian.PutUint64(b[timeAt:], uint64(now.UnixMilli()))
	b = append(b, payload...)
	copy(b[sigAt:], ed25519.Sign(key, signed(dst, from, b)))
	return b
}

// signed is what a datagram's signature covers: the context, the
// destination, the sender's relayed address (a datagram replayed from
// another allocation, which would make the receiver answer there, fails),
// the header without the signature, the payload.
func signed(dst ids.PeerID, from string, b []byte) []byte {
	m := make([]byte, 0, len(sigContext)+ids.Len+1+len(from)+sigAt+len(b)-HeaderLen)
	m = append(m, sigContext...)
	m = append(m, dst[:]...)
	m = append(m, byte(len(from)))
	m = append(m, from...)
	m = append(m, b[:sigAt]...)
	return append(m, b[HeaderLen:]...)
}

// Decode checks a relayed datagram for self, received at now from the
// relayed address from: the magic, a payload, a send time within MaxSkew,
// a signature by the key it carries over this destination and sender
// address. It returns the sender's Peer-ID (the key's) and the payload,
// which aliases b.
func Decode(b []byte, self ids.PeerID, from string, now time.Time) (ids.PeerID, []byte, error) {
	var src ids.PeerID
	if len(b) <= HeaderLen {
		return src, nil, errShort
	}
	if !bytes.Equal(b[:len(Magic)], []byte(Magic)) {
		return src, nil, errMagic
	}
	sent := time.UnixMilli(int64(binary.BigEndian.Uint64(b[timeAt:])))
	if d := now.Sub(sent); d > MaxSkew || d < -MaxSkew {
		return src, nil, errStale
	}
	pub := ed25519.PublicKey(b[keyAt:timeAt])
	if !ed25519.Verify(pub, signed(self, from, b), b[sigAt:HeaderLen]) {
		return src, nil, errSignature
	}
	return ids.PeerIDFromKey(pub), b[HeaderLen:], nil
}

// Config configures a Relay.
type Config struct {
	// Key is the agent's identity key: it signs what the relay sends.
	Key ed25519.PrivateKey
	// Self is the agent's Peer-ID (Key's).
	Self ids.PeerID
	// Realm is the TURN realm: the overlay name.
	Realm string
	// Credentials are the agent's own (EXPIRY:USER, password). It is
	// called for every allocation and, near the expiry of the ones in use,
	// on every Ensure: a func that reloads a renewed credentials file lets
	// the allocation move to the new ones before the server refuses its
	// refreshes.
	Credentials func() auth.Credentials
	// RenewBefore is how long before its credentials expire an allocation
	// is replaced by one made with newer credentials (default 2 min; the
	// server refuses refreshes with expired ones, pion only logs that, and
	// the allocation would die unnoticed).
	RenewBefore time.Duration
	// ProbeTimeout is how long the echo of a probe may take: on every
	// Ensure the allocation sends a datagram to its own relayed address;
	// one that has echoed before and then stays silent past ProbeTimeout
	// has stopped relaying (its server restarted, or refused a refresh)
	// and is replaced (default 5 s). An allocation that never echoes (a
	// server that cannot hairpin) is never judged by it.
	ProbeTimeout time.Duration
	// Deliver gets every valid inbound payload with its source Peer-ID
	// and the relayed address it came from (the sender's allocation). It
	// owns payload.
	Deliver func(src ids.PeerID, from string, payload []byte)
	Log     zerolog.Logger
}

// Stats counts relayed traffic.
type Stats struct {
	Allocations uint64 `json:"allocations"`
	Failures    uint64 `json:"allocation_failures"`
	RelayedOut  uint64 `json:"relayed_out"`
	RelayedIn   uint64 `json:"relayed_in"`
	Dropped     uint64 `json:"dropped_in"`
	Probes      uint64 `json:"probes_echoed"`
	Lost        uint64 `json:"allocations_lost"`
	Server      string `json:"server,omitempty"`
	Addr        string `json:"relayed_addr,omitempty"`
}

// Relay is the agent's TURN allocation.
type Relay struct {
	cfg Config
	log zerolog.Logger

	mu     sync.Mutex // guards the fields below
	cur    *alloc
	closed bool
	// trying: clients of allocations under way, closed by Close so that
	// it does not wait out pion's retransmissions to a dead server.
	trying map[*turn.Client]net.PacketConn

	allocs, failures, out, in, dropped, probes, lost atomic.Uint64
}

// alloc is one allocation: its socket, client and relayed conn.
type alloc struct {
	server string
	// expires is when the credentials it was made (and is refreshed) with
	// expire; zero if unknown.
	expires time.Time
	sock    net.PacketConn
	client  *turn.Client
	relay   net.PacketConn
	permits []string
	dead    atomic.Bool
	// Self-probe: the nonce and send time (unix ns) of the probe awaiting
	// its echo (0: none), and whether any probe ever echoed.
	probeNonce atomic.Uint64
	probeSent  atomic.Int64
	echoed     atomic.Bool
}

func (al *alloc) close() {
	al.dead.Store(true)
	al.relay.Close() // deallocates and stops refreshes
	al.client.Close()
	al.sock.Close()
}

// New makes a Relay without an allocation; Ensure allocates. cfg.Key is
// required (Self is derived from it).
func New(cfg Config) *Relay {
	if cfg.RenewBefore <= 0 {
		cfg.RenewBefore = 2 * time.Minute
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = 5 * time.Second
	}
	if len(cfg.Key) == ed25519.PrivateKeySize {
		cfg.Self = ids.PeerIDFromKey(cfg.Key.Public().(ed25519.PublicKey))
	}
	return &Relay{cfg: cfg, log: cfg.Log.With().Str("component", "fallback").Logger()}
}

// Addr is the relayed address ("" without a live allocation).
func (r *Relay) Addr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur == nil || r.cur.dead.Load() {
		return ""
	}
	return r.cur.relay.LocalAddr().String()
}

// Stats reports counters and the current allocation.
func (r *Relay) Stats() Stats {
	st := Stats{Allocations: r.allocs.Load(), Failures: r.failures.Load(), RelayedOut: r.out.Load(),
		RelayedIn: r.in.Load(), Dropped: r.dropped.Load(), Probes: r.probes.Load(), Lost: r.lost.Load()}
	r.mu.Lock()
	if r.cur != nil && !r.cur.dead.Load() {
		st.Server, st.Addr = r.cur.server, r.cur.relay.LocalAddr().String()
	}
	r.mu.Unlock()
	return st
}

// Order ranks TURN servers for the agent self by rendezvous hashing
// (highest sha256(self, server) first): agents spread evenly over the
// super peers instead of all picking the first one listed, each agent
// keeps its choice while the list changes around it, and dropping the
// attachment from the list moves only the agents that had picked it.
func Order(self ids.PeerID, servers []string) []string {
	out := slices.Clone(servers)
	slices.Sort(out)
	out = slices.Compact(out)
	score := func(s string) uint64 {
		h := sha256.New()
		h.Write(self[:])
		h.Write([]byte(s))
		return binary.BigEndian.Uint64(h.Sum(nil))
	}
	scores := make(map[string]uint64, len(out))
	for _, s := range out {
		scores[s] = score(s)
	}
	slices.SortStableFunc(out, func(a, b string) int {
		switch sa, sb := scores[a], scores[b]; {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return 0
	})
	return out
}

// Ensure keeps an allocation on one of servers (TURN addresses) other than
// avoid (the attachment's TURN address), re-allocating when there is
// none, it died, it sits on avoid or on a server no longer listed, or its
// credentials are about to expire and newer ones are available; permits
// are the super peers' IPs. A new allocation goes to the first server of
// Order that grants one; the old one is released only after that (the
// relayed address changes, the caller re-publishes it). It reports
// whether the relayed address changed. It may block for seconds (pion
// retransmits to a dead server for ≈ 8 s).
func (r *Relay) Ensure(avoid string, servers, permits []string) (bool, error) {
	r.mu.Lock()
	cur, closed := r.cur, r.closed
	r.mu.Unlock()
	if closed {
		return false, net.ErrClosed
	}
	slices.Sort(permits)
	permits = slices.Compact(permits)
	if cur != nil && !cur.dead.Load() && cur.server != avoid && slices.Contains(servers, cur.server) {
		now := time.Now()
		switch renew, why := r.renewDue(cur, now); {
		case renew:
			r.log.Info().Str("server", cur.server).Time("credentials_expire", cur.expires).Str("why", why).
				Msg("TURN allocation renewal")
		case r.probeFailed(cur, now):
			r.lost.Add(1)
			cur.dead.Store(true)
			r.log.Warn().Str("server", cur.server).Dur("waited", r.cfg.ProbeTimeout).
				Msg("TURN allocation stopped relaying (no echo of its probe): re-allocating")
		default:
			r.sendProbe(cur, now)
			if !slices.Equal(cur.permits, permits) {
				if err := permit(cur.client, permits); err != nil {
					r.log.Warn().Err(err).Msg("TURN permissions")
				} else {
					cur.permits = permits
				}
			}
			return false, nil
		}
	}
	var errs []error
	for _, s := range Order(r.cfg.Self, servers) {
		if s == "" || s == avoid {
			continue
		}
		al, err := r.allocate(s, permits)
		if err != nil {
			r.failures.Add(1)
			errs = append(errs, err)
			continue
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			al.close()
			return false, net.ErrClosed
		}
		old := r.cur
		r.cur = al
		r.mu.Unlock()
		if old != nil {
			old.close()
		}
		r.allocs.Add(1)
		r.log.Info().Str("server", s).Str("relayed", al.relay.LocalAddr().String()).Msg("TURN allocation")
		go r.read(al)
		r.sendProbe(al, time.Now()) // its echo arms the self-probe
		return true, nil
	}
	// None: drop a dead or misplaced allocation anyway (one whose
	// credentials merely near their expiry still works meanwhile).
	r.mu.Lock()
	old := r.cur
	if old != nil && (old.dead.Load() || old.server == avoid || !slices.Contains(servers, old.server) || r.expired(old, time.Now())) {
		r.cur = nil
	} else {
		old = nil
	}
	r.mu.Unlock()
	if old != nil {
		old.close()
	}
	if len(errs) == 0 {
		return old != nil, ErrNoAllocation
	}
	return old != nil, errors.Join(errs...)
}

// probeMagic starts a self-probe's payload (after the header naming
// ourselves as the source); 8 bytes of nonce follow.
const probeMagic = "\x00p2r-probe"

// sendProbe sends a probe from al to its own relayed address unless one
// is still awaiting its echo.
func (r *Relay) sendProbe(al *alloc, now time.Time) {
	if al.probeSent.Load() != 0 {
		return
	}
	nonce := uint64(now.UnixNano())
	payload := binary.BigEndian.AppendUint64([]byte(probeMagic), nonce)
	al.probeNonce.Store(nonce)
	al.probeSent.Store(now.UnixNano())
	if _, err := al.relay.WriteTo(Encode(r.cfg.Key, r.cfg.Self, al.relay.LocalAddr().String(), now, payload), al.relay.LocalAddr()); err != nil {
		r.log.Debug().Err(err).Msg("TURN self-probe")
	}
}

// echo takes a datagram from ourselves: true if it was our probe's echo.
func (r *Relay) echo(al *alloc, payload []byte) bool {
	if len(payload) != len(probeMagic)+8 || string(payload[:len(probeMagic)]) != probeMagic {
		return false
	}
	if binary.BigEndian.Uint64(payload[len(probeMagic):]) != al.probeNonce.Load() {
		return true // a late echo of an older probe: harmless
	}
	al.probeSent.Store(0)
	al.echoed.Store(true)
	r.probes.Add(1)
	return true
}

// probeFailed: al has echoed probes before and the current one has
// waited past ProbeTimeout.
func (r *Relay) probeFailed(al *alloc, now time.Time) bool {
	sent := al.probeSent.Load()
	return al.echoed.Load() && sent != 0 && now.Sub(time.Unix(0, sent)) > r.cfg.ProbeTimeout
}

// expired: the server refuses the allocation's refreshes from now on.
func (r *Relay) expired(al *alloc, now time.Time) bool {
	return !al.expires.IsZero() && !now.Before(al.expires)
}

// renewDue says whether al must be replaced because of its credentials:
// they have expired (its next refresh will be refused: a new allocation
// is the only way on, with whatever credentials there are), or they
// expire within RenewBefore and newer ones are available.
func (r *Relay) renewDue(al *alloc, now time.Time) (bool, string) {
	if al.expires.IsZero() || al.expires.Sub(now) > r.cfg.RenewBefore {
		return false, ""
	}
	if r.expired(al, now) {
		return true, "credentials expired: refreshes are refused"
	}
	if exp := CredExpiry(r.cfg.Credentials()); exp.After(al.expires) {
		return true, "newer credentials"
	}
	return false, ""
}

// CredExpiry is when cr expires: its Expires, else the EXPIRY of its
// username; zero if neither says.
func CredExpiry(cr auth.Credentials) time.Time {
	if !cr.Expires.IsZero() {
		return cr.Expires
	}
	exp, _, err := auth.ParseUsername(cr.Username)
	if err != nil {
		return time.Time{}
	}
	return exp
}

func (r *Relay) allocate(server string, permits []string) (*alloc, error) {
	sock, err := net.ListenPacket("udp4", ":0")
	if err != nil {
		return nil, err
	}
	cr := r.cfg.Credentials()
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: server, TURNServerAddr: server, Conn: sock,
		Username: cr.Username, Password: cr.Password, Realm: r.cfg.Realm,
		LoggerFactory: logx.Pion(r.log),
	})
	if err != nil {
		sock.Close()
		return nil, err
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		c.Close()
		sock.Close()
		return nil, net.ErrClosed
	}
	if r.trying == nil {
		r.trying = make(map[*turn.Client]net.PacketConn)
	}
	r.trying[c] = sock
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.trying, c) // a no-op once Close took the map
		r.mu.Unlock()
	}()
	if err := c.Listen(); err != nil {
		c.Close()
		sock.Close()
		return nil, err
	}
	relay, err := c.Allocate()
	if err != nil {
		c.Close()
		sock.Close()
		return nil, err
	}
	al := &alloc{server: server, expires: CredExpiry(cr), sock: sock, client: c, relay: relay}
	if err := permit(c, permits); err != nil {
		al.close()
		return nil, err
	}
	al.permits = permits
	return al, nil
}

func permit(c *turn.Client, ips []string) error {
	addrs := make([]net.Addr, 0, len(ips))
	for _, ip := range ips {
		if a := net.ParseIP(ip); a != nil && a.To4() != nil {
			addrs = append(addrs, &net.UDPAddr{IP: a})
		}
	}
	if len(addrs) == 0 {
		return nil
	}
	return c.CreatePermission(addrs...)
}

// read delivers inbound relayed datagrams until the allocation closes.
func (r *Relay) read(al *alloc) {
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := al.relay.ReadFrom(buf)
		if err != nil {
			if !al.dead.Swap(true) {
				r.log.Warn().Err(err).Str("server", al.server).Msg("TURN allocation lost")
			}
			return
		}
		src, payload, err := Decode(buf[:n], r.cfg.Self, from.String(), time.Now())
		if err == nil && src == r.cfg.Self && r.echo(al, payload) {
			continue
		}
		if err != nil || src == r.cfg.Self {
			r.dropped.Add(1)
			r.log.Debug().Err(err).Str("from", from.String()).Msg("relayed datagram dropped")
			continue
		}
		r.in.Add(1)
		if r.cfg.Deliver != nil {
			r.cfg.Deliver(src, from.String(), slices.Clone(payload))
		}
	}
}

// Send sends payload from the allocation to dst at its relayed address to.
func (r *Relay) Send(dst ids.PeerID, to string, payload []byte) error {
	r.mu.Lock()
	al := r.cur
	r.mu.Unlock()
	if al == nil || al.dead.Load() {
		return ErrNoAllocation
	}
	ua, err := net.ResolveUDPAddr("udp4", to)
	if err != nil {
		return err
	}
	if _, err := al.relay.WriteTo(Encode(r.cfg.Key, dst, al.relay.LocalAddr().String(), time.Now(), payload), ua); err != nil {
		return err
	}
	r.out.Add(1)
	return nil
}

// Close deallocates, and ends any allocation under way. It may be called
// more than once, concurrently with Ensure.
func (r *Relay) Close() {
	r.mu.Lock()
	al := r.cur
	r.cur, r.closed = nil, true
	trying := r.trying
	r.trying = nil
	r.mu.Unlock()
	for c, sock := range trying {
		// Its Allocate returns at once, whichever transaction it is in;
		// allocate closes them again, which is harmless.
		c.Close()
		sock.Close()
	}
	if al != nil {
		al.close()
	}
}
