package edge

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/emiago/sipgo/sip"

	"github.com/p2psip/p2psip/common/siproute"
)

// counters are the edge's own statistics.
type counters struct {
	challenges, refused, badInput atomic.Uint64
	flowsClosed, bindingsDropped  atomic.Uint64
	admittedFlow, admittedDigest  atomic.Uint64
	refusedTLS                    atomic.Uint64
}

// Stats is a snapshot of the edge's counters plus its router's.
type Stats struct {
	siproute.Stats
	// Challenges counts 401/407 answers; AuthRefused counts 403s for
	// credentials (replayed, expired) and for another user's AoR.
	Challenges, AuthRefused uint64
	// BadInput counts requests refused for control characters in headers.
	BadInput uint64
	// FlowsClosed counts TCP/TLS connections that closed;
	// BindingsDropped the bindings removed with them.
	FlowsClosed, BindingsDropped uint64
	// AdmittedFlow and AdmittedDigest count requests leaving the overlay
	// let through for a registered flow and for digest credentials.
	AdmittedFlow, AdmittedDigest uint64
	// RefusedTLS counts TLS connections refused for a tunnel-range source.
	RefusedTLS uint64
}

// Stats returns a snapshot.
func (e *Edge) Stats() Stats {
	return Stats{
		Stats: e.router.Stats(), Challenges: e.stats.challenges.Load(), AuthRefused: e.stats.refused.Load(),
		BadInput: e.stats.badInput.Load(), FlowsClosed: e.stats.flowsClosed.Load(),
		BindingsDropped: e.stats.bindingsDropped.Load(), AdmittedFlow: e.stats.admittedFlow.Load(),
		AdmittedDigest: e.stats.admittedDigest.Load(), RefusedTLS: e.stats.refusedTLS.Load(),
	}
}

// handleRegister is siproute's Register hook: input checks, the Via fix
// for NATed phones, then the registrar (which calls authorizeRegister).
func (e *Edge) handleRegister(req *sip.Request, tx sip.ServerTransaction) {
	if res := e.checkInput(req); res != nil {
		respond(tx, res)
		return
	}
	addReceived(req)
	e.reg.HandleRegister(req, tx)
}

// authorizeRegister is the registrar's Authorize hook: digest over
// Authorization, answered 401 with a challenge or 403.
func (e *Edge) authorizeRegister(req *sip.Request, _ string) (string, *sip.Response) {
	return e.authenticate(req, "Authorization", true)
}

// admit is siproute's Admit hook; see the package doc for the policy.
func (e *Edge) admit(req *sip.Request, to siproute.Target) *sip.Response {
	if res := e.checkInput(req); res != nil {
		return res
	}
	if to != siproute.ToRoute {
		return nil // reaches overlay users only
	}
	if _, ok := e.reg.FlowUser(req.Transport(), req.Source()); ok {
		e.stats.admittedFlow.Add(1)
		return nil
	}
	if _, res := e.authenticate(req, "Proxy-Authorization", !req.IsAck()); res != nil {
		return res
	}
	e.stats.admittedDigest.Add(1)
	return nil
}

// authenticate checks the digest credentials in header (Authorization for
// REGISTER, Proxy-Authorization otherwise) and returns the user, or the
// refusal: 401/407 with a fresh challenge, or 403.
func (e *Edge) authenticate(req *sip.Request, header string, track bool) (string, *sip.Response) {
	var value string
	for _, h := range req.GetHeaders(header) {
		// A phone may carry credentials for several realms; ours counts.
		value = h.Value()
		if strings.Contains(value, `realm="`+e.cfg.Overlay+`"`) {
			break
		}
	}
	user, err := e.digest.check(string(req.Method), value, track)
	if errors.Is(err, errBadDigest) && req.IsAck() {
		// An ACK for a 2xx repeats its INVITE's credentials (RFC 3261
		// §22.1), computed for method INVITE.
		user, err = e.digest.check(string(sip.INVITE), value, false)
	}
	if err == nil {
		return user, nil
	}
	if challenged(err) {
		e.stats.challenges.Add(1)
		code, reason, hdr := 401, "Unauthorized", "WWW-Authenticate"
		if header == "Proxy-Authorization" {
			code, reason, hdr = 407, "Proxy Authentication Required", "Proxy-Authenticate"
		}
		res := sip.NewResponseFromRequest(req, code, reason, nil)
		res.AppendHeader(sip.NewHeader(hdr, e.digest.challenge(errors.Is(err, errStale))))
		if value != "" {
			e.log.Debug().Err(err).Str("source", req.Source()).Str("method", string(req.Method)).Msg("digest refused, challenged again")
		}
		return "", res
	}
	e.stats.refused.Add(1)
	e.log.Info().Err(err).Str("source", req.Source()).Str("method", string(req.Method)).Msg("digest credentials refused")
	reason := "Forbidden"
	if errors.Is(err, errExpired) {
		reason = "Credentials Expired"
	}
	return "", sip.NewResponseFromRequest(req, 403, reason, nil)
}

// checkInput refuses a request with a control character (CR, LF, NUL,
// ...) in its Request-URI or any header value: such a value would be
// stored or copied into messages to others, where a CR or LF becomes a
// header of its own (header injection).
func (e *Edge) checkInput(req *sip.Request) *sip.Response {
	bad := hasControl(req.Recipient.String())
	for _, h := range req.Headers() {
		if bad {
			break
		}
		bad = hasControl(h.Name()) || hasControl(h.Value())
	}
	if !bad {
		return nil
	}
	e.stats.badInput.Add(1)
	e.log.Debug().Str("source", req.Source()).Str("method", string(req.Method)).Msg("request with control characters in a header refused")
	return sip.NewResponseFromRequest(req, 400, "Bad Request", nil)
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return true
		}
	}
	return false
}

// addReceived adds received= to the top Via when its sent-by host is not
// the packet's source address (RFC 3261 §18.2.1), so a phone behind NAT
// learns its public address from our response; sipgo adds it (and rport)
// only when the phone asked with an empty rport.
func addReceived(req *sip.Request) {
	v := req.Via()
	if v == nil || v.Params.Has("received") {
		return
	}
	host, _, err := net.SplitHostPort(req.Source())
	if err != nil || strings.EqualFold(strings.Trim(v.Host, "[]"), host) {
		return
	}
	if val, ok := v.Params.Get("rport"); ok && val == "" {
		return // sipgo fills rport and received itself
	}
	v.Params.Add("received", host)
}

// refuseTLS refuses TLS phones connecting from the tunnel's fake address
// range (see the package doc).
func (e *Edge) refuseTLS(a net.Addr) bool {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil || !tunnelRange.Contains(ap.Addr().Unmap()) {
		return false
	}
	e.stats.refusedTLS.Add(1)
	e.log.Warn().Str("remote_addr", a.String()).Msg("tls connection from the tunnel address range refused")
	return true
}

// tunnelRange is siproute's fake tunnel prefix (RFC 6598 shared space).
var tunnelRange = netip.MustParsePrefix("100.64.0.0/10")

func respond(tx sip.ServerTransaction, res *sip.Response) {
	tx.Respond(res) //nolint:errcheck // the phone is gone; nothing to do
}
