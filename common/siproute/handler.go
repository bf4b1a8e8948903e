package siproute

import (
	"strconv"
	"time"

	"github.com/emiago/sipgo/sip"
)

// handle is the sipgo handler for every request method. sipgo runs it in a
// goroutine of its own per request and ends the server transaction when it
// returns, so stateful forwarding happens inside it.
func (r *Router) handle(req *sip.Request, tx sip.ServerTransaction) {
	if !r.enter() {
		if !req.IsAck() {
			r.reply(req, tx, 503, "Service Unavailable")
		}
		return
	}
	defer r.handlers.Done()
	release := func() {}
	if r.cfg.MaxInFlight > 0 && !req.IsAck() && req.Method != sip.CANCEL {
		// Past the limit, refuse at once with Retry-After rather than
		// slowing every call down (ARCHITECTURE.md §8).
		n := r.inflight.Add(1)
		released := false
		release = func() {
			if !released {
				released = true
				r.inflight.Add(-1)
			}
		}
		defer release()
		if n > int64(r.cfg.MaxInFlight) || r.waiting.Load() >= int64(r.maxWaiting()) {
			r.stats.overload.Add(1)
			res := sip.NewResponseFromRequest(req, 503, "Service Unavailable", nil)
			res.AppendHeader(sip.NewHeader("Retry-After", strconv.Itoa(int(max(r.cfg.RetryAfter, time.Second)/time.Second))))
			if err := tx.Respond(res); err != nil {
				r.log.Debug().Err(err).Msg("respond failed")
			}
			return
		}
	}
	from := r.originOf(req)
	switch req.Method {
	case sip.REGISTER:
		r.handleRegister(req, tx, from)
	case sip.ACK:
		r.handleAck(req, from)
	case sip.CANCEL:
		// sipgo answers a CANCEL that matches an INVITE transaction itself
		// (200, then 487 upstream, then our OnCancel callback); what gets
		// here matches nothing.
		r.reply(req, tx, 481, "Call/Transaction Does Not Exist")
	default:
		r.handleRequest(req, tx, from, release)
	}
}

func (r *Router) maxWaiting() int {
	if r.cfg.MaxWaiting > 0 {
		return r.cfg.MaxWaiting
	}
	return 64 * r.cfg.MaxInFlight
}

func (r *Router) handleRegister(req *sip.Request, tx sip.ServerTransaction, from origin) {
	switch {
	case from.tunnel():
		r.reply(req, tx, 403, "Forbidden")
	case hasControl(req.Recipient.String()) || req.To() == nil || hasControl(req.To().Value()):
		r.reply(req, tx, 400, "Bad Request")
	case r.cfg.Register == nil:
		r.reply(req, tx, 405, "Method Not Allowed")
	default:
		r.cfg.Register(req, tx)
	}
}

// handleRequest routes and forwards a request statefully. req is sipgo's
// and shared with the transaction (its 100 Trying timer reads it), so all
// changes go to a clone.
// release ends the request's in-flight count once its branches are sent.
func (r *Router) handleRequest(req *sip.Request, tx sip.ServerTransaction, from origin, release func()) {
	in := req.Clone()
	if d := checkRequest(in); d.code != 0 {
		r.reply(req, tx, d.code, d.reason)
		return
	}
	if r.looped(in) {
		r.reply(req, tx, 482, "Loop Detected")
		return
	}
	d := r.route(r.runCtx, in, from)
	if d.code != 0 {
		r.reply(req, tx, d.code, d.reason)
		return
	}
	if res := r.admit(req, from, d.to); res != nil {
		r.stats.rejected.Add(1)
		if err := tx.Respond(res); err != nil {
			r.log.Debug().Err(err).Int("code", res.StatusCode).Msg("respond failed")
		}
		return
	}
	r.proxy(req, in, tx, from, d.targets, release)
}

// handleAck forwards an ACK for a 2xx statelessly: it is a request of its
// own routed by its Route set (RFC 3261 §13.2.2.4), never a transaction.
// An ACK for a non-2xx response matched its INVITE transaction in sipgo
// and never gets here. The ACK is changed in place, not cloned: the
// server transaction sipgo opens for it has no timer reading it and only
// compares a retransmission's method with it; Admit sees it with our
// Route entries removed and Max-Forwards decremented, its Request-URI
// and credentials untouched.
func (r *Router) handleAck(req *sip.Request, from origin) {
	in := req
	if d := checkRequest(in); d.code != 0 {
		return
	}
	d := r.route(r.runCtx, in, from)
	if d.code != 0 || len(d.targets) != 1 {
		r.log.Debug().Str("call_id", callID(req)).Int("code", d.code).Msg("ack dropped: no route")
		return
	}
	if res := r.admit(req, from, d.to); res != nil {
		r.log.Debug().Str("call_id", callID(req)).Int("code", res.StatusCode).Msg("ack dropped: not admitted")
		return
	}
	t := d.targets[0]
	if t.uri != nil {
		in.Recipient = *t.uri
	}
	if err := r.nextHop(r.runCtx, in, t); err != nil {
		r.log.Debug().Err(err).Str("call_id", callID(req)).Msg("ack dropped")
		return
	}
	if err := r.cli.WriteRequest(in, r.addVia(from)); err != nil {
		r.log.Debug().Err(err).Str("call_id", callID(req)).Msg("ack not sent")
		return
	}
	r.stats.forward(string(sip.ACK))
}

// admit asks Config.Admit about a request from the phone side; nil lets
// it through.
func (r *Router) admit(req *sip.Request, from origin, to Target) *sip.Response {
	if r.cfg.Admit == nil || from.tunnel() {
		return nil
	}
	return r.cfg.Admit(req, to)
}

// looped reports a request that already passed this node. Overlay routing
// never legitimately spirals (a node only delivers tunnelled requests
// locally), so our own Via mark means a loop, e.g. a phone's Route naming
// this node by another name; without this check the loop would run until
// Max-Forwards ran out.
func (r *Router) looped(in *sip.Request) bool {
	for _, h := range in.GetHeaders("Via") {
		if v, ok := h.(*sip.ViaHeader); ok && v.Params.GetOr(viaMark, "") == r.selfHex {
			return true
		}
	}
	return false
}

// reply answers req with a response of our own.
func (r *Router) reply(req *sip.Request, tx sip.ServerTransaction, code int, reason string) {
	if code >= 300 {
		r.stats.rejected.Add(1)
		r.log.Debug().Int("code", code).Str("method", string(req.Method)).Str("call_id", callID(req)).
			Str("ruri", req.Recipient.String()).Msg("request rejected")
	}
	if err := tx.Respond(sip.NewResponseFromRequest(req, code, reason, nil)); err != nil {
		r.log.Debug().Err(err).Int("code", code).Msg("respond failed")
	}
}

func callID(m sip.Message) string {
	if h := m.CallID(); h != nil {
		return h.Value()
	}
	return ""
}
