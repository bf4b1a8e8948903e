package siproute

import (
	"context"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
)

func testRouter(t testing.TB) *Router {
	_, err := New(Config{
		Self: peer(1), Overlay: "example.net", Locator: nil, Sender: &fakeSender{}, Local: nil,
		RecordRouteHost: "127.0.0.1", RecordRoutePort: 5060, Log: zerolog.Nop(),
	})
	if err == nil {
		t.Fatal("New accepted a config without Locator and Local")
	}
	r, err := New(Config{
		Self: peer(1), Overlay: "example.net", Locator: noLocator{}, Sender: &fakeSender{}, Local: noLocal{},
		RecordRouteHost: "127.0.0.1", RecordRoutePort: 5060, Log: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func uri(t *testing.T, s string) *sip.Uri {
	t.Helper()
	u := new(sip.Uri)
	if err := sip.ParseUri(s, u); err != nil {
		t.Fatal(err)
	}
	return u
}

func TestIsOwnAndNextHop(t *testing.T) {
	r := testRouter(t)
	self := peer(1).String()
	for s, want := range map[string]bool{
		"sip:" + self + "@127.0.0.1:5060;lr;p2p":             true,
		"sip:" + self + "@10.0.0.1:9;lr;p2p":                 true, // p2p: the Peer-ID decides
		"sip:" + peer(2).String() + "@127.0.0.1:5060;lr;p2p": false,
		"sip:127.0.0.1:5060;lr":                              true,
		"sip:127.0.0.1;lr":                                   true,
		"sip:127.0.0.1:5070;lr":                              false,
		"sip:127.0.0.1;lr;transport=tls":                     false, // 5061
	} {
		if got := r.isOwn(uri(t, s)); got != want {
			t.Errorf("isOwn(%s) = %v", s, got)
		}
	}
	d := r.routeNext(uri(t, "sip:"+peer(2).String()+"@127.0.0.1:5070;lr;p2p"))
	if d.code != 0 || d.targets[0].peer != peer(2) {
		t.Errorf("p2p route: %+v", d)
	}
	d = r.routeNext(uri(t, "sip:proxy.example.org;lr;transport=tcp"))
	if d.code != 0 || d.targets[0].transport != "TCP" || d.targets[0].addr != "proxy.example.org:5060" {
		t.Errorf("plain route: %+v", d)
	}
	if d = r.routeNext(uri(t, "sip:100.64.0.7:5061;lr")); d.code != 403 {
		t.Errorf("route to a tunnel address: %+v", d)
	}
	// sipgo keeps an IPv6 host in brackets: a tunnel address written so
	// is still refused, and a real one becomes a dialable address.
	if d = r.routeNext(uri(t, "sip:[::ffff:100.64.0.7]:5061;lr")); d.code != 403 {
		t.Errorf("route to a bracketed tunnel address: %+v", d)
	}
	if d = r.routeNext(uri(t, "sip:[2001:db8::1]:5070;lr")); d.code != 0 || d.targets[0].addr != "[2001:db8::1]:5070" {
		t.Errorf("IPv6 route: %+v", d)
	}
	if d = r.routeNext(&sip.Uri{Scheme: "sip", Host: "]0"}); d.code != 400 {
		t.Errorf("route to a host that is neither a name nor an address: %+v", d)
	}
	if d = r.routeNext(uri(t, "sip:"+ids.PeerID{}.String()+"@127.0.0.1;lr;p2p")); d.code != 400 {
		t.Errorf("p2p route to the zero Peer-ID: %+v", d)
	}
	if d = r.routeNext(uri(t, "sip:nothex@127.0.0.1;lr;p2p")); d.code != 400 {
		t.Errorf("bad p2p route: %+v", d)
	}
	if rr := r.recordRoute().Value(); rr != "<sip:"+self+"@127.0.0.1:5060;lr;p2p>" {
		t.Errorf("record-route %s", rr)
	}
}

func TestCheckRequest(t *testing.T) {
	msg := crlf("INVITE sip:bob@example.net SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\n" +
		"Max-Forwards: 3\nFrom: <sip:a@example.net>;tag=1\nTo: <sip:bob@example.net>\nCall-ID: c\nCSeq: 1 INVITE\nContent-Length: 0\n\n")
	m, err := sip.ParseMessage([]byte(msg))
	if err != nil {
		t.Fatal(err)
	}
	req := m.(*sip.Request)
	in := req.Clone()
	if d := checkRequest(in); d.code != 0 {
		t.Fatalf("valid request refused: %+v", d)
	}
	if in.MaxForwards().Val() != 2 || req.MaxForwards().Val() != 3 {
		t.Errorf("Max-Forwards clone %d original %d: the original must not change", in.MaxForwards().Val(), req.MaxForwards().Val())
	}
	zero := sip.MaxForwardsHeader(0)
	in.ReplaceHeader(&zero)
	if d := checkRequest(in); d.code != 483 {
		t.Errorf("Max-Forwards 0: %+v", d)
	}
	in = req.Clone()
	in.Recipient.User = "bob\x00"
	if d := checkRequest(in); d.code != 400 {
		t.Errorf("NUL in Request-URI: %+v", d)
	}
}

func TestBestResponse(t *testing.T) {
	res := func(code int) *sip.Response { return sip.NewResponse(code, "x") }
	var b bestResponse
	b.add(res(486))
	b.add(res(404))
	b.add(res(302))
	b.add(res(500))
	if b.res.StatusCode != 302 {
		t.Errorf("best of 486 404 302 500: %d", b.res.StatusCode)
	}
	b.add(res(603))
	if b.res.StatusCode != 603 {
		t.Errorf("6xx must win: %d", b.res.StatusCode)
	}
	var s bestResponse
	s.synth(480)
	s.synth(408)
	if s.code != 480 {
		t.Errorf("first synthesized of a class wins: %d", s.code)
	}
}

type noLocator struct{}

func (noLocator) Lookup(context.Context, string) ([]record.Contact, error) { return nil, ErrNotFound }

type noLocal struct{}

func (noLocal) Flow(string) (string, string, bool) { return "", "", false }

// uriHasControl must agree with hasControl on the URI's text, which it
// replaces on the hot path without building the string.
func TestURIHasControlMatchesItsText(t *testing.T) {
	clean := sip.Uri{Scheme: "sip", User: "alice", Host: "example.net", Port: 5060,
		UriParams: sip.HeaderParams{{K: "transport", V: "tcp"}, {K: "lr"}},
		Headers:   sip.HeaderParams{{K: "subject", V: "hi"}}}
	cases := map[string]func(u *sip.Uri){
		"clean":        func(*sip.Uri) {},
		"user NUL":     func(u *sip.Uri) { u.User = "al\x00ice" },
		"password":     func(u *sip.Uri) { u.Password = "pw\x01" },
		"host DEL":     func(u *sip.Uri) { u.Host = "exa\x7fmple.net" },
		"param value":  func(u *sip.Uri) { u.UriParams = sip.HeaderParams{{K: "x", V: "a\x1fb"}} },
		"param name":   func(u *sip.Uri) { u.UriParams = sip.HeaderParams{{K: "x\x02"}} },
		"header value": func(u *sip.Uri) { u.Headers = sip.HeaderParams{{K: "h", V: "\x03"}} },
		"tab is fine":  func(u *sip.Uri) { u.User = "a\tb" },
	}
	for name, mod := range cases {
		u := clean
		u.UriParams, u.Headers = append(sip.HeaderParams(nil), clean.UriParams...), append(sip.HeaderParams(nil), clean.Headers...)
		mod(&u)
		if got, want := uriHasControl(&u), hasControl(u.String()); got != want {
			t.Errorf("%s: uriHasControl = %v, hasControl(%q) = %v", name, got, u.String(), want)
		}
	}
	var parsed sip.Uri
	if err := sip.ParseUri("tel:+1-555\x00", &parsed); err == nil {
		if got, want := uriHasControl(&parsed), hasControl(parsed.String()); got != want {
			t.Errorf("raw URI: uriHasControl = %v, hasControl(%q) = %v", got, parsed.String(), want)
		}
	}
}

// viaAddr: received and rport win over sent-by, the transport's default
// port fills a missing one, and an IPv6 sent-by gives a dialable address.
func TestViaAddr(t *testing.T) {
	for via, want := range map[string]string{
		"SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bK1":                                  "192.0.2.7:5070",
		"SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK1":                                       "192.0.2.7:5060",
		"SIP/2.0/TLS 192.0.2.7;branch=z9hG4bK1":                                       "192.0.2.7:5061",
		"SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK1;received=198.51.100.9;rport=40000": "198.51.100.9:40000",
		"SIP/2.0/UDP [2001:db8::7]:5070;branch=z9hG4bK1":                              "[2001:db8::7]:5070",
	} {
		msg := crlf("OPTIONS sip:x SIP/2.0\nVia: " + via + "\nFrom: <sip:a@x>;tag=1\nTo: <sip:b@x>\nCall-ID: c\nCSeq: 1 OPTIONS\n\n")
		m, err := sip.ParseMessage([]byte(msg))
		if err != nil {
			t.Fatalf("%s: %v", via, err)
		}
		if got := viaAddr(m.Via()); got != want {
			t.Errorf("viaAddr(%s) = %s, want %s", via, got, want)
		}
	}
}
