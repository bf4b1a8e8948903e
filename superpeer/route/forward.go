package route

import (
	"context"
	"errors"
	"time"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/link"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/superpeer/session"
)

// lookupTimeout bounds finding and dialling a destination's super peer.
const lookupTimeout = 2 * time.Second

// Tunnel forwards one Tunnel frame that arrived on c from peer. It runs on
// the connection's reader and never blocks: a frame that needs a store
// lookup or a new link is handled on a bounded goroutine.
func (r *Router) Tunnel(peer session.Peer, c *link.Conn, f *wire.Frame) {
	if f.Flags&wire.FlagRouted == 0 {
		r.drop("unrouted", f)
		return
	}
	fromAgent := peer.Role != wire.RoleSuperPeer
	if fromAgent {
		if peer.Role != wire.RoleAgent || f.Src != peer.ID {
			// Agents send as themselves only; clients do not tunnel.
			r.fail(c, f, wire.Errorf(wire.CodeForbidden, "tunnel source must be the session's own Peer-ID"))
			return
		}
		r.m.fromAgents.Inc()
	}
	if f.Dst == r.cfg.Self {
		if r.cfg.Local == nil {
			r.fail(c, f, wire.Errorf(wire.CodeUnknownPeer, "super peer %s takes no tunnel traffic", r.cfg.Self.Short()))
			return
		}
		if fromAgent {
			f.Via = r.cfg.Self
		}
		r.m.delivered.Inc()
		r.cfg.Local(f)
		return
	}
	if dst := r.attachedConn(f.Dst); dst != nil {
		if fromAgent {
			f.Via = r.cfg.Self
		}
		r.deliver(c, dst, f)
		return
	}
	if !fromAgent {
		// Second super peer and the agent is not here: never a third
		// super peer (that would be a fourth hop).
		r.fail(c, f, wire.Errorf(wire.CodeUnknownPeer, "peer %s is not attached here", f.Dst.Short()))
		return
	}
	hint := f.Via
	f.Via = r.cfg.Self
	if hint != (ids.PeerID{}) && hint != r.cfg.Self && r.isMember(hint) {
		r.toSuperPeer(c, hint, f)
		return
	}
	// No usable hint: find the agent's attachment in its peer record.
	select {
	case r.sem <- struct{}{}:
	default:
		r.fail(c, f, wire.Errorf(wire.CodeUnavailable, "too many lookups in flight"))
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() { <-r.sem }()
		ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
		defer cancel()
		sp, werr := r.attachmentOf(ctx, f.Dst)
		if werr != nil {
			r.fail(c, f, werr)
			return
		}
		if sp == r.cfg.Self {
			if dst := r.attachedConn(f.Dst); dst != nil {
				r.deliver(c, dst, f)
				return
			}
			r.fail(c, f, wire.Errorf(wire.CodeUnknownPeer, "peer %s is not attached", f.Dst.Short()))
			return
		}
		r.toSuperPeerWait(ctx, c, sp, f)
	}()
}

func (r *Router) attachedConn(id ids.PeerID) *link.Conn {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.attached[id]
}

func (r *Router) isMember(id ids.PeerID) bool {
	for _, m := range r.cfg.Members() {
		if m.PeerID == id {
			return true
		}
	}
	return false
}

// attachmentOf reads an agent's peer record.
func (r *Router) attachmentOf(ctx context.Context, id ids.PeerID) (ids.PeerID, *wire.Error) {
	rec, err := r.cfg.Records.Get(ctx, record.KindPeer, id.String())
	if err != nil {
		return ids.PeerID{}, wire.Errorf(wire.CodeUnknownPeer, "no attachment known for %s: %v", id.Short(), err)
	}
	for _, e := range rec.Entries {
		if e.Peer != nil && !e.Peer.SP.IsZero() {
			return e.Peer.SP, nil
		}
	}
	return ids.PeerID{}, wire.Errorf(wire.CodeUnknownPeer, "no attachment known for %s", id.Short())
}

// deliver hands f to an attached agent (the last hop).
func (r *Router) deliver(from, to *link.Conn, f *wire.Frame) {
	if err := f.Forward(); err != nil {
		r.m.hopLimit.Inc()
		r.fail(from, f, wire.Errorf(wire.CodeHopLimit, "hop limit"))
		return
	}
	if err := to.Send(f); err != nil {
		r.drop("queue_full", f)
		return
	}
	r.m.delivered.Inc()
}

// toSuperPeer forwards f to super peer sp over an existing link, or dials
// one in the background.
func (r *Router) toSuperPeer(from *link.Conn, sp ids.PeerID, f *wire.Frame) {
	if err := f.Forward(); err != nil {
		r.m.hopLimit.Inc()
		r.fail(from, f, wire.Errorf(wire.CodeHopLimit, "hop limit"))
		return
	}
	// Fast path, nearly every frame: the link is up. Sending here keeps
	// the frames of one reader in order and costs no goroutine, context
	// or timer per frame (which was a tenth of a call's CPU).
	if c := r.openLink(sp); c != nil {
		switch err := c.Send(f); {
		case err == nil:
			r.m.forwarded.Inc()
			return
		case errors.Is(err, link.ErrQueueFull):
			r.drop("queue_full", f)
			return
		}
		// Closed under us: the slow path redials.
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
		defer cancel()
		r.sendTo(ctx, from, sp, f)
	}()
}

func (r *Router) toSuperPeerWait(ctx context.Context, from *link.Conn, sp ids.PeerID, f *wire.Frame) {
	if err := f.Forward(); err != nil {
		r.m.hopLimit.Inc()
		r.fail(from, f, wire.Errorf(wire.CodeHopLimit, "hop limit"))
		return
	}
	r.sendTo(ctx, from, sp, f)
}

func (r *Router) sendTo(ctx context.Context, from *link.Conn, sp ids.PeerID, f *wire.Frame) {
	if drop, blocked := r.blocked.Load(sp); blocked {
		if drop.(bool) {
			r.drop("dropped_for_test", f)
			return
		}
		r.fail(from, f, wire.Errorf(wire.CodeUnknownPeer, "super peer %s unreachable: blocked for test", sp.Short()))
		return
	}
	c, err := r.cfg.Links.Conn(ctx, sp)
	if err != nil {
		// The hint may name a super peer that just died; the agent has
		// reattached elsewhere and said so in its peer record.
		alt, werr := r.attachmentOf(ctx, f.Dst)
		switch {
		case werr == nil && alt == r.cfg.Self:
			if dst := r.attachedConn(f.Dst); dst != nil {
				if err := dst.Send(f); err != nil {
					r.drop("queue_full", f)
				}
				return
			}
		case werr == nil && alt != sp:
			c, err = r.cfg.Links.Conn(ctx, alt)
		}
	}
	if err != nil {
		r.fail(from, f, wire.Errorf(wire.CodeUnknownPeer, "super peer %s unreachable: %v", sp.Short(), err))
		return
	}
	if err := c.Send(f); err != nil {
		if errors.Is(err, link.ErrQueueFull) {
			r.drop("queue_full", f)
			return
		}
		r.fail(from, f, wire.Errorf(wire.CodeUnknownPeer, "super peer %s: %v", sp.Short(), err))
		return
	}
	r.m.forwarded.Inc()
}

// fail answers an undeliverable frame with an error frame back along the
// connection it came from. Error frames themselves are dropped.
func (r *Router) fail(c *link.Conn, f *wire.Frame, e *wire.Error) {
	r.m.failed.WithLabelValues(codeLabel(e.Code)).Inc()
	if f.Flags&wire.FlagError != 0 || f.Type != wire.TypeTunnel {
		return
	}
	body, err := wire.Marshal(e)
	if err != nil {
		return
	}
	back := &wire.Frame{Header: wire.Header{
		Type: wire.TypeTunnel, Flags: wire.FlagRouted | wire.FlagError, TxID: f.TxID,
		Src: f.Dst, Dst: f.Src, Via: r.cfg.Self, Hops: 1,
	}, Body: body}
	if err := c.Send(back); err != nil {
		r.drop("queue_full", back)
	}
}

func (r *Router) drop(reason string, f *wire.Frame) {
	r.m.dropped.WithLabelValues(reason).Inc()
	r.log.Debug().Str("reason", reason).Str("peer_id", f.Dst.Short()).Msg("tunnel frame dropped")
}

func codeLabel(c wire.Code) string {
	switch c {
	case wire.CodeUnknownPeer:
		return "unknown_peer"
	case wire.CodeHopLimit:
		return "hop_limit"
	case wire.CodeForbidden:
		return "forbidden"
	case wire.CodeUnavailable:
		return "unavailable"
	}
	return "other"
}

// Send originates a tunnel frame at this super peer (its SIP edge) for
// dst: one hop to an agent attached here, two through dst's super peer.
// hint is dst's super peer when known. Errors for a destination that
// turns out unreachable come back to Local as error frames.
func (r *Router) Send(dst, hint ids.PeerID, txid uint64, payload []byte) error {
	f := &wire.Frame{Header: wire.Header{
		Type: wire.TypeTunnel, Flags: wire.FlagRouted, TxID: txid,
		Src: r.cfg.Self, Dst: dst, Via: r.cfg.Self,
	}, Body: payload}
	if c := r.attachedConn(dst); c != nil {
		f.Hops = 1
		if err := c.Send(f); err != nil {
			r.drop("queue_full", f)
			return err
		}
		r.m.delivered.Inc()
		return nil
	}
	sp := hint
	if sp.IsZero() || sp == r.cfg.Self || !r.isMember(sp) {
		ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
		defer cancel()
		var werr *wire.Error
		if sp, werr = r.attachmentOf(ctx, dst); werr != nil {
			return werr
		}
		if sp == r.cfg.Self {
			return wire.Errorf(wire.CodeUnknownPeer, "peer %s is not attached", dst.Short())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	c, err := r.cfg.Links.Conn(ctx, sp)
	if err != nil {
		return wire.Errorf(wire.CodeUnknownPeer, "super peer %s unreachable: %v", sp.Short(), err)
	}
	f.Hops = 1
	if err := c.Send(f); err != nil {
		return err
	}
	r.m.forwarded.Inc()
	return nil
}

// openLink returns the open link to super peer sp unless sp is blocked
// for a test; nil sends the frame the slow way (dial, fallbacks).
func (r *Router) openLink(sp ids.PeerID) *link.Conn {
	if _, blocked := r.blocked.Load(sp); blocked {
		return nil
	}
	return r.cfg.Links.Up(sp)
}
