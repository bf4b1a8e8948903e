package relay

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
)

// quota counts units per user and in total. An admitted Allocate reserves
// one (gate.admit), so two sockets admitting the same user at once cannot
// both slip under the cap; its relay socket takes it over and holds it
// until Close (gate.takeUnit, relayConn.Close).
type quota struct {
	maxTotal, maxPerUser int

	mu      sync.Mutex // guards the fields below
	total   int
	perUser map[string]int // no zero entries
}

func newQuota(maxTotal, maxPerUser int) *quota {
	return &quota{maxTotal: maxTotal, maxPerUser: maxPerUser, perUser: make(map[string]int)}
}

// reserve takes a unit for user if both caps allow it.
func (q *quota) reserve(user string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.total >= q.maxTotal:
		return fmt.Errorf("%w (%d)", errQuotaTotal, q.maxTotal)
	case q.perUser[user] >= q.maxPerUser:
		return fmt.Errorf("%w (%d for %q)", errQuotaUser, q.maxPerUser, user)
	}
	q.total++
	q.perUser[user]++
	return nil
}

// acquire takes a unit without checking the caps: for a further relay
// socket of one admitted Allocate (EVEN-PORT probes, closed at once).
func (q *quota) acquire(user string) {
	q.mu.Lock()
	q.total++
	q.perUser[user]++
	q.mu.Unlock()
}

// release gives a unit back.
func (q *quota) release(user string) {
	q.mu.Lock()
	q.total--
	if q.perUser[user]--; q.perUser[user] <= 0 {
		delete(q.perUser, user)
	}
	q.mu.Unlock()
}

// held reports the units held by user (tests).
func (q *quota) held(user string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.perUser[user]
}

// relayConn is an allocation's relay socket as pion sees it. pion closes
// it exactly when the allocation ends, which makes Close our
// allocation-closed event: it gives the quota unit back. WriteTo is the
// last line of the peer policy: every datagram an allocation sends, by
// Send indication or ChannelData, goes through it.
type relayConn struct {
	net.PacketConn
	s      *Server
	g      *gate
	user   string
	client string
	lease  *pending // the admitted request whose reserved unit it holds, if it does
	once   sync.Once
}

// newRelayConn wraps pc, bound for request p (holding p's reserved unit
// if reserved), and registers it with the server and its gate.
func (s *Server) newRelayConn(pc net.PacketConn, g *gate, p *pending, reserved bool) *relayConn {
	rc := &relayConn{PacketConn: pc, s: s, g: g, user: p.user, client: p.client}
	if reserved {
		rc.lease = p
	}
	g.relayOpened(p.client)
	s.mu.Lock()
	s.relays[rc] = struct{}{}
	s.mu.Unlock()
	s.metrics.allocated.Inc()
	s.log.Debug().Str("user", p.user).Str("remote_addr", p.client).Str("relay", pc.LocalAddr().String()).
		Msg("turn allocation open")
	return rc
}

// WriteTo sends p to a peer unless the policy forbids the destination; a
// forbidden datagram is dropped silently (it is UDP) and counted.
func (c *relayConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ap, ok := addrPortOf(addr)
	reason := peerFamily
	if ok {
		reason = c.s.policy.checkPeer(ap)
	}
	if reason != "" {
		c.s.metrics.refused.WithLabelValues(reasonPermission).Inc()
		c.s.rlog.Info().Str("user", c.user).Str("remote_addr", c.client).Str("peer", addr.String()).
			Str("reason", reason).Msg("turn datagram to forbidden peer dropped")
		return len(p), nil
	}
	return c.PacketConn.WriteTo(p, addr)
}

// Close closes the socket and, the first time, ends the allocation's
// accounting.
func (c *relayConn) Close() error {
	err := c.PacketConn.Close()
	c.once.Do(func() {
		c.g.returnUnit(c.user, c.lease)
		c.g.relayClosed(c.client)
		c.s.mu.Lock()
		delete(c.s.relays, c)
		if len(c.s.relays) == 0 && c.s.drained != nil {
			close(c.s.drained)
			c.s.drained = nil
		}
		c.s.mu.Unlock()
		c.s.log.Debug().Str("user", c.user).Str("remote_addr", c.client).Msg("turn allocation closed")
	})
	return err
}

// maxBindTries bounds the ports tried per allocation.
const maxBindTries = 64

// bindRelay binds a relay socket on RelayBind, on requested if that is
// set (pion asks for a port it probed for EVEN-PORT), else on a random
// port of the range; a range no larger than maxBindTries is scanned
// completely.
func (s *Server) bindRelay(network string, requested int) (net.PacketConn, int, error) {
	if network != "udp4" {
		network = "udp4" // pion v2 always asks for udp4; nothing else is served
	}
	lo, hi := s.cfg.MinPort, s.cfg.MaxPort
	listen := func(port int) (net.PacketConn, error) {
		pc, err := net.ListenPacket(network, net.JoinHostPort(s.cfg.RelayBind, strconv.Itoa(port)))
		if err == nil {
			setBuffers(pc)
		}
		return pc, err
	}
	if requested != 0 {
		if requested < lo || requested > hi {
			return nil, 0, fmt.Errorf("bind relay port %d: %w", requested, errPortRange)
		}
		pc, err := listen(requested)
		if err != nil {
			return nil, 0, fmt.Errorf("bind relay port %d: %w", requested, err)
		}
		return pc, requested, nil
	}
	span := hi - lo + 1
	start := rand.IntN(span)
	var lastErr error
	for i := 0; i < min(span, maxBindTries); i++ {
		port := lo + rand.IntN(span)
		if span <= maxBindTries {
			port = lo + (start+i)%span
		}
		pc, err := listen(port)
		if err == nil {
			return pc, port, nil
		}
		lastErr = err
	}
	return nil, 0, fmt.Errorf("bind relay in %d-%d: %w", lo, hi, lastErr)
}
