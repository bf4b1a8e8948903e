package siproute

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// FuzzRoute routes whatever sipgo parses as a request, from a phone and
// from the tunnel, through checkRequest and route as handleRequest does.
// Routing must answer with a status or name targets, never panic, and
// never send a phone's request to a tunnel address (100.64.0.0/10): that
// would let a phone pose as an overlay peer.
func FuzzRoute(f *testing.F) {
	self := peer(1).String()
	for _, s := range []string{
		"INVITE sip:bob@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK1\r\nFrom: <sip:alice@example.net>;tag=1\r\nTo: <sip:bob@example.net>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n\r\n",
		"BYE sip:bob@192.0.2.8 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK2\r\nRoute: <sip:" + self + "@127.0.0.1:5060;lr;p2p>, <sip:" + peer(2).String() + "@203.0.113.5;lr;p2p>\r\nFrom: <sip:alice@example.net>;tag=1\r\nTo: <sip:bob@example.net>;tag=2\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n\r\n",
		"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK3\r\nRoute: <sip:100.64.0.9:5061;lr>\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 0\r\n\r\n",
		"MESSAGE sip:carol@other.org SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK4\r\nRoute: <sip:[::ffff:100.64.0.1]:5061;lr;transport=tls>\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:carol@other.org>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	r := testRouter(f)
	fake := netip.MustParsePrefix(fakePrefix.String())
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := sip.ParseMessage(data)
		if err != nil {
			return
		}
		req, ok := msg.(*sip.Request)
		if !ok {
			return
		}
		for _, from := range []origin{
			{transport: "UDP", source: "198.51.100.7:5060"},
			{peer: peer(3), transport: "TLS", source: "100.64.0.3:5061"},
		} {
			in := req.Clone()
			if d := checkRequest(in); d.code != 0 {
				continue
			}
			d := r.route(context.Background(), in, from)
			if d.code != 0 {
				if d.code < 100 || d.code > 699 || len(d.targets) > 0 {
					t.Fatalf("decision %+v", d)
				}
				continue
			}
			if len(d.targets) == 0 {
				t.Fatalf("no status and no target for:\n%s", data)
			}
			for _, tg := range d.targets {
				if !tg.peer.IsZero() || from.tunnel() {
					continue
				}
				host, _, err := net.SplitHostPort(tg.addr)
				if err != nil {
					t.Fatalf("target address %q: %v", tg.addr, err)
				}
				if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil && fake.Contains(a.Unmap()) {
					t.Fatalf("a phone's request routed to tunnel address %s:\n%s", tg.addr, data)
				}
			}
		}
	})
}
