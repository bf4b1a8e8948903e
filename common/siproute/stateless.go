package siproute

import (
	"net"
	"strconv"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/p2psip/p2psip/common/ids"
)

// Via parameters we add to our own Via. p2p marks the Via as this node's
// (value: our Peer-ID). p2pup names the tunnel peer the request came
// from, so that a 2xx retransmission arriving after the transaction is gone
// can still be sent back statelessly; for a request from a local phone the
// Via below ours says where to.
const (
	viaMark     = "p2p"
	viaUpstream = "p2pup"
)

// addVia is the request option for every request we forward: a new Via
// (sipgo's proxy helper, which also fills rport/received on the previous
// hop when asked) plus our marks.
func (r *Router) addVia(from origin) sipgo.ClientRequestOption {
	return func(c *sipgo.Client, req *sip.Request) error {
		if err := sipgo.ClientRequestAddVia(c, req); err != nil {
			return err
		}
		v := req.Via()
		v.Params.Add(viaMark, r.selfHex)
		if from.tunnel() {
			v.Params.Add(viaUpstream, from.peer.String())
		}
		return nil
	}
}

// forwardStateless sends a 2xx retransmission (or a 2xx from a losing
// branch) upstream outside any transaction: minus our Via, over the flow
// or tunnel the request came from. sipgo writes responses only on existing
// connections, so this never dials.
func (r *Router) forwardStateless(res *sip.Response, up origin) {
	ctx := r.running()
	if ctx == nil {
		return
	}
	out := res.Clone()
	out.RemoveHeader("Via")
	if up.tunnel() {
		addr, err := r.tun.ensure(ctx, up.peer, ids.PeerID{})
		if err != nil {
			r.log.Debug().Err(err).Msg("stateless response not sent")
			return
		}
		out.SetTransport("TLS")
		out.SetDestination(addr)
	} else {
		out.SetTransport(up.transport)
		out.SetDestination(up.source)
	}
	if err := r.srv.WriteResponse(out); err != nil {
		r.log.Debug().Err(err).Str("call_id", callID(res)).Msg("stateless response not sent")
		return
	}
	r.stats.stateless.Add(1)
}

// onUnhandledResponse gets responses that match no client transaction. A
// 2xx to an INVITE we forwarded is passed on (RFC 3261 §16.7 step 10 and
// RFC 6026); anything else is a stray and is dropped.
func (r *Router) onUnhandledResponse(res *sip.Response) {
	cseq := res.CSeq()
	if !res.IsSuccess() || cseq == nil || cseq.MethodName != sip.INVITE {
		return
	}
	vias := res.GetHeaders("Via")
	if len(vias) < 2 {
		return
	}
	v, ok := vias[0].(*sip.ViaHeader)
	if !ok || v.Params.GetOr(viaMark, "") != r.selfHex {
		return
	}
	var up origin
	if p, ok := v.Params.Get(viaUpstream); ok {
		peer, err := ids.ParsePeerID(p)
		if err != nil {
			return
		}
		up.peer = peer
	} else {
		next, ok := vias[1].(*sip.ViaHeader)
		if !ok {
			return
		}
		up.transport, up.source = next.Transport, viaAddr(next)
	}
	r.forwardStateless(res, up)
}

// viaAddr is where a response for this Via goes (RFC 3261 §18.2.2 and
// RFC 3581): received and rport when present, else sent-by.
func viaAddr(v *sip.ViaHeader) string {
	host, port := v.Host, v.Port
	if h, ok := v.Params.Get("received"); ok && h != "" {
		host = h
	}
	if p, ok := v.Params.Get("rport"); ok && p != "" {
		if n, err := strconv.Atoi(p); err == nil {
			port = n
		}
	}
	if port == 0 {
		port = sip.DefaultPort(v.Transport)
	}
	return net.JoinHostPort(unbracket(host), strconv.Itoa(port))
}
