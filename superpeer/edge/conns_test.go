package edge

import (
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"

	"github.com/p2psip/p2psip/common/wait"
)

// serveLimited serves l as sipgo does (a reader per connection that
// closes it on the first read error) and echoes what it reads; it returns
// the flow watch and the limits, and stops at the test's end.
func serveLimited(t *testing.T, l net.Listener, max, perIP int, silence time.Duration) (*connLimits, net.Listener) {
	t.Helper()
	limits := newConnLimits(max, perIP, silence, zerolog.Nop())
	fw := newFlowWatch()
	wl := fw.wrap(l, "TCP", limits, nil)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := wl.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 512)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		wl.Close()
		wg.Wait()
	})
	return limits, wl
}

func tcpListener(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// dialFrom connects to addr from the local address ip (loopback has all
// of 127/8, so each ip is another "host").
func dialFrom(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echoes says whether c is served: what it sends comes back.
func echoes(c net.Conn) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("OPTIONS\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 9)
	_, err := io.ReadFull(c, buf)
	return err
}

// closedByServer says whether the server closed c (read EOF or reset).
func closedByServer(c net.Conn, within time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(within))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func TestConnLimitPerIP(t *testing.T) {
	limits, l := serveLimited(t, tcpListener(t), 100, 3, time.Minute)
	addr := l.Addr().String()
	var mine []net.Conn
	for range 3 {
		c := dialFrom(t, "127.0.0.2", addr)
		if err := echoes(c); err != nil {
			t.Fatalf("connection within the per-address limit not served: %v", err)
		}
		mine = append(mine, c)
	}
	extra := dialFrom(t, "127.0.0.2", addr)
	if !closedByServer(extra, 2*time.Second) {
		t.Fatal("the 4th connection from one address was not closed")
	}
	if got := limits.refusedPerIP.Load(); got != 1 {
		t.Errorf("refused per address: %d, want 1", got)
	}
	// Another address is not affected.
	if err := echoes(dialFrom(t, "127.0.0.3", addr)); err != nil {
		t.Fatalf("a connection from another address not served: %v", err)
	}
	// A closed connection frees its place.
	mine[0].Close()
	wait.For(t, 5*time.Second, "the closed connection to be uncounted", func() bool { return limits.Open() == 3 })
	if err := echoes(dialFrom(t, "127.0.0.2", addr)); err != nil {
		t.Fatalf("a connection after one closed not served: %v", err)
	}
}

func TestConnLimitTotal(t *testing.T) {
	limits, l := serveLimited(t, tcpListener(t), 4, 100, time.Minute)
	addr := l.Addr().String()
	for i := range 4 {
		if err := echoes(dialFrom(t, fmt.Sprintf("127.0.0.%d", 10+i), addr)); err != nil {
			t.Fatalf("connection %d not served: %v", i, err)
		}
	}
	if !closedByServer(dialFrom(t, "127.0.0.20", addr), 2*time.Second) {
		t.Fatal("the 5th connection was not closed")
	}
	if got := limits.refusedMax.Load(); got != 1 {
		t.Errorf("refused by the total limit: %d, want 1", got)
	}
	if got := limits.Open(); got != 4 {
		t.Errorf("open: %d, want 4", got)
	}
}

// A connection that says nothing is closed after the silence bound; one
// that spoke stays open past it.
func TestConnSilence(t *testing.T) {
	const silence = 300 * time.Millisecond
	limits, l := serveLimited(t, tcpListener(t), 100, 100, silence)
	addr := l.Addr().String()
	quiet := dialFrom(t, "127.0.0.2", addr)
	talker := dialFrom(t, "127.0.0.2", addr)
	if err := echoes(talker); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if !closedByServer(quiet, 5*time.Second) {
		t.Fatal("a silent connection was not closed")
	}
	if took := time.Since(start); took < silence/2 {
		t.Errorf("silent connection closed after %s, before its bound %s", took, silence)
	}
	if got := limits.silent.Load(); got != 1 {
		t.Errorf("silent closes: %d, want 1", got)
	}
	// Past the bound: the talker must outlive it.
	if closedByServer(talker, 2*silence) {
		t.Fatal("a connection that had spoken was closed")
	}
	if err := echoes(talker); err != nil {
		t.Fatalf("a connection that had spoken was closed: %v", err)
	}
	wait.For(t, 5*time.Second, "the silent connection to be uncounted", func() bool { return limits.Open() == 1 })
}

// Over TLS the bound covers the handshake: a client that connects and
// never sends its ClientHello is closed; one that completes it and
// speaks stays.
func TestConnSilenceTLS(t *testing.T) {
	const silence = 300 * time.Millisecond
	raw := tcpListener(t)
	limits, l := serveLimited(t, tls.NewListener(raw, &tls.Config{Certificates: []tls.Certificate{nodeCert(t)}}), 100, 100, silence)
	addr := l.Addr().String()
	stalled := dialFrom(t, "127.0.0.2", addr)
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoes(c); err != nil {
		t.Fatal(err)
	}
	if !closedByServer(stalled, 5*time.Second) {
		t.Fatal("a connection that never started its TLS handshake was not closed")
	}
	if closedByServer(c, 2*silence) {
		t.Fatal("a TLS connection that had spoken was closed")
	}
	if err := echoes(c); err != nil {
		t.Fatalf("a TLS connection that had spoken was closed: %v", err)
	}
	if got := limits.silent.Load(); got != 1 {
		t.Errorf("silent closes: %d, want 1", got)
	}
}

// nodeCert is a certificate like a super peer's own (Ed25519, self-signed).
func nodeCert(t *testing.T) tls.Certificate {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.SelfSignedCertificate(key, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// IPv6 sources count per /64: addresses of one /64 share the limit,
// another /64 has its own.
func TestConnLimitIPv6Prefix(t *testing.T) {
	l := newConnLimits(100, 2, time.Minute, zerolog.Nop())
	addr := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	for _, a := range []string{"[2001:db8:1:2::1]:5060", "[2001:db8:1:2::ffff]:5060"} {
		if _, why := l.admit(addr(a)); why != "" {
			t.Fatalf("%s refused: %s", a, why)
		}
	}
	if _, why := l.admit(addr("[2001:db8:1:2:abcd::9]:5060")); why == "" {
		t.Error("a third address of the same /64 was admitted past a per-address limit of 2")
	}
	if _, why := l.admit(addr("[2001:db8:1:3::1]:5060")); why != "" {
		t.Errorf("another /64 refused: %s", why)
	}
	if _, why := l.admit(addr("192.0.2.1:5060")); why != "" {
		t.Errorf("an IPv4 address refused: %s", why)
	}
}
