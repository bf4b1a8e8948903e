package agent

// TURN fallback wiring (ARCHITECTURE.md §6, ordinarypeer/fallback): the
// allocation is kept on a super peer other than the attachment, its
// relayed address is published in contacts and the peer record, and the
// router's Sender is wrapped so that a payload whose overlay path failed
// is re-sent through the relays.

import (
	"context"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/ordinarypeer/fallback"
	"github.com/p2psip/p2psip/ordinarypeer/uplink"
)

const (
	// recentFor is how long a payload sent over the overlay is kept for a
	// re-send through the relays if an error frame comes back for it.
	recentFor = 2 * time.Second
	// stickyFor is how long a destination whose overlay path failed is
	// reached through the relays.
	stickyFor = 30 * time.Second
	// ensureEvery re-checks the allocation (re-allocating if it died or
	// its credentials were refused).
	ensureEvery = 10 * time.Second
	// maxRelays bounds the learnt relayed addresses.
	maxRelays = 4096
)

// RelayStatus is the "relay" section of the agent's status.
type RelayStatus struct {
	fallback.Stats
	OverlayOut uint64 `json:"overlay_out"`
	// Sticky is how many destinations are currently reached by relay.
	Sticky int `json:"sticky"`
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
	recent []sentPayload            // in send order, pruned after recentFor

	overlayOut atomic.Uint64
}

func newSender(a *Agent) *sender {
	return &sender{a: a, relays: make(map[ids.PeerID]string), sticky: make(map[ids.PeerID]time.Time)}
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
		ok = false
	}
	return s.relays[dst], ok
}

func (s *sender) stick(dst ids.PeerID, now time.Time) {
	s.mu.Lock()
	s.sticky[dst] = now.Add(stickyFor)
	s.mu.Unlock()
}

func (s *sender) viaRelay(dst ids.PeerID, addr string, payload []byte) error {
	return s.a.fb.Send(addr, payload)
}

// SendTunnel implements siproute.Sender.
func (s *sender) SendTunnel(dst, hint ids.PeerID, payload []byte) error {
	now := time.Now()
	addr, sticky := s.relayFor(dst, now)
	if addr != "" && sticky {
		if err := s.viaRelay(dst, addr, payload); err == nil {
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
	i := sort.Search(len(s.recent), func(i int) bool { return now.Sub(s.recent[i].at) <= recentFor })
	if i > 0 && i >= len(s.recent)/2 {
		s.recent = append(s.recent[:0], s.recent[i:]...)
	}
	s.mu.Unlock()
	return nil
}

// failed handles an error frame for (dst, txid): the payload is re-sent
// through the relays and dst becomes sticky. It reports whether it did.
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
	if payload == nil || addr == "" {
		return false
	}
	if err := s.viaRelay(dst, addr, payload); err != nil {
		s.a.log.Debug().Err(err).Str("peer_id", dst.Short()).Msg("relay fallback")
		return false
	}
	s.stick(dst, now)
	s.a.log.Info().Str("peer_id", dst.Short()).Str("relay", addr).Msg("overlay path failed: sent through the TURN relays")
	return true
}

func (s *sender) status() RelayStatus {
	st := RelayStatus{Stats: s.a.fb.Stats(), OverlayOut: s.overlayOut.Load()}
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

// newRelay builds the agent's TURN allocation holder; relayed payloads go
// to the router as three hops (X → relay(X) → relay(Y) → Y).
func (a *Agent) newRelay() *fallback.Relay {
	return fallback.New(fallback.Config{
		Self: a.self, Realm: a.cfg.Overlay, Log: a.log,
		Credentials: func() auth.Credentials { return a.cfg.Credentials },
		Deliver: func(src ids.PeerID, from string, payload []byte) {
			a.send.learn(src, from)
			a.router.Deliver(src, ids.PeerID{}, 3, payload)
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
		if changed && ctx.Err() == nil {
			if err := a.storePeerRecord(ctx); err != nil {
				a.log.Warn().Err(err).Msg("store peer record")
			}
			if err := a.reg.Restore(ctx); err != nil {
				a.log.Warn().Err(err).Msg("re-store contacts")
			}
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
