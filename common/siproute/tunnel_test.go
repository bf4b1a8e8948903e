package siproute

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
)

type sent struct {
	dst, hint ids.PeerID
	payload   []byte
}

type fakeSender struct {
	mu   sync.Mutex
	sent []sent
	err  error
}

func (f *fakeSender) SendTunnel(dst, hint ids.PeerID, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.sent = append(f.sent, sent{dst, hint, p})
	return nil
}

func peer(n byte) ids.PeerID { return ids.PeerID{0xee, 15: n} }

func newTestTunnel(t *testing.T, queue int) (*tunnel, *fakeSender, *counters) {
	return newTestTunnelBytes(t, queue, 1<<20)
}

func newTestTunnelBytes(t *testing.T, queue, queueBytes int) (*tunnel, *fakeSender, *counters) {
	s := &fakeSender{}
	var st counters
	tun := newTunnel(s, queue, queueBytes, &st, zerolog.Nop())
	tun.start()
	t.Cleanup(func() { tun.Close() })
	return tun, s, &st
}

// adopt plays sipgo's accept loop: take the connection, then read (which
// tells ensure that it is pooled).
func adopt(t *testing.T, tun *tunnel) *vconn {
	t.Helper()
	c, err := tun.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c.(*vconn)
}

func TestVconnReadWrite(t *testing.T) {
	tun, snd, _ := newTestTunnel(t, 2)
	msg := []byte(crlf("ACK sip:a@b SIP/2.0\nContent-Length: 0\n\n"))
	if err := tun.deliver(peer(1), peer(9), msg); err != nil {
		t.Fatal(err)
	}
	c := adopt(t, tun)
	if err := tun.deliver(peer(1), peer(9), msg); err != nil {
		t.Fatal(err)
	}
	if err := tun.deliver(peer(1), peer(9), msg); err == nil {
		t.Error("third payload fit a queue of 2")
	}
	// Two queued messages come out whole, in order, across short reads.
	var got []byte
	buf := make([]byte, 7)
	for len(got) < 2*len(msg) {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != string(msg)+string(msg) {
		t.Errorf("read %q", got)
	}
	if c.RemoteAddr().String() != "100.64.0.2:5061" || c.LocalAddr().String() != "100.64.0.1:5061" {
		t.Errorf("addrs %v %v", c.LocalAddr(), c.RemoteAddr())
	}
	if p, ok := tun.peerOf("100.64.0.2:5061"); !ok || p != peer(1) {
		t.Errorf("peerOf = %v %v", p, ok)
	}

	if _, err := c.Write([]byte("\r\n")); err != nil || len(snd.sent) != 0 {
		t.Errorf("CRLF pong: %v, %d sent", err, len(snd.sent))
	}
	out := []byte("SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	out[0] = 'X' // sipgo reuses its buffer
	if len(snd.sent) != 1 || snd.sent[0].dst != peer(1) || snd.sent[0].hint != peer(9) || snd.sent[0].payload[0] != 'S' {
		t.Errorf("sent %+v", snd.sent)
	}
	snd.err = errors.New("unreachable")
	if _, err := c.Write(out); err == nil {
		t.Error("SendTunnel error not returned to sipgo")
	}

	// A blocked reader wakes up with EOF when the peer goes away.
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(buf)
		done <- err
	}()
	if !tun.gone(peer(1)) {
		t.Fatal("gone: no connection")
	}
	if err := <-done; !errors.Is(err, io.EOF) {
		t.Errorf("read after close: %v", err)
	}
	if _, err := c.Write(out); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after close: %v", err)
	}
	c.Close() // idempotent
	if _, ok := tun.peerOf("100.64.0.2:5061"); ok {
		t.Error("closed connection still mapped")
	}
}

// The queue is bounded by bytes too, and what sipgo has read no longer
// counts.
func TestVconnQueueBytes(t *testing.T) {
	msg := []byte(crlf("ACK sip:a@b SIP/2.0\nContent-Length: 0\n\n"))
	tun, _, _ := newTestTunnelBytes(t, 100, 2*len(msg))
	for i := range 2 {
		if err := tun.deliver(peer(1), peer(9), msg); err != nil {
			t.Fatalf("payload %d: %v", i, err)
		}
	}
	c := adopt(t, tun)
	if err := tun.deliver(peer(1), peer(9), msg); err == nil {
		t.Fatal("a third payload fit a queue of two payloads' bytes")
	}
	buf := make([]byte, 2*len(msg))
	for n := 0; n < len(buf); {
		k, err := c.Read(buf[n:])
		if err != nil {
			t.Fatal(err)
		}
		n += k
	}
	for i := range 2 {
		if err := tun.deliver(peer(1), peer(9), msg); err != nil {
			t.Fatalf("after reading, payload %d: %v", i, err)
		}
	}
}

func TestTunnelEnsure(t *testing.T) {
	tun, _, st := newTestTunnel(t, 4)
	ctx := context.Background()
	go func() {
		for {
			c, err := tun.Accept()
			if err != nil {
				return
			}
			go c.Read(make([]byte, 10)) //nolint:errcheck // blocks until closed
		}
	}()
	a1, err := tun.ensure(ctx, peer(1), peer(8))
	if err != nil {
		t.Fatal(err)
	}
	a2, err := tun.ensure(ctx, peer(2), ids.PeerID{})
	if err != nil {
		t.Fatal(err)
	}
	again, _ := tun.ensure(ctx, peer(1), peer(7))
	if a1 == a2 || a1 != again {
		t.Errorf("addresses %s %s %s", a1, a2, again)
	}
	c := tun.conns[peer(1)]
	if h := tun.hint(c); h != peer(7) {
		t.Errorf("a fresh contact's hint must replace the learned one: %v", h)
	}
	if err := tun.deliver(peer(1), peer(7), []byte(crlf("ACK sip:a@b SIP/2.0\n\n"))); err != nil {
		t.Fatal(err)
	}
	if h := tun.hint(c); h != peer(7) {
		t.Errorf("the via of a delivered payload is the hint: %v", h)
	}
	if !isFake(a1[:len(a1)-5]) || isFake("127.0.0.1") {
		t.Error("isFake")
	}
	// sipgo closing a connection by itself counts as a reset.
	c.Close()
	if st.resets.Load() != 1 {
		t.Errorf("resets %d", st.resets.Load())
	}
	tun.Close()
	if _, err := tun.ensure(ctx, peer(3), ids.PeerID{}); !errors.Is(err, errNotServing) {
		t.Errorf("ensure after close: %v", err)
	}
}

func TestTunnelEnsureTimeout(t *testing.T) {
	tun, _, _ := newTestTunnel(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	// Nobody accepts: the wait ends with the context.
	if _, err := tun.ensure(ctx, peer(1), ids.PeerID{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ensure without sipgo: %v", err)
	}
}

func TestFakeAddressWrap(t *testing.T) {
	tun, _, _ := newTestTunnel(t, 4)
	size := uint32(1) << (32 - fakePrefix.Bits())
	tun.next = size - 2
	a, _ := tun.allocLocked()
	b, _ := tun.allocLocked()
	if a.String() != "100.127.255.254" || b.String() != "100.64.0.2" {
		t.Errorf("wrap: %v then %v", a, b)
	}
}

func TestDialerGuard(t *testing.T) {
	d := guardedDialer(nil)
	start := time.Now()
	_, err := d.Dial("tcp", "100.64.0.9:5061")
	if !errors.Is(err, errFakeAddr) {
		t.Fatalf("dial a fake address: %v", err)
	}
	if time.Since(start) > time.Second {
		t.Error("the guard waited for the network")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial loopback: %v", err)
	}
	c.Close()
}
