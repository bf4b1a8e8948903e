package agent

// TURN fallback wiring (ARCHITECTURE.md §6, ordinarypeer/fallback): the
// allocation is kept on a super peer other than the attachment, its
// relayed address is published in contacts and the peer record, and the
// router's Sender is wrapped so that a payload whose overlay path failed
// is re-sent through the relays: when an error frame comes back for it,
// or, for a request, when no response from its destination arrives within
// Config.RelayAfter (a silently cut link between super peers returns no
// error frame: the forwarding super peer's TLS write just buffers).
//
// Neither path is trusted blindly: a destination is reached through the
// relays only ("sticky") once the overlay said it is unreachable or
// something of it came back through the relays, and goes back to the
// overlay when a frame of it arrives over the overlay. A timed-out
// request gets at most maxTries copies, alternating paths; the callee's
// agent absorbs the duplicates. So a slow callee, or a relay that cannot
// reach the other, costs a few duplicates, not calls.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/ordinarypeer/fallback"
	"github.com/p2psip/p2psip/ordinarypeer/uplink"
)

const (
	// recentFor is how long a payload sent over the overlay is kept for a
	// re-send through the relays if an error frame comes back for it:
	// longer than a super peer takes to give up on a silent link to
	// another (its 2 s dial bound) plus queueing on a loaded host.
	recentFor = 5 * time.Second
	// stickyFor is how long a destination whose overlay path failed is
	// reached through the relays.
	stickyFor = 30 * time.Second
	// ensureEvery re-checks the allocation (re-allocating if it died or
	// its credentials were refused).
	ensureEvery = 10 * time.Second
	// maxRelays bounds the learnt relayed addresses.
	maxRelays = 4096
	// DefaultRelayAfter is Config.RelayAfter's default: well above an
	// overlay round trip plus the callee's 100 Trying timer (200 ms), well
	// below the caller's patience and SIP's Timer B.
	DefaultRelayAfter = 1500 * time.Millisecond
	// maxPending bounds the requests awaiting their first response; past
	// it new requests are not tracked (only error frames then trigger the
	// fallback for them).
	maxPending = 1 << 16
	// dedupFor is how long an inbound request is remembered to absorb a
	// second copy of it (one re-sent through the relays after the
	// sender's bound, or the overlay copy arriving late).
	dedupFor = 10 * time.Second
	// maxSeen bounds the remembered inbound requests.
	maxSeen = 1 << 17
	// noRelayFor is how long a destination whose peer record named no
	// relayed address is not looked up again (a super peer's SIP edge
	// has none, and its slow answers would otherwise cost a lookup each).
	noRelayFor = 10 * time.Second
	// lookupTimeout bounds reading a destination's peer record for its
	// relayed address.
	lookupTimeout = 2 * time.Second
	// maxTries bounds the copies of one request the timeout fallback
	// sends, alternating paths (overlay, relays, overlay, ...): a path that
	// merely looked dead (an overloaded callee) or a relay path that does
	// not work (a relay that cannot reach the other) costs a few
	// duplicates, which the callee's agent absorbs, never a black hole.
	maxTries = 4
)

// RelayStatus is the "relay" section of the agent's status.
type RelayStatus struct {
	fallback.Stats
	OverlayOut uint64 `json:"overlay_out"`
	// Sticky is how many destinations are currently reached by relay.
	Sticky int `json:"sticky"`
	// Timeouts counts requests re-sent through the relays because their
	// destination did not answer within the bound; Lookups, peer-record
	// reads for a destination's relayed address.
	Timeouts uint64 `json:"timeouts"`
	Lookups  uint64 `json:"relay_lookups"`
	Pending  int64  `json:"pending"`
	// Duplicates counts inbound requests absorbed as second copies.
	Duplicates uint64 `json:"duplicates"`
}

// pendingReq is a request sent over the overlay whose destination has not
// answered yet.
type pendingReq struct {
	dst     ids.PeerID
	payload []byte
	at      time.Time
	// relayed: this copy went through the relays; tries counts the
	// copies sent (bounded by maxTries).
	relayed bool
	tries   int
}

// seenKey is one inbound request: its sender and transaction key.
type seenKey struct {
	src ids.PeerID
	key string
}

// seenReq is an inbound request and the last response we sent for it.
type seenReq struct {
	at   time.Time
	resp []byte
}

type seenAt struct {
	k  seenKey
	at time.Time
}

type sentPayload struct {
	txid    uint64
	dst     ids.PeerID
	payload []byte
	at      time.Time
}

// sender is the router's Sender: the uplink, with the relay as fallback.
type sender struct {
	a *Agent

	mu     sync.Mutex
	relays map[ids.PeerID]string    // destination → its relayed address
	sticky map[ids.PeerID]time.Time // destination → use relay until
	// nsticky is len(sticky), read without the lock on every inbound frame.
	nsticky atomic.Int64
	// noRelay: destinations whose peer record named no relayed address,
	// until when that answer stands.
	noRelay map[ids.PeerID]time.Time
	recent  []sentPayload // in send order, pruned after recentFor
	// pending: requests sent over the overlay awaiting their first
	// response, by transaction key (txKey); swept by runTimeouts.
	pending  map[string]pendingReq
	npending atomic.Int64 // len(pending), read without the lock
	// seen: inbound requests of the last dedupFor (seenOrder in arrival
	// order, for pruning) with our last response to each.
	seen      map[seenKey]*seenReq
	seenOrder []seenAt
	// seenPeak is the most entries seen held since it was last rebuilt.
	seenPeak int

	// after is Config.RelayAfter (≤ 0: no timeout fallback).
	after time.Duration
	// ctx bounds the peer-record lookups of resends; wg tracks them;
	// stopped (under bgMu) ends new ones once runTimeouts returns.
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	bgMu    sync.Mutex
	stopped bool

	overlayOut, timeouts, lookups, dups atomic.Uint64
}

func newSender(a *Agent) *sender {
	ctx, cancel := context.WithCancel(context.Background())
	after := a.cfg.RelayAfter
	if after == 0 {
		after = DefaultRelayAfter
	}
	return &sender{a: a, relays: make(map[ids.PeerID]string), sticky: make(map[ids.PeerID]time.Time),
		noRelay: make(map[ids.PeerID]time.Time),
		pending: make(map[string]pendingReq), seen: make(map[seenKey]*seenReq), after: after, ctx: ctx, cancel: cancel}
}

// learn records a peer's relayed address (from a contact, a peer record
// or an inbound relayed datagram).
func (s *sender) learn(p ids.PeerID, relay string) {
	if p.IsZero() || relay == "" {
		return
	}
	s.mu.Lock()
	if _, known := s.relays[p]; !known && len(s.relays) >= maxRelays {
		clear(s.relays) // crude bound; addresses are learnt again on lookup
	}
	s.relays[p] = relay
	s.mu.Unlock()
}

func (s *sender) learnContacts(cs []record.Contact) {
	for _, c := range cs {
		s.learn(c.PeerID, c.Relay)
	}
}

// relayFor returns dst's relayed address and whether dst is sticky.
func (s *sender) relayFor(dst ids.PeerID, now time.Time) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.sticky[dst]
	if ok && now.After(until) {
		delete(s.sticky, dst)
		s.nsticky.Store(int64(len(s.sticky)))
		ok = false
	}
	return s.relays[dst], ok
}

func (s *sender) stick(dst ids.PeerID, now time.Time) {
	s.mu.Lock()
	s.sticky[dst] = now.Add(stickyFor)
	s.nsticky.Store(int64(len(s.sticky)))
	s.mu.Unlock()
}

// unstick sends to dst over the overlay again: something came from dst
// over it.
func (s *sender) unstick(dst ids.PeerID) {
	if s.nsticky.Load() == 0 {
		return
	}
	s.mu.Lock()
	delete(s.sticky, dst)
	s.nsticky.Store(int64(len(s.sticky)))
	s.mu.Unlock()
}

func (s *sender) viaRelay(dst ids.PeerID, addr string, payload []byte) error {
	return s.a.fb.Send(dst, addr, payload)
}

// SendTunnel implements siproute.Sender.
func (s *sender) SendTunnel(dst, hint ids.PeerID, payload []byte) error {
	now := time.Now()
	key, isReq, method, ok := txKey(payload)
	if ok && !isReq {
		s.sentResponse(dst, key, payload)
	}
	// ACK has no response to wait for; responses are not tracked.
	track := s.after > 0 && ok && isReq && method != "ACK"
	addr, sticky := s.relayFor(dst, now)
	if addr != "" && sticky {
		if err := s.viaRelay(dst, addr, payload); err == nil {
			if track {
				s.track(key, pendingReq{dst: dst, payload: payload, at: now, relayed: true, tries: 1})
			}
			return nil
		}
	}
	if _, attached := s.a.up.Attachment(); !attached && addr != "" {
		// Failing over: the relay is the only way out.
		if err := s.viaRelay(dst, addr, payload); err == nil {
			s.stick(dst, now)
			return nil
		}
	}
	txid, err := s.a.up.SendTunnelTx(dst, hint, payload)
	if err != nil {
		if addr != "" && s.viaRelay(dst, addr, payload) == nil {
			s.stick(dst, now)
			return nil
		}
		return err
	}
	s.overlayOut.Add(1)
	s.mu.Lock()
	s.recent = append(s.recent, sentPayload{txid: txid, dst: dst, payload: payload, at: now})
	// This runs for every tunnel message: drop expired entries in bulk once
	// they are half the slice (one copy per many sends), not with a shift
	// of the whole slice on each send. failed() checks ages anyway.
	s.pruneRecentLocked(now, true)
	s.mu.Unlock()
	if track {
		s.track(key, pendingReq{dst: dst, payload: payload, at: now, tries: 1})
	}
	return nil
}

// track adds a request to the pending list (a retransmission, same key,
// keeps the first send time).
func (s *sender) track(key string, p pendingReq) {
	s.mu.Lock()
	if _, dup := s.pending[key]; !dup && len(s.pending) < maxPending {
		s.pending[key] = p
		s.npending.Store(int64(len(s.pending)))
	}
	s.mu.Unlock()
}

// inbound looks at a message from src (over the overlay or the relays)
// before the router gets it, and reports whether it should: a response
// settles the request it answers (no timeout re-send for it); a request
// that already came in within dedupFor (the same transaction key from the
// same peer: the copy its agent re-sent through the relays, or the late
// overlay copy) is absorbed here, and the last response we sent for it is
// sent again. sipgo ends a server transaction as soon as the proxy has
// answered on a reliable transport, which the tunnel is to it, so it
// would take the copy for a new request and ring the phone twice.
func (s *sender) inbound(src ids.PeerID, payload []byte) bool {
	key, isReq, method, ok := txKey(payload)
	if !ok {
		return true
	}
	now := time.Now()
	if !isReq {
		if s.npending.Load() != 0 {
			s.mu.Lock()
			if p, found := s.pending[key]; found && p.dst == src {
				delete(s.pending, key)
				s.npending.Store(int64(len(s.pending)))
			}
			s.mu.Unlock()
		}
		return true
	}
	if method == "ACK" {
		return true // no transaction; the phone absorbs duplicates
	}
	sk := seenKey{src, key}
	s.mu.Lock()
	if e, dup := s.seen[sk]; dup && now.Sub(e.at) < dedupFor {
		resp := e.resp
		s.mu.Unlock()
		s.dups.Add(1)
		if resp != nil {
			if err := s.SendTunnel(src, ids.PeerID{}, slices.Clone(resp)); err != nil {
				s.a.log.Debug().Err(err).Str("peer_id", src.Short()).Msg("response to a duplicate request")
			}
		}
		return false
	}
	if len(s.seen) < maxSeen {
		s.seen[sk] = &seenReq{at: now}
		s.seenOrder = append(s.seenOrder, seenAt{sk, now})
	}
	// Prune in bulk, as SendTunnel does with recent.
	s.pruneSeenLocked(now, true)
	s.mu.Unlock()
	return true
}

// prune drops what has outlived recentFor and dedupFor. SendTunnel and
// inbound prune only as traffic passes, so without this an overload
// followed by silence kept its last seconds of payloads (and the
// responses remembered for dedup, tens of MB at a few thousand calls/s)
// for as long as the silence lasted; runTimeouts calls it on every tick.
func (s *sender) prune(now time.Time) {
	s.mu.Lock()
	s.pruneRecentLocked(now, false)
	s.pruneSeenLocked(now, false)
	s.mu.Unlock()
}

// pruneRecentLocked drops the payloads older than recentFor: all of them,
// or with bulk set only once they are half the list (the per-send path).
func (s *sender) pruneRecentLocked(now time.Time, bulk bool) {
	i := sort.Search(len(s.recent), func(i int) bool { return now.Sub(s.recent[i].at) <= recentFor })
	if i > 0 && (!bulk || i >= len(s.recent)/2) {
		s.recent = dropFront(s.recent, i)
	}
}

// pruneSeenLocked forgets the inbound requests older than dedupFor, with
// bulk as pruneRecentLocked.
func (s *sender) pruneSeenLocked(now time.Time, bulk bool) {
	i := sort.Search(len(s.seenOrder), func(i int) bool { return now.Sub(s.seenOrder[i].at) < dedupFor })
	if i == 0 || (bulk && i < len(s.seenOrder)/2) {
		return
	}
	for _, o := range s.seenOrder[:i] {
		if e := s.seen[o.k]; e != nil && e.at.Equal(o.at) {
			delete(s.seen, o.k)
		}
	}
	s.seenOrder = dropFront(s.seenOrder, i)
	// A Go map keeps the buckets of its largest size: after a burst
	// (up to maxSeen entries) it is rebuilt at its present size.
	if s.seenPeak = max(s.seenPeak, len(s.seen)+i); s.seenPeak > shrinkMin && len(s.seen) < s.seenPeak/4 {
		// Copied by hand: maps.Clone may keep the source's size.
		m := make(map[seenKey]*seenReq, len(s.seen))
		for k, e := range s.seen {
			m[k] = e
		}
		s.seen, s.seenPeak = m, len(m)
	}
}

// shrinkMin is the capacity below which dropFront and pruneSeenLocked do
// not bother giving memory back.
const shrinkMin = 1024

// dropFront removes l's first n elements. The vacated tail is zeroed, or
// the payloads and keys in it would stay reachable through the backing
// array until overwritten (an overload's worth of them, for as long as
// the traffic stays lower), and a backing array four times too large for
// what is left is replaced by one that fits.
func dropFront[T any](l []T, n int) []T {
	if c := cap(l); c > shrinkMin && len(l)-n < c/4 {
		return append(make([]T, 0, max(2*(len(l)-n), shrinkMin/4)), l[n:]...)
	}
	m := copy(l, l[n:])
	clear(l[m:])
	return l[:m]
}

// sentResponse keeps the last response sent to dst for a request it sent
// us, for inbound to repeat when that request comes in again.
func (s *sender) sentResponse(dst ids.PeerID, key string, payload []byte) {
	s.mu.Lock()
	if e := s.seen[seenKey{dst, key}]; e != nil {
		e.resp = payload
	}
	s.mu.Unlock()
}

// settle forgets a pending request (it was re-sent through the relays).
func (s *sender) settle(payload []byte) {
	if s.npending.Load() == 0 {
		return
	}
	if key, isReq, _, ok := txKey(payload); ok && isReq {
		s.mu.Lock()
		delete(s.pending, key)
		s.npending.Store(int64(len(s.pending)))
		s.mu.Unlock()
	}
}

// failed handles an error frame for (dst, txid): the payload is re-sent
// through the relays and dst becomes sticky. It reports whether it took
// the error on; when dst's relayed address is not known yet, it is read
// from dst's peer record in the background (the caller runs on the
// uplink's reader and must not block), and dst's tunnel connection is
// closed if there is none.
func (s *sender) failed(dst ids.PeerID, txid uint64) bool {
	now := time.Now()
	s.mu.Lock()
	var payload []byte
	for i := len(s.recent) - 1; i >= 0; i-- {
		if p := s.recent[i]; p.txid == txid && p.dst == dst && now.Sub(p.at) <= recentFor {
			payload = p.payload
			break
		}
	}
	addr := s.relays[dst]
	s.mu.Unlock()
	if payload == nil {
		// Too old to re-send: a super peer gives up on a silent link only
		// after its dial bound, and under load its error can come after
		// recentFor. The request is still in the timeout sweep's hands, on
		// the relays from now on; closing dst's connection here (the
		// caller's fallback) would fail its live transactions with 480
		// although the relays carry them. dst is gone only if it has no
		// relayed address at all.
		// Without the sweep (RelayAfter off) nothing would carry the
		// request on: fall through to closing dst.
		if addr != "" && s.after > 0 {
			s.stick(dst, now)
			return true
		}
		if s.after > 0 {
			return s.resendLater(dst, nil, "error frame", true)
		}
		return false
	}
	s.settle(payload)
	p := keyed{pendingReq: pendingReq{dst: dst, payload: payload, at: now, tries: 1}}
	if key, isReq, method, ok := txKey(payload); ok && isReq && method != "ACK" && s.after > 0 {
		p.key = key // tracked on the relay path: no answer there → overlay again
	}
	if addr == "" {
		return s.resendLater(dst, []keyed{p}, "error frame", true)
	}
	if err := s.viaRelay(dst, addr, payload); err != nil {
		s.a.log.Debug().Err(err).Str("peer_id", dst.Short()).Msg("relay fallback")
		return false
	}
	if p.key != "" {
		s.retrack(p, true)
	}
	// The overlay said dst is unreachable: until something says
	// otherwise (a frame from dst over it, or no answer on the relays),
	// the relays are the way to dst.
	s.stick(dst, now)
	s.a.log.Info().Str("peer_id", dst.Short()).Str("relay", addr).Msg("overlay path failed: sent through the TURN relays")
	return true
}

// resendLater looks up dst's relayed address in its peer record and
// re-sends payloads through the relays, on a goroutine of its own. With
// no relayed address to be found and gone set (the overlay said dst is
// unreachable), dst's tunnel connection is closed so that its
// transactions fail at once; after a mere timeout they go on waiting (a
// slow answer may still come: a super peer's SIP edge, which has no
// relay, behind a lossy phone). It returns false if it could not start
// (the agent is stopping).
func (s *sender) resendLater(dst ids.PeerID, payloads []keyed, why string, gone bool) bool {
	s.bgMu.Lock()
	if s.stopped {
		s.bgMu.Unlock()
		return false
	}
	s.wg.Add(1)
	s.bgMu.Unlock()
	go func() {
		defer s.wg.Done()
		addr, err := s.lookupRelay(dst)
		if err != nil {
			s.a.log.Info().Err(err).Str("peer_id", dst.Short()).Str("why", why).Msg("overlay path failed and no relayed address known")
			if gone {
				s.a.router.PeerGone(dst)
			}
			return
		}
		s.resend(dst, addr, payloads, why)
		if gone {
			s.stick(dst, time.Now())
		}
	}()
	return true
}

// resend sends requests to dst's relayed address and tracks them there.
func (s *sender) resend(dst ids.PeerID, addr string, ps []keyed, why string) {
	sent := 0
	for _, p := range ps {
		if err := s.viaRelay(dst, addr, p.payload); err != nil {
			s.a.log.Debug().Err(err).Str("peer_id", dst.Short()).Msg("relay fallback")
			continue
		}
		sent++
		if p.key != "" {
			s.retrack(p, true)
		}
	}
	if sent > 0 {
		s.a.log.Info().Str("peer_id", dst.Short()).Str("relay", addr).Int("messages", sent).Str("why", why).
			Msg("overlay path failed: sent through the TURN relays")
	}
}

// lookupRelay reads dst's relayed address from its peer record (for a
// destination whose contact carried none: registered before its
// allocation, or reached through a Route header) and learns it.
func (s *sender) lookupRelay(dst ids.PeerID) (string, error) {
	s.mu.Lock()
	until, miss := s.noRelay[dst]
	if miss && time.Now().After(until) {
		delete(s.noRelay, dst)
		miss = false
	}
	s.mu.Unlock()
	if miss {
		return "", fmt.Errorf("peer record of %s: %w (looked up within %s)", dst.Short(), errNoRelay, noRelayFor)
	}
	addr, err := s.readPeerRecord(dst)
	if errors.Is(err, errNoRelay) {
		s.mu.Lock()
		if len(s.noRelay) >= maxRelays {
			clear(s.noRelay)
		}
		s.noRelay[dst] = time.Now().Add(noRelayFor)
		s.mu.Unlock()
	}
	return addr, err
}

func (s *sender) readPeerRecord(dst ids.PeerID) (string, error) {
	s.lookups.Add(1)
	ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
	defer cancel()
	sess, err := s.a.up.Session(ctx)
	if err != nil {
		return "", fmt.Errorf("peer record of %s: %w", dst.Short(), err)
	}
	rec, err := sess.Get(ctx, record.KindPeer, dst.String())
	if werr := (*wire.Error)(nil); errors.As(err, &werr) && werr.Code == wire.CodeNotFound {
		return "", fmt.Errorf("peer record of %s: none: %w", dst.Short(), errNoRelay)
	}
	if err != nil {
		return "", fmt.Errorf("peer record of %s: %w", dst.Short(), err)
	}
	var best record.Entry
	for _, e := range rec.Live(time.Now()).Entries {
		if e.Peer != nil && e.Peer.Relay != "" && e.Version >= best.Version {
			best = e
		}
	}
	if best.Peer == nil {
		return "", fmt.Errorf("peer record of %s: %w", dst.Short(), errNoRelay)
	}
	s.learn(dst, best.Peer.Relay)
	return best.Peer.Relay, nil
}

var errNoRelay = errors.New("no relayed address")

// runTimeouts re-sends through the relays every request that got no
// response from its destination within s.after, until ctx ends.
func (s *sender) runTimeouts(ctx context.Context) error {
	defer func() {
		s.bgMu.Lock()
		s.stopped = true // no resendLater may start after this
		s.bgMu.Unlock()
		s.cancel()
		s.wg.Wait()
	}()
	every := time.Second // pruning only
	if s.after > 0 {
		every = max(s.after/4, 20*time.Millisecond)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			if s.after > 0 {
				s.sweep(now)
			}
			s.prune(now)
		}
	}
}

// keyed is a pending request with its transaction key.
type keyed struct {
	key string
	pendingReq
}

// sweep takes the requests older than s.after off the pending list and
// sends another copy on the other path: a copy that went over the
// overlay goes through the relays (grouped by destination: one relayed
// address lookup each), one that went through the relays goes over the
// overlay. A request is re-tracked until maxTries copies went out. A
// destination becomes sticky only when the overlay said it is
// unreachable or something of it came back through the relays (newRelay's
// Deliver), and stops being so when a frame of it arrives over the
// overlay (Agent.tunnel) or stickyFor passes without relayed traffic.
func (s *sender) sweep(now time.Time) {
	if s.npending.Load() == 0 {
		return
	}
	toRelay := map[ids.PeerID][]keyed{}
	var toOverlay []keyed
	s.mu.Lock()
	for k, p := range s.pending {
		if now.Sub(p.at) < s.after {
			continue
		}
		delete(s.pending, k)
		if p.relayed {
			toOverlay = append(toOverlay, keyed{k, p})
		} else {
			toRelay[p.dst] = append(toRelay[p.dst], keyed{k, p})
		}
	}
	// The overlay path to those destinations is deemed broken: their
	// younger requests go through the relays now too instead of each
	// waiting out the bound (at 20 calls/s, 30 INVITEs are under way in
	// 1.5 s).
	for k, p := range s.pending {
		if ps, broken := toRelay[p.dst]; broken && !p.relayed {
			toRelay[p.dst] = append(ps, keyed{k, p})
			delete(s.pending, k)
		}
	}
	s.npending.Store(int64(len(s.pending)))
	s.mu.Unlock()
	if len(toRelay) > 0 && s.a.up != nil {
		// Our own super peer may be what died, silently (no closed
		// connection): have the uplink ping it now rather than at its
		// next keepalive.
		s.a.up.Probe()
	}
	for _, p := range toOverlay {
		// The destination stays sticky: one slow answer says little about
		// the path, and flipping it would send everything else into the
		// overlay that may well be cut (the netns scenario 3 lost calls
		// that way). This one request gets its copy over the overlay.
		s.timeouts.Add(1)
		if _, err := s.a.up.SendTunnelTx(p.dst, ids.PeerID{}, p.payload); err != nil {
			s.a.log.Debug().Err(err).Str("peer_id", p.dst.Short()).Msg("relayed request unanswered; overlay copy failed too")
			continue
		}
		s.overlayOut.Add(1)
		s.retrack(p, false)
	}
	why := "no response within " + s.after.String()
	for dst, ps := range toRelay {
		s.timeouts.Add(uint64(len(ps)))
		s.mu.Lock()
		addr := s.relays[dst]
		s.mu.Unlock()
		if addr == "" {
			s.resendLater(dst, ps, why, false)
			continue
		}
		s.resend(dst, addr, ps, why)
	}
}

// retrack puts a request whose copy just went out back on the pending
// list, unless it has had its copies.
func (s *sender) retrack(p keyed, relayed bool) {
	if p.tries >= maxTries {
		return
	}
	p.tries++
	p.relayed = relayed
	p.at = time.Now()
	s.track(p.key, p.pendingReq)
}

func (s *sender) status() RelayStatus {
	st := RelayStatus{Stats: s.a.fb.Stats(), OverlayOut: s.overlayOut.Load(),
		Timeouts: s.timeouts.Load(), Lookups: s.lookups.Load(), Pending: s.npending.Load(),
		Duplicates: s.dups.Load()}
	now := time.Now()
	s.mu.Lock()
	for _, until := range s.sticky {
		if now.Before(until) {
			st.Sticky++
		}
	}
	s.mu.Unlock()
	return st
}

// credSource is the agent's credentials for attaching and for TURN: the
// configured ones, replaced by the credentials file's content whenever the
// file changes (an operator or a provisioning job renews it before expiry).
type credSource struct {
	path string
	log  *zerolog.Logger

	mu    sync.Mutex
	cur   auth.Credentials
	mtime time.Time
	size  int64
}

// get returns the newest credentials; a file that cannot be read or
// parsed, names another user or expires earlier leaves them as they are.
func (c *credSource) get() auth.Credentials {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.path == "" {
		return c.cur
	}
	fi, err := os.Stat(c.path)
	if err != nil || (fi.ModTime().Equal(c.mtime) && fi.Size() == c.size) {
		return c.cur
	}
	c.mtime, c.size = fi.ModTime(), fi.Size()
	cr, err := auth.LoadCredentials(c.path)
	if err != nil {
		c.log.Warn().Err(err).Msg("credentials file changed but cannot be used")
		return c.cur
	}
	_, user, err := auth.ParseUsername(cr.Username)
	_, curUser, _ := auth.ParseUsername(c.cur.Username)
	switch {
	case err != nil:
		c.log.Warn().Err(err).Msg("credentials file changed but cannot be used")
	case user != curUser:
		c.log.Warn().Str("user", user).Str("want", curUser).Msg("credentials file now names another user: ignored")
	case !fallback.CredExpiry(cr).After(fallback.CredExpiry(c.cur)):
		// Same or older: nothing to do.
	default:
		c.cur = cr
		c.log.Info().Time("expires", fallback.CredExpiry(cr)).Msg("credentials reloaded")
	}
	return c.cur
}

// newRelay builds the agent's TURN allocation holder; relayed payloads go
// to the router as three hops (X → relay(X) → relay(Y) → Y).
func (a *Agent) newRelay() *fallback.Relay {
	return fallback.New(fallback.Config{
		Key: a.key, Self: a.self, Realm: a.cfg.Overlay, Log: a.log,
		Credentials: a.creds.get,
		Deliver: func(src ids.PeerID, from string, payload []byte) {
			a.send.learn(src, from)
			// src's overlay path to us failed; ours to src most likely
			// too (a cut link drops both ways): answer the same way.
			a.send.stick(src, time.Now())
			if a.send.inbound(src, payload) {
				a.router.Deliver(src, ids.PeerID{}, 3, payload)
			}
		},
	})
}

// kickRelay asks runRelay to re-check the allocation now (attachment
// changed).
func (a *Agent) kickRelay() {
	select {
	case a.relayKick <- struct{}{}:
	default:
	}
}

// runRelay keeps the allocation: on every attachment and every
// ensureEvery; when its relayed address changes, contacts and the peer
// record are re-stored with it.
func (a *Agent) runRelay(ctx context.Context) error {
	defer a.fb.Close()
	// Closing also ends an allocation attempt in flight: pion retransmits
	// to a dead TURN server for about 8 s, and the agent's shutdown would
	// wait for it.
	stop := context.AfterFunc(ctx, a.fb.Close)
	defer stop()
	t := time.NewTicker(ensureEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.relayKick:
		case <-t.C:
		}
		att, ok := a.up.Attachment()
		if !ok {
			continue
		}
		servers, permits := relayTargets(att)
		changed, err := a.fb.Ensure(att.TURNAddr, servers, permits)
		if err != nil {
			a.log.Warn().Err(err).Msg("TURN allocation")
		}
		if changed {
			a.kickPublish() // the relayed address is in both
		}
	}
}

// relayTargets lists the attachment's alternates' TURN servers and every
// super peer's IP (for permissions).
func relayTargets(att uplink.Attachment) (servers, permits []string) {
	addIP := func(hostport string) {
		if h, _, err := net.SplitHostPort(hostport); err == nil {
			permits = append(permits, h)
		}
	}
	addIP(att.SPAddr)
	addIP(att.TURNAddr)
	for _, sp := range att.Alternates {
		if sp.TURNAddr != "" && sp.TURNAddr != att.TURNAddr {
			servers = append(servers, sp.TURNAddr)
		}
		addIP(sp.PeerAddr)
		addIP(sp.TURNAddr)
	}
	return servers, permits
}
