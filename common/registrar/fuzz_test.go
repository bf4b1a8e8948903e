package registrar

import (
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// FuzzRegister hands whatever sipgo parses as a REGISTER, from a phone on
// the SIP edge authenticated as the user of its To, to the registrar. It
// must answer every one with a final status and store only records that
// validate (memStore.Put refuses others, which would show as a 5xx) and
// keep at most MaxBindings bindings.
func FuzzRegister(f *testing.F) {
	for _, seed := range []string{
		"REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1\r\nFrom: <sip:alice@example.net>;tag=1\r\nTo: <sip:alice@example.net>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@192.0.2.7:5060>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n",
		"REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK2\r\nFrom: <sip:alice@example.net>;tag=1\r\nTo: <sip:alice@example.net>\r\nCall-ID: c1\r\nCSeq: 2 REGISTER\r\nContact: *\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n",
		"REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.7:5060;branch=z9hG4bK3\r\nFrom: <sip:bob@example.net>;tag=1\r\nTo: \"Bob\" <sip:bob@example.net>\r\nCall-ID: c2\r\nCSeq: 7 REGISTER\r\nContact: <sip:bob@192.0.2.8:5060;transport=tcp>;expires=30;q=0.5, <sips:bob@192.0.2.9>;+sip.instance=\"<urn:uuid:1>\";reg-id=1\r\nContent-Length: 0\r\n\r\n",
		"REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK4\r\nFrom: <sip:carol@example.net>;tag=1\r\nTo: <sip:carol@example.net>\r\nCall-ID: c3\r\nCSeq: 4294967295 REGISTER\r\nContact: <sip:carol@192.0.2.7>;expires=99999999999\r\nExpires: -1\r\nContent-Length: 0\r\n\r\n",
		"REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK5\r\nFrom: <sip:dave@example.net>;tag=1\r\nTo: <sip:dave@example.net>\r\nCall-ID: c4\r\nCSeq: 1 REGISTER\r\nContact: <sip:dave@192.0.2.7>;expires=1\r\nContent-Length: 0\r\n\r\n",
		"REGISTER sip:example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK6\r\nFrom: <sip:erin@other.net>;tag=1\r\nTo: <sip:erin@other.net>\r\nCall-ID: c5\r\nCSeq: 1 REGISTER\r\nContact: <sip:erin@192.0.2.7>\r\nContent-Length: 0\r\n\r\n",
		// Found by this fuzzer: a contact URI with a '>' (sipgo keeps it in
		// the host) and an AoR user that is not UTF-8 were written, refused
		// by the store and answered 503; now 400.
		"REGISTER :00 SIP\r\nT:<sip:0@eXAmple.net>\r\nCAll-ID:0\r\nCSeq:0 REGISTER\r\nContACt: sip:0>\r\n\r\n",
		"REGISTER :00 SIP\r\nT:<sip:\xff@eXAmple.net>\r\nCAll-ID:0\r\nCSeq:0 REGISTER\r\nContACt:<sip:0>\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	g, st := newEdgeRegistrar(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := sip.ParseMessage(data)
		if err != nil {
			return
		}
		req, ok := msg.(*sip.Request)
		if !ok || req.Method != sip.REGISTER || req.To() == nil {
			return
		}
		// Authenticated as the To's user: the registrar, not Authorize,
		// must cope with the rest.
		req.RemoveHeader("X-User")
		req.AppendHeader(sip.NewHeader("X-User", req.To().Address.User))
		req.SetTransport("UDP")
		req.SetSource("198.51.100.7:40000")
		done := make(chan *sip.Response, 1)
		go func() { done <- g.handle(req) }()
		var res *sip.Response
		select {
		case res = <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("no answer in 10s to:\n%s", data)
		}
		if res == nil || res.StatusCode < 200 || res.StatusCode > 699 {
			t.Fatalf("answer %v to:\n%s", res, data)
		}
		// 500 is RFC 3261 §10.3 step 7's answer to a CSeq not above the
		// binding's (the store outlives one input); any other 5xx means the
		// registrar wrote something the store refused.
		if res.StatusCode >= 500 && !(res.StatusCode == 500 && strings.Contains(res.Reason, "CSeq")) {
			t.Fatalf("%d %s to:\n%s", res.StatusCode, res.Reason, data)
		}
		if res.StatusCode == 200 {
			aor := "sip:" + strings.ToLower(req.To().Address.User) + "@example.net"
			if n := len(st.live(aor)); n > g.cfg.MaxBindings {
				t.Fatalf("%d bindings stored for %s, limit %d", n, aor, g.cfg.MaxBindings)
			}
		}
	})
}
