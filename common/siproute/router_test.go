package siproute

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/rs/zerolog"
)

// serveTest runs a router on a loopback UDP socket until the test ends.
func serveTest(t *testing.T, snd *fakeSender) (*Router, *net.UDPConn) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{
		Self: peer(1), Overlay: "example.net", Locator: noLocator{}, Sender: snd, Local: noLocal{},
		RecordRouteHost: "127.0.0.1", RecordRoutePort: pc.LocalAddr().(*net.UDPAddr).Port, Log: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, pc, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	for r.running() == nil {
		time.Sleep(time.Millisecond)
	}
	return r, pc
}

type rawPhone struct {
	t *testing.T
	c *net.UDPConn
}

func newRawPhone(t *testing.T) *rawPhone {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawPhone{t: t, c: c}
}

func (p *rawPhone) port() string { return strconv.Itoa(p.c.LocalAddr().(*net.UDPAddr).Port) }

func (p *rawPhone) exchange(to net.Addr, msg, want string) string {
	p.t.Helper()
	if _, err := p.c.WriteTo([]byte(crlf(msg)), to); err != nil {
		p.t.Fatal(err)
	}
	return p.read(want)
}

func (p *rawPhone) read(want string) string {
	p.t.Helper()
	buf := make([]byte, 65535)
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
	for {
		n, _, err := p.c.ReadFrom(buf)
		if err != nil {
			p.t.Fatalf("waiting for %q: %v", want, err)
		}
		if s := string(buf[:n]); strings.HasPrefix(s, want) {
			return s
		}
	}
}

// TestOptionsToUs: a phone's keepalive OPTIONS to the node itself.
func TestOptionsToUs(t *testing.T) {
	r, pc := serveTest(t, &fakeSender{})
	p := newRawPhone(t)
	p.exchange(pc.LocalAddr(), "OPTIONS sip:127.0.0.1:"+strconv.Itoa(r.cfg.RecordRoutePort)+" SIP/2.0\n"+
		"Via: SIP/2.0/UDP 127.0.0.1:"+p.port()+";branch=z9hG4bK-o1\nFrom: <sip:a@example.net>;tag=1\n"+
		"To: <sip:127.0.0.1>\nCall-ID: o1\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n", "SIP/2.0 200")
}

// TestLate2xx: a 2xx that matches no transaction any more is passed
// upstream without our Via: to a phone by the Via below ours, to a peer by
// our Via's p2pup mark. Anything else is dropped.
func TestLate2xx(t *testing.T) {
	snd := &fakeSender{}
	r, pc := serveTest(t, snd)
	p := newRawPhone(t)
	// The phone has talked to us, so sipgo has a flow to answer on.
	p.exchange(pc.LocalAddr(), "OPTIONS sip:127.0.0.1:"+strconv.Itoa(r.cfg.RecordRoutePort)+" SIP/2.0\n"+
		"Via: SIP/2.0/UDP 127.0.0.1:"+p.port()+";branch=z9hG4bK-o2\nFrom: <sip:a@example.net>;tag=1\n"+
		"To: <sip:127.0.0.1>\nCall-ID: o2\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n", "SIP/2.0 200")

	ok := func(vias ...string) *sip.Response {
		msg := "SIP/2.0 200 OK\n"
		for _, v := range vias {
			msg += "Via: " + v + "\n"
		}
		msg += "From: <sip:a@example.net>;tag=1\nTo: <sip:b@example.net>;tag=2\nCall-ID: late\nCSeq: 1 INVITE\nContent-Length: 0\n\n"
		m, err := sip.ParseMessage([]byte(crlf(msg)))
		if err != nil {
			t.Fatal(err)
		}
		return m.(*sip.Response)
	}
	ours := "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-x;p2p=" + peer(1).String()
	r.onUnhandledResponse(ok(ours, "SIP/2.0/UDP 127.0.0.1:"+p.port()+";branch=z9hG4bK-up"))
	got := p.read("SIP/2.0 200 OK")
	if strings.Contains(got, "p2p=") || !strings.Contains(got, "z9hG4bK-up") {
		t.Errorf("phone got %q", got)
	}

	go func() { // play sipgo's reader for the tunnel connection ensure opens
		c, err := r.tun.Accept()
		if err == nil {
			c.Read(make([]byte, 1)) //nolint:errcheck
		}
	}()
	r.onUnhandledResponse(ok(ours+";p2pup="+peer(2).String(), "SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-up2"))
	r.onUnhandledResponse(ok("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-y;p2p="+peer(3).String(), "SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bK-z"))
	snd.mu.Lock()
	defer snd.mu.Unlock()
	if len(snd.sent) != 1 || snd.sent[0].dst != peer(2) || strings.Contains(string(snd.sent[0].payload), "p2pup") {
		t.Errorf("tunnel got %d messages: %+v", len(snd.sent), snd.sent)
	}
	if n := r.Stats().StatelessResponses; n != 2 {
		t.Errorf("stateless responses %d, want 2", n)
	}
}
