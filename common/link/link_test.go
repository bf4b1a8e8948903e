package link

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/wire"
)

// pair runs two Conns over a loopback TCP connection.
func pair(t *testing.T, server Handler) (client, srv *Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	cc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc := <-accepted
	log := zerolog.New(zerolog.NewTestWriter(t))
	client = New(cc, Config{}, log)
	srv = New(sc, Config{Handler: server}, log)
	done := make(chan struct{}, 2)
	for _, c := range []*Conn{client, srv} {
		go func() { c.Run(context.Background()); done <- struct{}{} }() //nolint:errcheck
	}
	t.Cleanup(func() {
		client.Close()
		srv.Close()
		<-done
		<-done
	})
	return client, srv
}

func TestRequestResponseMultiplexed(t *testing.T) {
	c, _ := pair(t, func(c *Conn, f *wire.Frame) {
		// Answer out of order: later requests first.
		go func() {
			if string(f.Body) == "slow" {
				time.Sleep(50 * time.Millisecond) // makes the order observable, not a wait for correctness
			}
			c.Reply(f, append([]byte("re:"), f.Body...)) //nolint:errcheck
		}()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type res struct {
		body string
		err  error
	}
	out := make(chan res, 2)
	for _, b := range []string{"slow", "fast"} {
		go func() {
			f, err := c.Request(ctx, wire.TypeFetch, []byte(b))
			if err != nil {
				out <- res{err: err}
				return
			}
			out <- res{body: string(f.Body)}
		}()
	}
	got := map[string]bool{}
	for range 2 {
		r := <-out
		if r.err != nil {
			t.Fatal(r.err)
		}
		got[r.body] = true
	}
	if !got["re:slow"] || !got["re:fast"] {
		t.Fatalf("responses matched to the wrong requests: %v", got)
	}
}

func TestErrorsAndUnknownTypes(t *testing.T) {
	c, _ := pair(t, func(c *Conn, f *wire.Frame) {
		c.ReplyError(f, wire.Errorf(wire.CodeForbidden, "no")) //nolint:errcheck
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Request(ctx, wire.TypeStore, nil)
	if !errors.Is(err, &wire.Error{Code: wire.CodeForbidden}) {
		t.Fatalf("got %v, want 403", err)
	}
	// A Conn without a handler answers every request with CodeUnknownType.
	c2, _ := pair(t, nil)
	if _, err := c2.Request(ctx, wire.TypeStore, nil); !errors.Is(err, &wire.Error{Code: wire.CodeUnknownType}) {
		t.Fatalf("got %v, want 415", err)
	}
}

func TestPendingRequestsFailWhenTheConnectionDies(t *testing.T) {
	c, srv := pair(t, func(c *Conn, f *wire.Frame) {}) // never answers
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Request(ctx, wire.TypeFetch, nil)
		errc <- err
	}()
	srv.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("got %v, want ErrClosed", err)
		}
	case <-ctx.Done():
		t.Fatal("pending request not failed when the connection closed")
	}
	if _, err := c.Request(ctx, wire.TypeFetch, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("request on a closed link: %v", err)
	}
	// A request that times out is forgotten, not leaked.
	c2, _ := pair(t, func(c *Conn, f *wire.Frame) {})
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := c2.Request(short, wire.TypeFetch, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want deadline", err)
	}
	c2.mu.Lock()
	n := len(c2.pending)
	c2.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d pending entries left after a timeout", n)
	}
}

func TestSendDropsWhenTheQueueIsFull(t *testing.T) {
	a, b := net.Pipe() // nobody reads b: the writer blocks, the queue fills
	defer b.Close()
	c := New(a, Config{QueueLen: 2, WriteTimeout: time.Minute}, zerolog.Nop())
	done := make(chan struct{})
	go func() { c.Run(context.Background()); close(done) }() //nolint:errcheck
	f := &wire.Frame{Header: wire.Header{Type: wire.TypeTunnel, Flags: wire.FlagRouted}, Body: []byte("x")}
	var full bool
	for range 10 {
		if err := c.Send(f); errors.Is(err, ErrQueueFull) {
			full = true
			break
		}
	}
	if !full {
		t.Fatal("Send never reported a full queue")
	}
	c.Close()
	<-done
}
