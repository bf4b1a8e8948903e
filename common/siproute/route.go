package siproute

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"

	"github.com/p2psip/p2psip/common/ids"
)

// origin is where a request came from, which is where its responses go.
type origin struct {
	peer      ids.PeerID // set when the request came through the tunnel
	transport string     // sipgo transport name ("UDP", "TCP", "TLS")
	source    string     // ip:port the request arrived from
}

func (o origin) tunnel() bool { return !o.peer.IsZero() }

func (r *Router) originOf(req *sip.Request) origin {
	o := origin{transport: req.Transport(), source: req.Source()}
	if o.transport == "TLS" {
		if p, ok := r.tun.peerOf(o.source); ok {
			o.peer = p
		}
	}
	return o
}

// target is one place to send a request to: a peer over the tunnel, or a
// transport address (a local phone's flow, or a plain SIP hop).
type target struct {
	uri       *sip.Uri   // new Request-URI (forking to a contact); nil keeps it
	peer      ids.PeerID // tunnel destination; zero for an address
	hint      ids.PeerID // the peer's super peer, if known
	transport string
	addr      string
}

// decision is the outcome of routing: targets (of one kind), or a status
// to answer.
type decision struct {
	targets []target
	to      Target
	code    int
	reason  string
}

// Target is the kind of destination routing chose for a request; Admit
// hooks decide on it.
type Target int

// Targets.
const (
	// ToOverlay: an AoR of the overlay, looked up and forked to its
	// contacts.
	ToOverlay Target = iota + 1
	// ToLocal: a phone registered at this node, named by its contact (a
	// dialog's Request-URI).
	ToLocal
	// ToPeer: an overlay node named by a p2p Route (within a dialog).
	ToPeer
	// ToRoute: a plain SIP host named by a Route header, outside the
	// overlay.
	ToRoute
)

func (t Target) String() string {
	switch t {
	case ToOverlay:
		return "overlay"
	case ToLocal:
		return "local"
	case ToPeer:
		return "peer"
	case ToRoute:
		return "route"
	}
	return "none"
}

func reject(code int, reason string) decision { return decision{code: code, reason: reason} }

// route decides where in goes, in this order (RFC 3261 §16.4–16.5 as far as
// an overlay node needs it):
//
//  1. Route headers that point at us are removed (ours: p2p and our
//     Peer-ID as user; or, without p2p, our Record-Route host:port).
//  2. A remaining p2p Route: the tunnel to the Peer-ID in its user part.
//     Another Route: that host:port as plain SIP (never a tunnel address).
//  3. No Route: a Request-URI that is the contact of a phone registered
//     here goes over that phone's flow.
//  4. A Request-URI in the overlay domain is looked up and forked to every
//     contact; a request from the tunnel is only delivered to contacts of
//     this node, never sent back into the overlay (no loops, no fourth
//     hop).
//  5. Anything else: 404 from the tunnel; from a phone, OPTIONS to us is
//     answered 200 and other domains get Config.ForeignDomain (403).
//
// in is modified (Route headers removed); it must be the router's own clone.
func (r *Router) route(ctx context.Context, in *sip.Request, from origin) decision {
	for rt := in.Route(); rt != nil && r.isOwn(&rt.Address); rt = in.Route() {
		in.RemoveHeader("Route")
	}
	if rt := in.Route(); rt != nil {
		return r.routeNext(&rt.Address)
	}
	uri := &in.Recipient
	if tp, addr, ok := r.localFlow(uri); ok {
		return decision{targets: []target{{transport: tp, addr: addr}}, to: ToLocal}
	}
	if r.inOverlay(uri) {
		return r.lookup(ctx, uri, from)
	}
	if from.tunnel() {
		return reject(404, "Not Found")
	}
	if uri.User == "" && r.isOwn(uri) {
		if in.Method == sip.OPTIONS {
			return reject(200, "OK")
		}
		return reject(405, "Method Not Allowed")
	}
	if r.cfg.ForeignDomain == 404 {
		return reject(404, "Not Found")
	}
	return reject(403, "Forbidden")
}

// localFlow asks Config.Local about a URI, parsed if it can take one.
func (r *Router) localFlow(u *sip.Uri) (transport, addr string, ok bool) {
	if l, can := r.cfg.Local.(URILocal); can {
		return l.FlowURI(u)
	}
	return r.cfg.Local.Flow(u.String())
}

// isOwn reports whether a Route (or Request-URI) names this node.
func (r *Router) isOwn(u *sip.Uri) bool {
	if u.UriParams.Has("p2p") {
		return strings.EqualFold(u.User, r.selfHex)
	}
	port := u.Port
	if port == 0 {
		port = sip.DefaultPort(transportOf(u))
	}
	return strings.EqualFold(unbracket(u.Host), unbracket(r.cfg.RecordRouteHost)) && port == r.cfg.RecordRoutePort
}

// routeNext turns the next hop's Route into a target.
func (r *Router) routeNext(u *sip.Uri) decision {
	if u.UriParams.Has("p2p") {
		p, err := ids.ParsePeerID(strings.ToLower(u.User))
		if err != nil || p.IsZero() || p == r.cfg.Self {
			return reject(400, "Bad p2p Route")
		}
		return decision{targets: []target{{peer: p}}, to: ToPeer}
	}
	if isFake(u.Host) {
		return reject(403, "Forbidden Route")
	}
	if !validHost(u.Host) {
		return reject(400, "Bad Route")
	}
	tp := transportOf(u)
	port := u.Port
	if port == 0 {
		port = sip.DefaultPort(tp)
	}
	return decision{targets: []target{{transport: tp, addr: net.JoinHostPort(unbracket(u.Host), strconv.Itoa(port))}}, to: ToRoute}
}

// validHost reports whether a URI host is something to send to: an IP
// literal (IPv6 in brackets) or a DNS name.
func validHost(h string) bool {
	if strings.HasPrefix(h, "[") {
		a, err := netip.ParseAddr(unbracket(h))
		return err == nil && a.Is6()
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if h == "" || len(h) > 253 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// transportOf is the sipgo transport a URI asks for: its transport
// parameter, TLS for sips, else UDP (RFC 3263 without DNS).
func transportOf(u *sip.Uri) string {
	tp := "UDP"
	if v, ok := u.UriParams.Get("transport"); ok && v != "" {
		tp = strings.ToUpper(v)
	}
	if u.Scheme == "sips" && tp != "WSS" {
		tp = "TLS"
	}
	return tp
}

func (r *Router) inOverlay(u *sip.Uri) bool {
	return u.User != "" && strings.EqualFold(u.Host, r.cfg.Overlay)
}

// lookup fetches the AoR's contacts and turns them into fork targets.
func (r *Router) lookup(ctx context.Context, uri *sip.Uri, from origin) decision {
	aor, err := ids.NormalizeAOR("sip:" + uri.User + "@" + uri.Host)
	if err != nil {
		return reject(404, "Not Found")
	}
	lctx, cancel := context.WithTimeout(ctx, r.cfg.LookupTimeout)
	defer cancel()
	contacts, err := r.cfg.Locator.Lookup(lctx, aor)
	switch {
	case errors.Is(err, ErrNotFound):
		return reject(404, "Not Found")
	case err != nil:
		r.log.Warn().Err(err).Str("aor", aor).Msg("location lookup failed")
		return reject(480, "Temporarily Unavailable")
	}
	d := decision{to: ToOverlay}
	seen := make(map[string]bool, len(contacts))
	for _, c := range contacts {
		u := new(sip.Uri)
		if err := sip.ParseUri(c.URI, u); err != nil {
			continue
		}
		t := target{uri: u}
		switch {
		case c.PeerID == r.cfg.Self || (c.PeerID.IsZero() && c.SP == r.cfg.Self):
			tp, addr, ok := r.localFlow(u)
			if !ok {
				continue // stale: the phone's binding expired here
			}
			t.transport, t.addr = tp, addr
		case from.tunnel():
			continue
		default:
			t.peer, t.hint = c.PeerID, c.SP
			if t.peer.IsZero() { // a phone at a super peer's SIP edge
				t.peer = c.SP
			}
			if t.peer.IsZero() {
				continue
			}
		}
		key := t.peer.String() + " " + t.addr + " " + c.URI
		if seen[key] {
			continue
		}
		seen[key] = true
		d.targets = append(d.targets, t)
	}
	if len(d.targets) == 0 {
		return reject(480, "Temporarily Unavailable")
	}
	return d
}

// checkRequest validates what the router relies on (RFC 3261 §16.3) and
// takes one off Max-Forwards. in must be the router's own clone: sipgo
// shares some header objects between clones, so the header is replaced,
// not decremented.
func checkRequest(in *sip.Request) decision {
	if uriHasControl(&in.Recipient) {
		return reject(400, "Bad Request-URI")
	}
	if to := in.To(); to == nil || hasControl(to.Value()) {
		return reject(400, "Bad To")
	}
	if in.From() == nil || in.CallID() == nil || in.CSeq() == nil {
		return reject(400, "Missing Mandatory Header")
	}
	mf := sip.MaxForwardsHeader(70)
	if h := in.MaxForwards(); h != nil {
		if h.Val() == 0 {
			return reject(483, "Too Many Hops")
		}
		mf = sip.MaxForwardsHeader(h.Val() - 1)
		in.ReplaceHeader(&mf)
	} else {
		in.AppendHeader(&mf)
	}
	return decision{}
}

// hasControl reports ASCII control characters (CR and LF cannot survive
// parsing, but NUL, other controls and DEL can; TAB is whitespace) in a value we would copy
// into a record or another message.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return true
		}
	}
	return false
}

// uriHasControl is hasControl(u.String()) without building the string:
// the URI's text is its parts plus separators free of control characters.
func uriHasControl(u *sip.Uri) bool {
	if hasControl(u.Scheme) || hasControl(u.Raw()) || hasControl(u.User) || hasControl(u.Password) || hasControl(u.Host) {
		return true
	}
	for _, p := range [2]sip.HeaderParams{u.UriParams, u.Headers} {
		for _, kv := range p {
			if hasControl(kv.K) || hasControl(kv.V) {
				return true
			}
		}
	}
	return false
}

// recordRoute is our Record-Route: one entry serving both sides (see the
// package doc).
func (r *Router) recordRoute() *sip.RecordRouteHeader {
	return &sip.RecordRouteHeader{Address: sip.Uri{
		Scheme: "sip", User: r.selfHex, Host: r.cfg.RecordRouteHost, Port: r.cfg.RecordRoutePort,
		UriParams: sip.HeaderParams{{K: "lr"}, {K: "p2p"}},
	}}
}

// wantsRecordRoute: dialog-creating requests outside a dialog.
func wantsRecordRoute(in *sip.Request) bool {
	switch in.Method {
	case sip.INVITE, sip.SUBSCRIBE, sip.REFER, sip.NOTIFY:
	default:
		return false
	}
	to := in.To()
	return to != nil && !to.Params.Has("tag")
}
