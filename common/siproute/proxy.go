package siproute

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// branch is one client transaction of a (possibly forked) request.
type branch struct {
	t   target
	req *sip.Request // as sent; owned by its transaction, read only
	tx  sip.ClientTransaction
	// ringing: a provisional arrived, so CANCEL may be sent (RFC 3261 §9.1).
	ringing    bool
	wantCancel bool
	canceled   bool
	final      int // status of the final response; 0 while pending
}

// event is what a branch's watcher reports to the proxy loop.
type event struct {
	b   *branch
	res *sip.Response
	err error
}

// proxy forwards in to every target and relays responses upstream on tx
// (RFC 3261 §16.7): provisionals except 100 at once; the first 2xx at once,
// after which the other INVITE branches are cancelled; later 2xx too (the
// caller's UA sorts out extra dialogs); otherwise, once every branch is
// final, the best final response (6xx, else the lowest class; 503 becomes
// 500). An upstream CANCEL, which sipgo has already answered with 200 and
// 487, cancels every pending branch. orig is sipgo's copy of the request,
// used only to build our own responses.
func (r *Router) proxy(orig, in *sip.Request, tx sip.ServerTransaction, from origin, targets []target, release func()) {
	ctx, cancel := context.WithCancel(r.runCtx)
	defer cancel()
	invite := in.IsInvite()
	var upCancel chan struct{}
	if invite {
		upCancel = make(chan struct{})
		var once sync.Once
		if !tx.OnCancel(func(*sip.Request) { once.Do(func() { close(upCancel) }) }) {
			return // cancelled or terminated before we started
		}
	}
	if len(targets) > 1 {
		r.stats.forks.Add(1)
	}
	var events chan event
	if len(targets) > 1 {
		events = make(chan event, 4*len(targets))
	}
	var best bestResponse
	var branches []*branch
	defer func() {
		for _, b := range branches {
			if !b.t.peer.IsZero() {
				r.byPeer.remove(b.t.peer, b.tx)
			}
		}
	}()
	// A lone branch (nearly every request) is watched by the loop below
	// itself: a watcher goroutine per branch cost a goroutine start, a
	// stack growth and a channel hop per response.
	var one *branch
	var oneRes <-chan *sip.Response
	var oneDone <-chan struct{}
	addRR := wantsRecordRoute(in)
	for _, t := range targets {
		b := &branch{t: t}
		out := in
		if len(targets) > 1 {
			out = in.Clone() // in is already ours; forks need one each
		}
		if err := r.startBranch(ctx, out, from, b, addRR); err != nil {
			r.log.Debug().Err(err).Str("call_id", callID(in)).Msg("branch failed to start")
			best.synth(failureStatus(err))
			continue
		}
		branches = append(branches, b)
		if !b.t.peer.IsZero() {
			r.byPeer.add(b.t.peer, b.tx)
		}
		if events == nil {
			one, oneRes, oneDone = b, b.tx.Responses(), b.tx.Done()
			continue
		}
		r.handlers.Add(1)
		go r.watch(ctx, b, events)
	}

	// From here on the request only waits for answers: it leaves the
	// in-flight count (work) for the waiting count (memory).
	release()
	r.waiting.Add(1)
	defer r.waiting.Add(-1)
	pending := len(branches)
	answered := false // a final response went upstream (or sipgo sent 487)
	success := false  // that response was a 2xx
	txDone := tx.Done()
	var timerC <-chan time.Time
	var tc *time.Timer
	if invite {
		tc = time.NewTimer(r.cfg.TimerC)
		defer tc.Stop()
		timerC = tc.C
	}
	// giveUp ends branches that stay silent after CANCEL: a UAS must
	// answer the INVITE with 487, but if it never does the branch would
	// keep this handler forever (RFC 3261 §9.1 allows 64*T1).
	var giveUp <-chan time.Time
	var gu *time.Timer
	defer func() {
		if gu != nil {
			gu.Stop()
		}
	}()
	cancelAll := func() {
		for _, b := range branches {
			r.cancelBranch(b)
		}
		if gu == nil {
			gu = time.NewTimer(64 * sip.T1)
			giveUp = gu.C
		}
	}
	for pending > 0 {
		var ev event
		select {
		case ev = <-events:
		case res := <-oneRes:
			// As watch: after the final response sipgo sends 2xx
			// retransmissions to OnRetransmission, not Responses.
			ev = event{b: one, res: res}
			if !res.IsProvisional() {
				oneRes, oneDone = nil, nil
			}
		case <-oneDone:
			err := one.tx.Err()
			if err == nil {
				err = sip.ErrTransactionTerminated
			}
			ev = event{b: one, err: err}
			oneRes, oneDone = nil, nil
		case <-upCancel:
			upCancel, answered = nil, true
			cancelAll()
			continue
		case <-txDone:
			// The upstream transaction died (its connection closed): nobody
			// is left to answer.
			txDone, answered = nil, true
			cancelAll()
			continue
		case <-timerC:
			timerC = nil
			cancelAll()
			continue
		case <-giveUp:
			giveUp = nil
			for _, b := range branches {
				if b.final == 0 {
					b.tx.Terminate() // its watcher reports the end
				}
			}
			continue
		case <-ctx.Done():
			for _, b := range branches {
				if b.final == 0 {
					b.tx.Terminate()
				}
			}
			return
		}
		b := ev.b
		switch {
		case ev.err != nil:
			pending--
			b.final = failureStatus(ev.err)
			best.synth(b.final)
		case ev.res.IsProvisional():
			b.ringing = true
			if b.wantCancel {
				r.cancelBranch(b)
			}
			if tc != nil {
				tc.Reset(r.cfg.TimerC)
			}
			if ev.res.StatusCode > 100 && !answered {
				r.respondUpstream(tx, ev.res, from)
			}
		case ev.res.IsSuccess():
			pending--
			b.final = ev.res.StatusCode
			if answered {
				if invite {
					r.forwardStateless(ev.res, from)
				}
				continue
			}
			answered, success = true, true
			r.respondUpstream(tx, ev.res, from)
			if invite {
				cancelAll()
			}
		default:
			pending--
			b.final = ev.res.StatusCode
			best.add(ev.res)
			if invite && ev.res.StatusCode >= 600 {
				cancelAll()
			}
		}
	}
	if !answered {
		r.respondBest(orig, tx, &best, from)
	}
	if invite && !success && from.tunnel() {
		r.absorbAck(ctx, tx)
	}
}

// absorbAck keeps a failed INVITE's server transaction alive until its
// ACK arrives. sipgo ends a server transaction as soon as the handler
// returns on a reliable transport — which the tunnel's virtual
// connections are — and the ACK for our non-2xx would then match nothing
// and be routed like a 2xx ACK, reaching a phone whose branch was
// cancelled. Bounded by 64*T1, as RFC 3261 §17.2.1 bounds the wait.
func (r *Router) absorbAck(ctx context.Context, tx sip.ServerTransaction) {
	t := time.NewTimer(64 * sip.T1)
	defer t.Stop()
	select {
	case <-tx.Acks():
	case <-tx.Done():
	case <-t.C:
	case <-ctx.Done():
	}
}

// startBranch completes out (the router's own copy, handed over to the
// transaction) for its target and sends it.
func (r *Router) startBranch(ctx context.Context, out *sip.Request, from origin, b *branch, addRR bool) error {
	if b.t.uri != nil {
		out.Recipient = *b.t.uri.Clone()
	}
	if addRR {
		out.PrependHeader(r.recordRoute())
	}
	if err := r.nextHop(ctx, out, b.t); err != nil {
		return err
	}
	tx, err := r.cli.TransactionRequest(ctx, out, r.addVia(from))
	if err != nil {
		return err
	}
	b.req, b.tx = out, tx
	r.stats.branches.Add(1)
	r.stats.forward(string(out.Method))
	if out.IsInvite() {
		// A 2xx retransmitted while the transaction is "Accepted" comes
		// here instead of Responses(); a proxy must pass it on.
		tx.OnRetransmission(func(res *sip.Response) {
			if res.IsSuccess() {
				r.forwardStateless(res, from)
			}
		})
	}
	return nil
}

// nextHop sets transport and destination for target t.
func (r *Router) nextHop(ctx context.Context, out *sip.Request, t target) error {
	if t.peer.IsZero() {
		out.SetTransport(t.transport)
		out.SetDestination(t.addr)
		return nil
	}
	if t.peer == r.cfg.Self {
		return errors.New("siproute: tunnel to self")
	}
	addr, err := r.tun.ensure(ctx, t.peer, t.hint)
	if err != nil {
		return err
	}
	out.SetTransport("TLS")
	out.SetDestination(addr)
	return nil
}

// watch relays a branch's responses and its end to the proxy loop. It
// stops after the final response: sipgo blocks its FSM until a response is
// taken, and later ones (2xx retransmissions) go to OnRetransmission.
func (r *Router) watch(ctx context.Context, b *branch, events chan<- event) {
	defer r.handlers.Done()
	for {
		select {
		case res := <-b.tx.Responses():
			select {
			case events <- event{b: b, res: res}:
			case <-ctx.Done():
				return
			}
			if !res.IsProvisional() {
				return
			}
		case <-b.tx.Done():
			err := b.tx.Err()
			if err == nil {
				err = sip.ErrTransactionTerminated
			}
			select {
			case events <- event{b: b, err: err}:
			case <-ctx.Done():
			}
			return
		case <-ctx.Done():
			return
		}
	}
}

// cancelBranch sends CANCEL for a pending INVITE branch, or marks it to be
// cancelled when its first provisional arrives.
func (r *Router) cancelBranch(b *branch) {
	if b.final != 0 || b.canceled || !b.req.IsInvite() {
		return
	}
	b.wantCancel = true
	if !b.ringing {
		return
	}
	b.canceled = true
	r.stats.cancels.Add(1)
	c := newCancel(b.req)
	r.handlers.Add(1)
	go func() {
		defer r.handlers.Done()
		ctx := r.runCtx
		// The CANCEL has its INVITE's Via already: no option may add one.
		tx, err := r.cli.TransactionRequest(ctx, c, keepHeaders)
		if err != nil {
			r.log.Debug().Err(err).Str("call_id", callID(c)).Msg("cancel not sent")
			return
		}
		defer tx.Terminate()
		for {
			select {
			case res := <-tx.Responses():
				if !res.IsProvisional() {
					return
				}
			case <-tx.Done():
				return
			case <-ctx.Done():
				return
			}
		}
	}()
}

// newCancel builds the CANCEL for an INVITE we sent (RFC 3261 §9.1): same
// Request-URI, top Via, Route set, Call-ID, From, To and CSeq number.
func newCancel(inv *sip.Request) *sip.Request {
	c := sip.NewRequest(sip.CANCEL, *inv.Recipient.Clone())
	c.AppendHeader(inv.Via().Clone())
	for _, h := range inv.GetHeaders("Route") {
		c.AppendHeader(sip.HeaderClone(h))
	}
	mf := sip.MaxForwardsHeader(70)
	c.AppendHeader(&mf)
	c.AppendHeader(sip.HeaderClone(inv.From()))
	c.AppendHeader(sip.HeaderClone(inv.To()))
	c.AppendHeader(sip.HeaderClone(inv.CallID()))
	c.AppendHeader(&sip.CSeqHeader{SeqNo: inv.CSeq().SeqNo, MethodName: sip.CANCEL})
	c.SetBody(nil)
	c.SetTransport(inv.Transport())
	c.SetDestination(inv.Destination())
	return c
}

// keepHeaders is a no-op request option: passing any option stops sipgo
// from "completing" a request we built in full.
func keepHeaders(_ *sipgo.Client, _ *sip.Request) error { return nil }

// respondUpstream relays a downstream response on the server transaction,
// minus our Via. Its destination was computed from our Via; a response
// goes back where the request came from (RFC 3581 symmetric response; on
// streams sipgo uses the request's connection anyway). res is modified in
// place, not cloned (6 % of the allocations of a call): a client
// transaction hands each response it passes up over for good, reading
// only the newest one it received (fsmResp) and never one it passed up.
func (r *Router) respondUpstream(tx sip.ServerTransaction, res *sip.Response, up origin) {
	out := res
	out.RemoveHeader("Via")
	out.SetTransport(up.transport)
	out.SetDestination(up.source)
	if err := tx.Respond(out); err != nil {
		r.log.Debug().Err(err).Int("code", res.StatusCode).Str("call_id", callID(res)).Msg("relay response failed")
	}
}

// respondBest answers with the best final response collected.
func (r *Router) respondBest(orig *sip.Request, tx sip.ServerTransaction, best *bestResponse, up origin) {
	switch {
	case best.res != nil && best.res.StatusCode != 503:
		r.respondUpstream(tx, best.res, up)
	case best.res != nil:
		// A 503 would make the caller's UA avoid this node altogether
		// (RFC 3261 §16.7 step 6).
		r.reply(orig, tx, 500, "Server Internal Error")
	case best.code != 0:
		r.reply(orig, tx, best.code, reasonFor(best.code))
	default:
		r.reply(orig, tx, 480, "Temporarily Unavailable")
	}
}

// failureStatus maps a branch that ended without a response: a timeout is
// 408; anything else (tunnel or transport error) is 480, since the callee
// may be reachable again soon.
func failureStatus(err error) int {
	if errors.Is(err, sip.ErrTransactionTimeout) {
		return 408
	}
	return 480
}

func reasonFor(code int) string {
	switch code {
	case 408:
		return "Request Timeout"
	case 480:
		return "Temporarily Unavailable"
	}
	return "Error"
}

// bestResponse picks the final response to send when no branch answered
// 2xx: any 6xx, else the lowest class, the first received within a class.
// Statuses synthesized for branches without a response count only when no
// branch responded.
type bestResponse struct {
	res  *sip.Response
	code int // best synthesized status
}

func rank(code int) int {
	if code >= 600 {
		return 0
	}
	return code / 100
}

func (b *bestResponse) add(res *sip.Response) {
	if b.res == nil || rank(res.StatusCode) < rank(b.res.StatusCode) {
		b.res = res
	}
}

func (b *bestResponse) synth(code int) {
	if b.code == 0 || rank(code) < rank(b.code) {
		b.code = code
	}
}
