// Package fallback is the ordinary-peer agent's TURN fallback
// (ARCHITECTURE.md §6 "TURN fallback"): one TURN allocation (pion/turn/v2
// client over its own UDP socket) on a super peer other than the agent's
// attachment, with permissions for every super peer's IP. When the
// overlay path to a peer fails, the agent sends the same SIP payload from
// its allocation to the peer's relayed address: X → relay(X) → relay(Y) →
// Y, three hops.
//
// Datagrams between relays carry a 20-byte header: the magic "P2R1" and
// the sender's 16-byte Peer-ID, followed by one whole SIP message.
package fallback

import (
	"bytes"
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

// Magic starts every relayed datagram.
const Magic = "P2R1"

// HeaderLen is the relayed datagram header: magic and source Peer-ID.
const HeaderLen = len(Magic) + ids.Len

// maxDatagram bounds a relayed SIP message (UDP SIP stays well below).
const maxDatagram = 65535

// Errors.
var (
	ErrNoAllocation = errors.New("fallback: no TURN allocation")
	errShort        = errors.New("fallback: short datagram")
	errMagic        = errors.New("fallback: bad magic")
)

// Encode frames payload from src for the relay path.
func Encode(src ids.PeerID, payload []byte) []byte {
	b := make([]byte, 0, HeaderLen+len(payload))
	b = append(b, Magic...)
	b = append(b, src[:]...)
	return append(b, payload...)
}

// Decode splits a relayed datagram into its source and payload (which
// aliases b). Datagrams without the header or with an empty payload are
// refused.
func Decode(b []byte) (ids.PeerID, []byte, error) {
	var src ids.PeerID
	if len(b) <= HeaderLen {
		return src, nil, errShort
	}
	if !bytes.Equal(b[:len(Magic)], []byte(Magic)) {
		return src, nil, errMagic
	}
	copy(src[:], b[len(Magic):HeaderLen])
	return src, b[HeaderLen:], nil
}

// Config configures a Relay.
type Config struct {
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

// New makes a Relay without an allocation; Ensure allocates.
func New(cfg Config) *Relay {
	if cfg.RenewBefore <= 0 {
		cfg.RenewBefore = 2 * time.Minute
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = 5 * time.Second
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
	if _, err := al.relay.WriteTo(Encode(r.cfg.Self, payload), al.relay.LocalAddr()); err != nil {
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
		src, payload, err := Decode(buf[:n])
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

// Send sends payload from the allocation to a peer's relayed address.
func (r *Relay) Send(to string, payload []byte) error {
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
	if _, err := al.relay.WriteTo(Encode(r.cfg.Self, payload), ua); err != nil {
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
