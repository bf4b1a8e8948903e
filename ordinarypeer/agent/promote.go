package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/wire"
)

// Promoter is the super-peer half of a node with role auto
// (superpeer/promoted implements it; the agent never imports the super
// peer). ARCHITECTURE.md §5.6.
type Promoter interface {
	// PeerAddr is the peer-protocol address the node advertises, given
	// the IP of its uplink.
	PeerAddr(localIP string) string
	// Run answers dial-back tests with key (the agent's identity) and,
	// once promoted, runs the super peer, until ctx ends.
	Run(ctx context.Context, key ed25519.PrivateKey) error
	// Promote starts the super peer with the overlay's grant and returns
	// once it has joined the mesh, with a channel that receives (once) if
	// the super peer stops on its own: the node is ordinary again then.
	Promote(ctx context.Context, peerAddr string, g *wire.PromoteGrant) (wire.SuperPeerInfo, <-chan error, error)
}

// promoteWait bounds one promotion request: the super peer's verdict
// comes within 30 s, then the grant, with margin for a loaded machine.
const promoteWait = 40 * time.Second

// retryUnanswered is when a request that got no verdict is asked again.
const retryUnanswered = time.Minute

// DefaultRepromoteAfter is how long a node whose own super peer stopped on
// its own stays ordinary before asking again: long enough that a fault
// that recurs (a port taken, a disk full) does not make it join and leave
// the mesh over and over, each time moving records.
const DefaultRepromoteAfter = 10 * time.Minute

// Role names in the status.
const (
	RoleOrdinary  = "ordinary"
	RoleSuperPeer = "superpeer"
)

// PromotionStatus is the promotion part of the agent's status.
type PromotionStatus struct {
	// Reason is why the node is not a super peer (the last refusal or
	// failure), empty once promoted.
	Reason     string     `json:"reason,omitempty"`
	Attempts   int        `json:"attempts"`
	PromotedAt string     `json:"promoted_at,omitempty"`
	SuperPeer  ids.PeerID `json:"super_peer,omitempty"`
	PeerAddr   string     `json:"peer_addr,omitempty"`
	// NextAttempt is when the node asks again, if it will.
	NextAttempt string `json:"next_attempt,omitempty"`
}

// promotion is the agent's promotion state.
type promotion struct {
	kick chan struct{}

	mu     sync.Mutex // guards the fields below
	st     PromotionStatus
	role   string
	startd time.Time
}

func (p *promotion) status() (string, *PromotionStatus) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.st
	role := p.role
	if role == "" {
		role = RoleOrdinary
	}
	return role, &st
}

func (p *promotion) update(f func(st *PromotionStatus)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(&p.st)
}

// kickPromotion asks the promotion loop to try now (after an attachment
// and NAT discovery).
func (a *Agent) kickPromotion() {
	select {
	case a.promo.kick <- struct{}{}:
	default:
	}
}

// runPromotion asks for promotion whenever kicked or when a refusal said
// asking again may succeed; once the node is a super peer, it waits for
// that super peer to stop on its own and then starts over.
func (a *Agent) runPromotion(ctx context.Context) error {
	if a.cfg.Role != "auto" {
		return nil
	}
	if a.cfg.Promoter == nil {
		a.promo.update(func(st *PromotionStatus) { st.Reason = "no super-peer runtime configured for this agent" })
		a.log.Warn().Msg("role auto without a super-peer runtime: never promoted")
		return nil
	}
	var retry <-chan time.Time
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var notBefore time.Time // after a demotion: no attempt before, kicked or not
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.promo.kick:
			if time.Now().Before(notBefore) {
				continue // the timer set with notBefore is still pending
			}
		case <-retry:
		}
		after, ended := a.tryPromote(ctx)
		if ended != nil {
			select {
			case <-ctx.Done():
				return nil
			case err := <-ended:
				after = a.demote(err)
				notBefore = time.Now().Add(after)
			}
		}
		if timer != nil {
			timer.Stop()
		}
		retry = nil
		if after > 0 {
			timer = time.NewTimer(after)
			retry = timer.C
			a.promo.update(func(st *PromotionStatus) { st.NextAttempt = time.Now().Add(after).UTC().Format(time.RFC3339) })
		}
	}
}

// demote is the node's way back after its own super peer stopped on its
// own: ordinary again (the uplink reattaches to another super peer by
// itself, its connection being gone), its claimed uptime starting anew,
// asking again after RepromoteAfter. It returns that delay.
func (a *Agent) demote(err error) time.Duration {
	after := a.cfg.RepromoteAfter
	if after <= 0 {
		after = DefaultRepromoteAfter
	}
	a.promo.mu.Lock()
	sp := a.promo.st.SuperPeer
	a.promo.role = RoleOrdinary
	a.promo.startd = time.Now()
	a.promo.st.Reason = fmt.Sprintf("own super peer %s stopped: %v", sp.Short(), err)
	a.promo.st.SuperPeer, a.promo.st.PeerAddr, a.promo.st.PromotedAt = ids.PeerID{}, "", ""
	a.promo.mu.Unlock()
	a.log.Error().Err(err).Str("sp_id", sp.Short()).Dur("retry_in", after).Msg("own super peer stopped; ordinary peer again")
	return after
}

// tryPromote sends one promotion request and, on a grant, starts the
// super peer and moves the uplink to it. It returns when to ask again
// (0: at the next attachment), or, once the node is a super peer, the
// channel that tells when that super peer stopped on its own.
func (a *Agent) tryPromote(ctx context.Context) (time.Duration, <-chan error) {
	att, ok := a.up.Attachment()
	if !ok {
		return 0, nil
	}
	sess, err := a.up.Session(ctx)
	if err != nil {
		return 0, nil
	}
	localIP, _, err := net.SplitHostPort(att.LocalAddr)
	if err != nil {
		localIP = att.LocalAddr
	}
	req := wire.PromoteReq{
		PeerAddr: a.cfg.Promoter.PeerAddr(localIP), LocalAddr: localIP,
		UptimeS: uint32(time.Since(a.promo.startd) / time.Second),
	}
	if res, _ := a.nat.get(); res != nil {
		req.Reflexive = res.Reflexive
	}
	a.promo.update(func(st *PromotionStatus) { st.Attempts++; st.NextAttempt = "" })
	fail := func(reason string, retry time.Duration) (time.Duration, <-chan error) {
		a.promo.update(func(st *PromotionStatus) { st.Reason = reason })
		a.log.Info().Str("reason", reason).Str("sp_id", att.SP.Short()).Str("advertised", req.PeerAddr).Dur("retry_in", retry).Msg("not promoted")
		return retry, nil
	}
	rctx, cancel := context.WithTimeout(ctx, promoteWait)
	f, err := sess.Conn.Request(rctx, wire.TypePromote, &req)
	cancel()
	var resp wire.PromoteResp
	if err == nil {
		err = wire.Unmarshal(f.Body, &resp)
	}
	switch {
	case ctx.Err() != nil:
		return 0, nil
	case err != nil:
		return fail(fmt.Sprintf("promotion request to %s: %v", att.SP.Short(), err), retryUnanswered)
	case !resp.Promote || resp.Grant == nil:
		return fail(resp.Reason, time.Duration(resp.RetryAfterS)*time.Second)
	}
	start := time.Now()
	sp, ended, err := a.cfg.Promoter.Promote(ctx, req.PeerAddr, resp.Grant)
	if err != nil {
		return fail(fmt.Sprintf("start super peer: %v", err), retryUnanswered)
	}
	a.promo.mu.Lock()
	a.promo.role = RoleSuperPeer
	a.promo.st.Reason, a.promo.st.SuperPeer, a.promo.st.PeerAddr = "", sp.PeerID, sp.PeerAddr
	a.promo.st.PromotedAt = time.Now().UTC().Format(time.RFC3339)
	a.promo.mu.Unlock()
	a.log.Info().Str("sp_id", sp.PeerID.Short()).Str("peer_addr", sp.PeerAddr).Dur("took", time.Since(start)).Msg("promoted to super peer")
	if err := a.moveToSelf(ctx, sp); err != nil {
		a.log.Warn().Err(err).Msg("attach to own super peer")
	}
	return 0, ended
}

// moveToSelf re-attaches the agent to its own super peer, leaving the old
// one only once attached (no gap for calls).
func (a *Agent) moveToSelf(ctx context.Context, sp wire.SuperPeerInfo) error {
	deadline := time.Now().Add(15 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var asked time.Time
	for {
		if att, ok := a.up.Attachment(); ok && att.SP == sp.PeerID {
			a.log.Info().Str("sp_id", sp.PeerID.Short()).Msg("attached to own super peer")
			return nil
		}
		if time.Since(asked) > 2*time.Second {
			a.up.Move([]wire.SuperPeerInfo{sp})
			asked = time.Now()
		}
		if time.Now().After(deadline) {
			return errors.New("still not attached to own super peer after 15s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
