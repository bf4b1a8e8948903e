package siproute

import (
	"sync"
	"sync/atomic"
)

// Stats is a snapshot of the router's counters since New.
type Stats struct {
	// TunnelIn counts payloads passed to Deliver; TunnelOut counts
	// SendTunnel calls (each one whole SIP message).
	TunnelIn, TunnelOut uint64
	// InByHops counts delivered payloads by the overlay hop count they
	// took; index 0 collects out-of-range counts (0 or above 3).
	InByHops [4]uint64
	// MaxHops is the largest hop count Deliver has seen.
	MaxHops uint8
	// Dropped counts inbound payloads thrown away: oversized, badly framed,
	// over the hop bound, queue full, or arriving while not serving.
	Dropped uint64
	// TunnelErrors counts SendTunnel failures.
	TunnelErrors uint64
	// Resets counts virtual connections sipgo closed on its own, which it
	// does when a payload passes our framing check but not its parser;
	// that peer's pending transactions fail and its next message starts a
	// new connection.
	Resets uint64
	// Forwarded counts requests sent downstream (statefully or, for ACK,
	// statelessly), by method; one forked request counts once per branch.
	Forwarded map[string]uint64
	// Forks counts requests sent to more than one contact; Branches counts
	// the client transactions those and all other requests created.
	Forks, Branches uint64
	// Cancels counts CANCELs sent downstream (losing fork branches and
	// upstream cancellations).
	Cancels uint64
	// StatelessResponses counts 2xx retransmissions forwarded outside a
	// transaction.
	StatelessResponses uint64
	// Rejected counts requests answered by the router itself with an
	// error status (404, 403, 483, ...).
	Rejected uint64
	// Overload counts requests refused with 503 past MaxInFlight.
	Overload uint64
}

// counters are the live values behind Stats.
type counters struct {
	tunnelIn, tunnelOut, dropped, tunnelErrors atomic.Uint64
	resets                                     atomic.Uint64
	inByHops                                   [4]atomic.Uint64
	maxHops                                    atomic.Uint32
	forks, branches, cancels                   atomic.Uint64
	stateless, rejected, overload              atomic.Uint64

	mu        sync.Mutex // guards forwarded
	forwarded map[string]uint64
}

func (c *counters) hops(h uint8) {
	i := int(h)
	if i < 1 || i > 3 {
		i = 0
	}
	c.inByHops[i].Add(1)
	for {
		m := c.maxHops.Load()
		if uint32(h) <= m || c.maxHops.CompareAndSwap(m, uint32(h)) {
			return
		}
	}
}

func (c *counters) forward(method string) {
	c.mu.Lock()
	if c.forwarded == nil {
		c.forwarded = make(map[string]uint64)
	}
	c.forwarded[method]++
	c.mu.Unlock()
}

func (c *counters) snapshot() Stats {
	s := Stats{
		TunnelIn: c.tunnelIn.Load(), TunnelOut: c.tunnelOut.Load(),
		MaxHops: uint8(c.maxHops.Load()), Dropped: c.dropped.Load(), TunnelErrors: c.tunnelErrors.Load(),
		Resets: c.resets.Load(),
		Forks:  c.forks.Load(), Branches: c.branches.Load(), Cancels: c.cancels.Load(),
		StatelessResponses: c.stateless.Load(), Rejected: c.rejected.Load(), Overload: c.overload.Load(),
		Forwarded: make(map[string]uint64),
	}
	for i := range s.InByHops {
		s.InByHops[i] = c.inByHops[i].Load()
	}
	c.mu.Lock()
	for k, v := range c.forwarded {
		s.Forwarded[k] = v
	}
	c.mu.Unlock()
	return s
}
