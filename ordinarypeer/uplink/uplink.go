// Package uplink is an ordinary peer's one outbound connection to the
// overlay (ARCHITECTURE.md §5): bootstrap from remembered and configured
// super peers, follow the bootstrap super peer's redirect to the admitting
// one, keep the session alive with Pings, and fail over to an alternate
// super peer as soon as the session breaks or two Pongs go missing.
package uplink

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
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

// ErrNotAttached: there is no session right now (failing over).
var ErrNotAttached = errors.New("uplink: not attached")

// Config configures the uplink. Zero values mean defaults.
type Config struct {
	Overlay     string
	Bootstrap   []string // super peers' peer-protocol addresses
	Credentials auth.Credentials
	// Renewed, if set, returns the newest credentials (the agent re-reads
	// its credentials file): every (re)attach uses them, so an agent that
	// outlives its first credentials can still fail over. Nil: Credentials.
	Renewed func() auth.Credentials
	// Key is the node's identity; its Peer-ID is what the overlay routes to.
	Key ed25519.PrivateKey
	// Roots verify super peers' certificates; nil skips verification
	// (development only; the caller warns).
	Roots *x509.CertPool
	// CacheFile remembers super peers between runs ("" : none).
	CacheFile string
	// Keepalive overrides the interval the super peer asks for (0: use it).
	Keepalive time.Duration
	// DialTimeout bounds one connection attempt (default 2s).
	DialTimeout time.Duration
	Promotable  bool
	// Tunnel receives every inbound Tunnel frame, data or error, on the
	// session's reader goroutine: it must not block.
	Tunnel func(f *wire.Frame)
	// OnAttach runs after every (re)attachment, on its own goroutine; the
	// agent re-stores its records there.
	OnAttach func(ctx context.Context, a Attachment)
	// OnMembers runs when the super peer says super peers left, died,
	// began draining or joined (Attachment's alternates changed), on the
	// session's reader goroutine: it must not block.
	OnMembers func()
}

// Attachment describes the current super peer.
type Attachment struct {
	SP     ids.PeerID
	SPAddr string
	// TURNAddr is the super peer's STUN/TURN address ("" if none).
	TURNAddr string
	// LocalAddr is this end of the session (its IP is the agent's
	// outgoing interface, the base of NAT discovery).
	LocalAddr  string
	At         time.Time
	Alternates []wire.SuperPeerInfo
	// Reattach is how long the agent was without a super peer before this
	// attachment (0 for the first one).
	Reattach time.Duration
}

// Uplink keeps the agent attached.
type Uplink struct {
	cfg  Config
	log  zerolog.Logger
	self ids.PeerID
	cert tls.Certificate

	mu      sync.Mutex // guards the fields below
	sess    *client.Session
	att     Attachment
	waiters chan struct{} // closed when attached; replaced on loss
	// gone: super peers that said they are leaving, or that our super
	// peer said left, died or are draining, until when they stay out of
	// the alternates (and are tried last), unless said to have joined.
	gone map[ids.PeerID]goneSP

	// leave carries a super peer's request to move (its alternates).
	leave     chan []wire.SuperPeerInfo
	probe     chan struct{} // Probe's requests (capacity 1)
	suspect   chan struct{} // Suspect's requests (capacity 1)
	txid      atomic.Uint64
	failovers atomic.Int64
	ready     chan struct{}
	readyOnce sync.Once
}

// New builds an uplink; Run connects.
func New(cfg Config, log zerolog.Logger) (*Uplink, error) {
	if len(cfg.Bootstrap) == 0 && cfg.CacheFile == "" {
		return nil, errors.New("uplink: no bootstrap super peers")
	}
	if cfg.Key == nil {
		return nil, errors.New("uplink: identity key required")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	cert, err := auth.SelfSignedCertificate(cfg.Key, time.Now())
	if err != nil {
		return nil, fmt.Errorf("uplink: certificate: %w", err)
	}
	return &Uplink{
		cfg:     cfg,
		log:     logx.Component(log, "uplink"),
		self:    ids.PeerIDFromKey(cfg.Key.Public().(ed25519.PublicKey)),
		cert:    cert,
		waiters: make(chan struct{}),
		ready:   make(chan struct{}),
		leave:   make(chan []wire.SuperPeerInfo, 1),
		probe:   make(chan struct{}, 1),
		suspect: make(chan struct{}, 1),
		gone:    make(map[ids.PeerID]goneSP),
	}, nil
}

// goneFor is how long a departed super peer stays out of the alternates
// when no notice says it joined again: long enough for a drain and a
// restart, short enough that a notice lost with a failover costs little.
const goneFor = time.Minute

// maxAlternates bounds the alternates a joined notice may add to
// (a super peer's attach answer lists up to four).
const maxAlternates = 4

type goneSP struct {
	addr  string
	until time.Time
}

// markGoneLocked keeps sp out of the alternates for goneFor.
func (u *Uplink) markGoneLocked(sp wire.SuperPeerInfo, now time.Time) {
	if sp.PeerID.IsZero() {
		return
	}
	u.gone[sp.PeerID] = goneSP{addr: sp.PeerAddr, until: now.Add(goneFor)}
}

// goneLocked says whether id is to be left out now (forgetting an expired
// mark).
func (u *Uplink) goneLocked(id ids.PeerID, now time.Time) bool {
	g, ok := u.gone[id]
	if ok && now.After(g.until) {
		delete(u.gone, id)
		return false
	}
	return ok
}

// usableLocked is alts without the super peers marked gone (alts itself
// when none is: Attachment is on the path of every tunnel message).
func (u *Uplink) usableLocked(alts []wire.SuperPeerInfo, now time.Time) []wire.SuperPeerInfo {
	if len(u.gone) == 0 {
		return alts
	}
	out := make([]wire.SuperPeerInfo, 0, len(alts))
	for _, a := range alts {
		if !u.goneLocked(a.PeerID, now) {
			out = append(out, a)
		}
	}
	return out
}

// members applies a super peer's notice of a change among the super
// peers: gone ones leave the alternates, joined ones lose their mark and
// become alternates again if there is room.
func (u *Uplink) members(ch *wire.MembersChange) {
	now := time.Now()
	u.mu.Lock()
	for _, sp := range ch.Gone {
		u.markGoneLocked(sp, now)
	}
	for _, sp := range ch.Joined {
		if sp.PeerID.IsZero() || sp.PeerAddr == "" || sp.PeerID == u.self {
			continue
		}
		delete(u.gone, sp.PeerID)
		if sp.PeerID == u.att.SP || len(u.usableLocked(u.att.Alternates, now)) >= maxAlternates {
			continue // gone ones still in the list leave room
		}
		if !slices.ContainsFunc(u.att.Alternates, func(a wire.SuperPeerInfo) bool { return a.PeerID == sp.PeerID }) {
			// A copy: Attachment's callers may hold the old slice.
			u.att.Alternates = append(slices.Clip(u.att.Alternates), sp)
		}
	}
	u.mu.Unlock()
	u.log.Info().Int("gone", len(ch.Gone)).Int("joined", len(ch.Joined)).Msg("super peers changed")
	if u.cfg.OnMembers != nil {
		u.cfg.OnMembers()
	}
}

// Self is this node's Peer-ID.
func (u *Uplink) Self() ids.PeerID { return u.self }

// Ready is closed after the first successful attachment.
func (u *Uplink) Ready() <-chan struct{} { return u.ready }

// Failovers counts reattachments after a lost super peer.
func (u *Uplink) Failovers() int { return int(u.failovers.Load()) }

// Attachment returns the current super peer (ok false while failing
// over); its alternates leave out the super peers known to be gone.
func (u *Uplink) Attachment() (Attachment, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	att := u.att
	att.Alternates = u.usableLocked(att.Alternates, time.Now())
	return att, u.sess != nil
}

// Session waits until attached (or ctx ends) and returns the session, for
// store operations.
func (u *Uplink) Session(ctx context.Context) (*client.Session, error) {
	for {
		u.mu.Lock()
		s, w := u.sess, u.waiters
		u.mu.Unlock()
		if s != nil {
			return s, nil
		}
		select {
		case <-w:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrNotAttached, ctx.Err())
		}
	}
}

// SendTunnel sends one payload to dst through the current super peer;
// hint is dst's super peer if known. It does not wait for room: a full
// queue is an error the caller reports (SIP retransmits or fails over).
func (u *Uplink) SendTunnel(dst, hint ids.PeerID, payload []byte) error {
	_, err := u.SendTunnelTx(dst, hint, payload)
	return err
}

// SendTunnelTx is SendTunnel that also returns the frame's TxID, which an
// error frame for it carries back (the agent's TURN fallback re-sends the
// failed payload by it).
func (u *Uplink) SendTunnelTx(dst, hint ids.PeerID, payload []byte) (uint64, error) {
	u.mu.Lock()
	s := u.sess
	u.mu.Unlock()
	if s == nil {
		return 0, ErrNotAttached
	}
	txid := u.txid.Add(1)
	return txid, s.Conn.Send(&wire.Frame{
		Header: wire.Header{Type: wire.TypeTunnel, Flags: wire.FlagRouted, Hops: 1, TxID: txid, Src: u.self, Dst: dst, Via: hint},
		Body:   payload,
	})
}

// Run attaches and keeps the agent attached until ctx ends.
func (u *Uplink) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	var lost time.Time
	backoff := 100 * time.Millisecond
	var last ids.PeerID
	for ctx.Err() == nil {
		sess, att, err := u.attach(ctx, last)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			u.log.Warn().Err(err).Dur("retry_in", backoff).Msg("attach failed")
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if !lost.IsZero() {
			att.Reattach = time.Since(lost)
			u.failovers.Add(1)
		}
		last = att.SP
		u.mu.Lock()
		u.sess, u.att = sess, att
		close(u.waiters)
		u.mu.Unlock()
		u.readyOnce.Do(func() { close(u.ready) })
		u.remember(att)
		u.log.Info().Str("sp_id", att.SP.Short()).Str("remote_addr", att.SPAddr).Dur("reattach", att.Reattach).Msg("attached")
		if u.cfg.OnAttach != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				u.cfg.OnAttach(ctx, att)
			}()
		}
		select {
		case <-u.leave: // a request from a session that is gone
		default:
		}
		err = u.keep(ctx, sess, att)
		var mv *moving
		if errors.As(err, &mv) {
			// The super peer is leaving: attach elsewhere first, then let
			// the old session go, so the agent is never unreachable.
			u.log.Info().Str("sp_id", att.SP.Short()).Msg("super peer leaving; moving")
			u.mu.Lock()
			u.att.Alternates = mv.alternates
			// The next super peer may not know yet that this one is
			// draining and offer it as an alternate or TURN server.
			u.markGoneLocked(wire.SuperPeerInfo{PeerID: att.SP, PeerAddr: att.SPAddr}, time.Now())
			u.mu.Unlock()
			next, natt, aerr := u.attach(ctx, att.SP)
			if aerr == nil && natt.SP != att.SP {
				backoff = 100 * time.Millisecond
				last = natt.SP
				u.mu.Lock()
				u.sess, u.att = next, natt
				u.mu.Unlock()
				sess.Close()
				u.remember(natt)
				u.failovers.Add(1)
				u.log.Info().Str("sp_id", natt.SP.Short()).Str("remote_addr", natt.SPAddr).Msg("attached")
				if u.cfg.OnAttach != nil {
					wg.Add(1)
					go func() {
						defer wg.Done()
						u.cfg.OnAttach(ctx, natt)
					}()
				}
				sess, att = next, natt
				err = u.keep(ctx, sess, att)
			} else if aerr == nil {
				next.Close()
			}
		}
		lost = time.Now()
		u.mu.Lock()
		u.sess = nil
		u.waiters = make(chan struct{})
		u.mu.Unlock()
		sess.Close()
		if ctx.Err() == nil {
			u.log.Warn().Err(err).Str("sp_id", att.SP.Short()).Msg("super peer lost; failing over")
		}
	}
	return nil
}

// Move asks the uplink to attach to one of to and only then let the
// current session go, as a super peer's Leave does (a promoted agent moves
// to its own super peer this way). It does not wait; Attachment shows the
// result, and a move already pending wins.
func (u *Uplink) Move(to []wire.SuperPeerInfo) {
	select {
	case u.leave <- to:
	default:
	}
}

// moving is keep's answer to a Leave from the super peer.
type moving struct{ alternates []wire.SuperPeerInfo }

func (m *moving) Error() string { return "super peer asked us to move" }

// maxPongWait bounds how long a Ping waits for its Pong: a super peer
// answers from its reader at once, so seconds of silence mean it or the
// path is gone, whatever the keepalive interval. Two in a row fail over:
// long enough not to flee a super peer that is merely busy, short enough
// that calls (whose location lookups go through it) fail for seconds, not
// for a keepalive interval.
const maxPongWait = 3 * time.Second

// keep pings the super peer until the session breaks, two pings in a row
// go unanswered, or ctx ends. A missed Pong is confirmed by another Ping
// at once rather than a keepalive interval later. Probe (the agent's
// traffic went unanswered) asks for a Ping now; Suspect (our super peer
// itself left a request unanswered) also counts as the first miss. So a
// super peer that died without closing the connection (its host or the
// path gone) is noticed within Keepalive plus two Pong waits when idle,
// two Pong waits after a tunnelled request went unanswered, one after a
// location lookup did.
func (u *Uplink) keep(ctx context.Context, s *client.Session, att Attachment) error {
	interval := u.cfg.Keepalive
	if interval <= 0 {
		interval = 25 * time.Second
	}
	pongWait := min(interval, maxPongWait)
	for _, ch := range []chan struct{}{u.probe, u.suspect} {
		select {
		case <-ch: // asked about the super peer before this one
		default:
		}
	}
	t := time.NewTimer(interval)
	defer t.Stop()
	var pong chan error // the Ping out, if any
	ping := func() {
		pong = make(chan error, 1)
		go func(out chan<- error) {
			pctx, cancel := context.WithTimeout(ctx, pongWait)
			defer cancel()
			_, err := s.Conn.Request(pctx, wire.TypePing, &wire.Ping{})
			out <- err
		}(pong)
	}
	missed := 0
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.Conn.Done():
			return s.Conn.Err()
		case alts := <-u.leave:
			return &moving{alternates: alts}
		case <-u.probe:
			if pong == nil {
				ping()
			}
		case <-u.suspect:
			missed = max(missed, 1)
			if pong == nil {
				ping()
			}
		case <-t.C:
			if pong == nil {
				ping()
			}
		case err := <-pong:
			pong = nil
			if err == nil {
				missed = 0
				t.Reset(interval)
				continue
			}
			if missed++; missed >= 2 {
				return fmt.Errorf("super peer silent: pings unanswered within %s after traffic or another ping was: %w", pongWait, err)
			}
			u.log.Debug().Err(err).Str("sp_id", att.SP.Short()).Msg("ping unanswered; asking again")
			ping()
		}
	}
}

// Probe asks the uplink to check its super peer now (a Ping; two missed
// Pongs fail over). The agent calls it when requests it sent through the
// overlay go unanswered: our super peer may have died silently, or the
// far end is merely slow or gone.
func (u *Uplink) Probe() {
	select {
	case u.probe <- struct{}{}:
	default:
	}
}

// Suspect is Probe when our super peer itself left a request unanswered
// (a location lookup timed out): that counts as the first missed Pong, so
// one more fails over.
func (u *Uplink) Suspect() {
	select {
	case u.suspect <- struct{}{}:
	default:
	}
}

// attach tries the candidates in order until one admits us. The super
// peer we just lost goes last.
func (u *Uplink) attach(ctx context.Context, lost ids.PeerID) (*client.Session, Attachment, error) {
	var errs []error
	for _, addr := range u.candidates(lost) {
		sess, att, err := u.attachAt(ctx, addr, false)
		if err == nil {
			return sess, att, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, Attachment{}, errors.Join(errs...)
}

// attachAt attaches at addr, following one redirect.
func (u *Uplink) attachAt(ctx context.Context, addr string, redirected bool) (*client.Session, Attachment, error) {
	sess, err := u.dial(ctx, addr)
	if err != nil {
		return nil, Attachment{}, err
	}
	actx, cancel := context.WithTimeout(ctx, u.cfg.DialTimeout)
	defer cancel()
	f, err := sess.Conn.Request(actx, wire.TypeAttach, &wire.Attach{Promotable: u.cfg.Promotable, NoRedirect: redirected})
	if err != nil {
		sess.Close()
		return nil, Attachment{}, fmt.Errorf("attach at %s: %w", addr, err)
	}
	var res wire.AttachResult
	if err := wire.Unmarshal(f.Body, &res); err != nil {
		sess.Close()
		return nil, Attachment{}, fmt.Errorf("attach at %s: %w", addr, err)
	}
	switch res.Status {
	case wire.AttachOK:
		if res.KeepaliveMS > 0 && u.cfg.Keepalive == 0 {
			u.cfg.Keepalive = time.Duration(res.KeepaliveMS) * time.Millisecond
		}
		return sess, Attachment{SP: sess.OK.PeerID, SPAddr: addr, TURNAddr: res.Self.TURNAddr,
			LocalAddr: sess.Conn.NetConn().LocalAddr().String(), At: time.Now(), Alternates: res.Alternates}, nil
	case wire.AttachRedirect:
		sess.Close()
		if redirected || res.Redirect == nil {
			return nil, Attachment{}, fmt.Errorf("attach at %s: redirect loop", addr)
		}
		u.log.Debug().Str("from", addr).Str("to", res.Redirect.PeerAddr).Msg("redirected")
		s2, att, err := u.attachAt(ctx, res.Redirect.PeerAddr, true)
		if err != nil {
			return nil, Attachment{}, fmt.Errorf("after redirect from %s: %w", addr, err)
		}
		if len(att.Alternates) == 0 {
			att.Alternates = res.Alternates
		}
		return s2, att, nil
	}
	sess.Close()
	return nil, Attachment{}, fmt.Errorf("attach at %s: unknown status %d", addr, res.Status)
}

func (u *Uplink) dial(ctx context.Context, addr string) (*client.Session, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("super peer address %q: %w", addr, err)
	}
	creds := u.cfg.Credentials
	if u.cfg.Renewed != nil {
		creds = u.cfg.Renewed()
	}
	return client.Dial(ctx, client.Config{
		Addr:    addr,
		TLS:     auth.ClientTLSConfig(&u.cert, u.cfg.Roots, host),
		Timeout: u.cfg.DialTimeout,
		Hello: func(tls.ConnectionState) (wire.Hello, error) {
			return wire.Hello{Role: wire.RoleAgent, Overlay: u.cfg.Overlay, Username: creds.Username, Password: creds.Password}, nil
		},
		Link: link.Config{Handler: u.handle},
	}, u.log)
}

// handle serves what the super peer sends us besides responses.
func (u *Uplink) handle(c *link.Conn, f *wire.Frame) {
	switch f.Type {
	case wire.TypeTunnel:
		if u.cfg.Tunnel != nil {
			u.cfg.Tunnel(f)
		}
	case wire.TypePing:
		c.Reply(f, &wire.Ping{}) //nolint:errcheck
	case wire.TypeLeave:
		var l wire.Leave
		if err := wire.Unmarshal(f.Body, &l); err != nil {
			c.ReplyError(f, wire.Errorf(wire.CodeBadRequest, "%v", err)) //nolint:errcheck
			return
		}
		select {
		case u.leave <- l.Alternates:
		default: // a move is already pending
		}
		c.Reply(f, nil) //nolint:errcheck
	case wire.TypeMembers:
		// One way: no reply.
		var ch wire.MembersChange
		if err := wire.Unmarshal(f.Body, &ch); err != nil {
			u.log.Warn().Err(err).Msg("bad members notice ignored")
			return
		}
		u.members(&ch)
	default:
		c.ReplyError(f, wire.Errorf(wire.CodeUnknownType, "%s not served by agents", f.Type)) //nolint:errcheck
	}
}

// candidates orders where to attach: the alternates we were given, then
// remembered super peers, then the configured bootstrap list; lost and
// gone ones last.
func (u *Uplink) candidates(lost ids.PeerID) []string {
	var out, tail []string
	seen := map[string]bool{}
	add := func(addr string, last bool) {
		if addr == "" || seen[addr] {
			return
		}
		seen[addr] = true
		if last {
			tail = append(tail, addr)
		} else {
			out = append(out, addr)
		}
	}
	now := time.Now()
	u.mu.Lock()
	att := u.att
	goneAddr := map[string]bool{}
	for id, g := range u.gone {
		if u.goneLocked(id, now) {
			goneAddr[g.addr] = true
		}
	}
	u.mu.Unlock()
	alts := att.Alternates
	if !lost.IsZero() && len(alts) > 1 {
		// Every agent of a lost super peer reattaches at the same moment:
		// starting each at its own alternate (by Peer-ID) spreads that
		// burst of handshakes and record writes over the survivors rather
		// than landing it on the one that was least loaded when the list
		// was made.
		k := int(u.self[0]) % len(alts)
		alts = append(append([]wire.SuperPeerInfo(nil), alts[k:]...), alts[:k]...)
	}
	// Super peers known to be gone are tried last, not skipped: with
	// nothing else left, one may be back.
	for _, a := range alts {
		add(a.PeerAddr, a.PeerID == lost || goneAddr[a.PeerAddr])
	}
	for _, a := range u.loadCache() {
		add(a, goneAddr[a])
	}
	for _, a := range u.cfg.Bootstrap {
		add(a, goneAddr[a])
	}
	if !lost.IsZero() {
		add(att.SPAddr, true)
	}
	return append(out, tail...)
}

type cache struct {
	SuperPeers []string `json:"super_peers"`
}

func (u *Uplink) loadCache() []string {
	if u.cfg.CacheFile == "" {
		return nil
	}
	b, err := os.ReadFile(u.cfg.CacheFile)
	if err != nil || len(b) > 64<<10 {
		return nil
	}
	var c cache
	if err := json.Unmarshal(b, &c); err != nil {
		u.log.Warn().Err(err).Str("file", u.cfg.CacheFile).Msg("ignoring unreadable super-peer cache")
		return nil
	}
	return c.SuperPeers
}

// remember caches the current super peer and its alternates for the next run.
func (u *Uplink) remember(att Attachment) {
	if u.cfg.CacheFile == "" {
		return
	}
	c := cache{SuperPeers: []string{att.SPAddr}}
	for _, a := range att.Alternates {
		c.SuperPeers = append(c.SuperPeers, a.PeerAddr)
	}
	b, _ := json.Marshal(c)
	tmp := u.cfg.CacheFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		if err := os.Rename(tmp, u.cfg.CacheFile); err != nil {
			u.log.Debug().Err(err).Msg("super-peer cache")
		}
	}
}
