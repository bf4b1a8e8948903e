package link

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/wait"
	"github.com/p2psip/p2psip/common/wire"
)

// tlsPair connects a client Conn and a raw server-side *tls.Conn over
// loopback TCP; the caller wraps the server side with its own Config.
func tlsPair(t *testing.T) (client, server *tls.Conn) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "link-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan *tls.Conn, 1)
	go func() {
		nc, err := l.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		tc := tls.Server(nc, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
		if tc.Handshake() != nil {
			tc.Close()
			accepted <- nil
			return
		}
		accepted <- tc
	}()
	client, err = tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // test peer
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("server handshake failed")
	}
	return client, server
}

func echo(c *Conn, f *wire.Frame) { c.Reply(f, f.Body) } //nolint:errcheck

// An idle TLS connection parks its reader and wakes up for the next
// frame, also for one that arrives in pieces around the park deadline.
func TestIdleConnectionParksAndWakes(t *testing.T) {
	ct, st := tlsPair(t)
	log := zerolog.New(zerolog.NewTestWriter(t))
	srv := New(st, Config{Handler: echo, ParkAfter: 20 * time.Millisecond, ReadTimeout: time.Minute}, log)
	ended := make(chan error, 1)
	srv.Start(context.Background(), func(err error) { ended <- err })
	defer func() { srv.Close(); <-ended }()
	if srv.raw == nil {
		t.Fatal("a TLS connection over TCP did not get a socket to park on")
	}
	cli := New(ct, Config{}, log)
	cli.Start(context.Background(), nil)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		parks := srv.Parks()
		wait.For(t, 10*time.Second, "the reader to park", func() bool { return srv.Parks() > parks })
		resp, err := cli.Request(ctx, wire.TypeFetch, []byte{byte(i)})
		if err != nil {
			t.Fatalf("request %d after parking: %v", i, err)
		}
		if len(resp.Body) != 1 || resp.Body[0] != byte(i) {
			t.Fatalf("request %d: body %v", i, resp.Body)
		}
	}
	// A frame cut in two with a park deadline in between: the reader
	// must keep the first half and finish the frame.
	b, err := wire.Encode(&wire.Frame{Header: wire.Header{Type: wire.TypeFetch, TxID: 999}, Body: []byte("split")})
	if err != nil {
		t.Fatal(err)
	}
	parks := srv.Parks()
	wait.For(t, 10*time.Second, "the reader to park", func() bool { return srv.Parks() > parks })
	for _, part := range [][]byte{b[:2], b[2:7], b[7:]} {
		if _, err := ct.Write(part); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // longer than ParkAfter on purpose: the case under test
	}
	// The reply to TxID 999 has no pending request on the client; a
	// request after it proves the server read the split frame whole and
	// kept the stream in step.
	if _, err := cli.Request(ctx, wire.TypeFetch, []byte("after")); err != nil {
		t.Fatalf("request after a split frame: %v", err)
	}
	select {
	case err := <-ended:
		t.Fatalf("server connection ended: %v", err)
	default:
	}
}

// A parked connection still honours ReadTimeout and notices the peer
// closing.
func TestParkedConnectionTimesOutAndSeesClose(t *testing.T) {
	log := zerolog.New(zerolog.NewTestWriter(t))
	ct, st := tlsPair(t)
	srv := New(st, Config{Handler: echo, ParkAfter: 10 * time.Millisecond, ReadTimeout: 300 * time.Millisecond}, log)
	ended := make(chan error, 1)
	start := time.Now()
	srv.Start(context.Background(), func(err error) { ended <- err })
	select {
	case err := <-ended:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("silent peer: got %v, want a read deadline error", err)
		}
		if took := time.Since(start); took < 300*time.Millisecond {
			t.Fatalf("closed after %v, before ReadTimeout", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a silent parked connection was not closed")
	}
	if srv.Parks() == 0 {
		t.Fatal("the reader never parked")
	}
	ct.Close()

	ct, st = tlsPair(t)
	srv = New(st, Config{Handler: echo, ParkAfter: 10 * time.Millisecond}, log)
	srv.Start(context.Background(), func(err error) { ended <- err })
	wait.For(t, 10*time.Second, "the reader to park", func() bool { return srv.Parks() > 0 })
	ct.Close()
	select {
	case err := <-ended:
		if err == nil || errors.Is(err, ErrClosed) {
			t.Fatalf("peer close: got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a parked connection did not notice the peer closing")
	}
}

// Many idle parked connections hold no reader or writer goroutines, also
// after they have answered a request (which started a writer).
func TestParkedConnectionsHoldNoGoroutines(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("parking is Linux only")
	}
	log := zerolog.Nop()
	const n = 50
	var clis []*tls.Conn
	var srvs []*Conn
	ended := make(chan error, n)
	for range n {
		ct, st := tlsPair(t)
		srv := New(st, Config{Handler: echo, ParkAfter: 10 * time.Millisecond}, log)
		srv.Start(context.Background(), func(err error) { ended <- err })
		clis, srvs = append(clis, ct), append(srvs, srv)
	}
	defer func() {
		for i := range srvs {
			srvs[i].Close()
			clis[i].Close()
			<-ended
		}
	}()
	for i, ct := range clis {
		if err := wire.WriteFrame(ct, &wire.Frame{Header: wire.Header{Type: wire.TypeFetch, TxID: 1}, Body: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
		ct.SetReadDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck
		if f, err := wire.ReadFrame(ct, 1<<10); err != nil || len(f.Body) != 1 || f.Body[0] != byte(i) {
			t.Fatalf("connection %d: reply %v, %v", i, f, err)
		}
	}
	// What is left per connection is the watcher: no reader, no writer.
	buf := make([]byte, 1<<20)
	var readers, writers int
	wait.For(t, 10*time.Second, "readers and writers of idle connections to exit", func() bool {
		stacks := string(buf[:runtime.Stack(buf, true)])
		readers = countSubstr(stacks, "link.(*Conn).readLoop")
		writers = countSubstr(stacks, "link.(*Conn).writeLoop")
		return readers == 0 && writers == 0
	})
	for _, s := range srvs {
		if s.Parks() == 0 {
			t.Fatal("a connection never parked")
		}
		if s.rbuf != nil {
			t.Fatal("a parked connection holds its read buffer")
		}
	}
}

func countSubstr(s, sub string) int { return strings.Count(s, sub) }
