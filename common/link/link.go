// Package link runs one peer-protocol connection: a reader loop, a writer
// draining a bounded queue, and request/response multiplexing by
// transaction id (ARCHITECTURE.md §4). Agents, clients and super peers all
// talk through it; what the frames mean is up to the Handler.
package link

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/wire"
)

// Errors a caller may branch on.
var (
	// ErrClosed: the connection is gone; pending requests fail with it.
	ErrClosed = errors.New("link closed")
	// ErrQueueFull: the peer is not draining its queue; a data frame was
	// dropped (control traffic waits instead).
	ErrQueueFull = errors.New("link send queue full")
)

// Handler receives every frame that is not a response to one of our
// requests. It runs on the reader goroutine and must not block: work that
// waits (a quorum write) is handed to another goroutine.
type Handler func(c *Conn, f *wire.Frame)

// Config tunes a Conn. Zero values mean the defaults.
type Config struct {
	// QueueLen bounds the outbound queue (default 1024 frames). When it is
	// full, Send drops (data) and SendCtx waits (control).
	QueueLen int
	// MaxFrame bounds an inbound frame (default wire.MaxFrameSize).
	MaxFrame int
	// ReadTimeout closes a connection that sent nothing for this long
	// (0: none). Agents' sessions set it from the keepalive interval.
	ReadTimeout time.Duration
	// WriteTimeout closes a connection whose peer does not read (default 10s).
	WriteTimeout time.Duration
	// Handler gets requests and unsolicited frames; nil answers every
	// request with CodeUnknownType.
	Handler Handler
}

// Conn is one multiplexed connection. Its methods are safe for concurrent
// use; Run must be called exactly once.
type Conn struct {
	nc  net.Conn
	cfg Config
	log zerolog.Logger

	out    chan []byte
	done   chan struct{}
	closed sync.Once
	err    atomic.Pointer[error]
	nextTx atomic.Uint64

	mu      sync.Mutex // guards pending
	pending map[uint64]chan *wire.Frame

	// Value is for the owner (session state); Conn never touches it.
	Value atomic.Value
}

// New wraps nc; the caller then runs Run. nc is owned by the Conn.
func New(nc net.Conn, cfg Config, log zerolog.Logger) *Conn {
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = 1024
	}
	if cfg.MaxFrame <= 0 {
		cfg.MaxFrame = wire.MaxFrameSize
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	return &Conn{
		nc:      nc,
		cfg:     cfg,
		log:     log,
		out:     make(chan []byte, cfg.QueueLen),
		done:    make(chan struct{}),
		pending: make(map[uint64]chan *wire.Frame),
	}
}

// RemoteAddr is the peer's transport address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// NetConn returns the underlying connection (for TLS state).
func (c *Conn) NetConn() net.Conn { return c.nc }

// Done is closed when the connection has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is why the connection ended (nil while it runs).
func (c *Conn) Err() error {
	if p := c.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Close ends the connection; safe to call more than once.
func (c *Conn) Close() error {
	c.shutdown(ErrClosed)
	return nil
}

func (c *Conn) shutdown(err error) {
	c.closed.Do(func() {
		c.err.Store(&err)
		close(c.done)
		c.nc.Close()
		c.mu.Lock()
		for id, ch := range c.pending {
			delete(c.pending, id)
			close(ch)
		}
		c.mu.Unlock()
	})
}

// Run serves the connection until it breaks, Close is called or ctx ends.
// It returns the reason (ErrClosed for a local Close or ctx).
func (c *Conn) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		c.shutdown(c.writeLoop())
	}()
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			c.shutdown(ErrClosed)
		case <-c.done:
		}
	}()
	c.shutdown(c.readLoop())
	wg.Wait()
	return c.Err()
}

func (c *Conn) readLoop() error {
	r := bufio.NewReaderSize(c.nc, 32<<10)
	for {
		if c.cfg.ReadTimeout > 0 {
			if err := c.nc.SetReadDeadline(time.Now().Add(c.cfg.ReadTimeout)); err != nil {
				return fmt.Errorf("set read deadline: %w", err)
			}
		}
		f, err := wire.ReadFrame(r, c.cfg.MaxFrame)
		if err != nil {
			select {
			case <-c.done:
				return ErrClosed
			default:
			}
			return fmt.Errorf("read: %w", err)
		}
		if f.IsResponse() {
			c.deliver(f)
			continue
		}
		if c.cfg.Handler == nil {
			c.ReplyError(f, wire.Errorf(wire.CodeUnknownType, "%s not served here", f.Type))
			continue
		}
		c.cfg.Handler(c, f)
	}
}

func (c *Conn) deliver(f *wire.Frame) {
	c.mu.Lock()
	ch, ok := c.pending[f.TxID]
	delete(c.pending, f.TxID)
	c.mu.Unlock()
	if ok {
		ch <- f // buffered 1, one response per txid
	}
	// A late response to a request that timed out is dropped.
}

func (c *Conn) writeLoop() error {
	w := bufio.NewWriterSize(c.nc, 32<<10)
	for {
		select {
		case <-c.done:
			return ErrClosed
		case b := <-c.out:
			if err := c.nc.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout)); err != nil {
				return fmt.Errorf("set write deadline: %w", err)
			}
			if _, err := w.Write(b); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			// Coalesce whatever is already queued into one flush.
			for more := true; more; {
				select {
				case b := <-c.out:
					if _, err := w.Write(b); err != nil {
						return fmt.Errorf("write: %w", err)
					}
				default:
					more = false
				}
			}
			if err := w.Flush(); err != nil {
				return fmt.Errorf("write: %w", err)
			}
		}
	}
}

// Send queues f without waiting; it fails with ErrQueueFull when the peer
// is not keeping up (the caller drops and counts: this is for data frames).
func (c *Conn) Send(f *wire.Frame) error {
	b, err := wire.Encode(f)
	if err != nil {
		return err
	}
	select {
	case <-c.done:
		return ErrClosed
	default:
	}
	select {
	case c.out <- b:
		return nil
	case <-c.done:
		return ErrClosed
	default:
		return ErrQueueFull
	}
}

// SendCtx queues f, waiting for room until ctx ends.
func (c *Conn) SendCtx(ctx context.Context, f *wire.Frame) error {
	b, err := wire.Encode(f)
	if err != nil {
		return err
	}
	select {
	case <-c.done:
		return ErrClosed
	default:
	}
	select {
	case c.out <- b:
		return nil
	case <-c.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Request sends a request of type t with body (a []byte is sent as is,
// anything else CBOR-encoded) and waits for its response. A FlagError
// response comes back as a *wire.Error.
func (c *Conn) Request(ctx context.Context, t wire.Type, body any) (*wire.Frame, error) {
	f := &wire.Frame{Header: wire.Header{Type: t}}
	if err := setBody(f, body); err != nil {
		return nil, err
	}
	return c.RequestFrame(ctx, f)
}

// RequestFrame sends f (its TxID is assigned here) and waits for the response.
func (c *Conn) RequestFrame(ctx context.Context, f *wire.Frame) (*wire.Frame, error) {
	f.TxID = c.nextTx.Add(1)
	ch := make(chan *wire.Frame, 1)
	c.mu.Lock()
	select {
	case <-c.done:
		c.mu.Unlock()
		return nil, c.closedErr()
	default:
	}
	c.pending[f.TxID] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, f.TxID)
		c.mu.Unlock()
	}
	if err := c.SendCtx(ctx, f); err != nil {
		forget()
		return nil, fmt.Errorf("%s request: %w", f.Type, err)
	}
	select {
	case resp, ok := <-ch:
		if !ok {
			return nil, fmt.Errorf("%s request: %w", f.Type, c.closedErr())
		}
		if resp.Flags&wire.FlagError != 0 {
			var e wire.Error
			if err := wire.Unmarshal(resp.Body, &e); err != nil {
				return nil, fmt.Errorf("%s request: error response: %w", f.Type, err)
			}
			return nil, &e
		}
		return resp, nil
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("%s request: %w", f.Type, ctx.Err())
	}
}

func (c *Conn) closedErr() error {
	if err := c.Err(); err != nil && !errors.Is(err, ErrClosed) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return ErrClosed
}

// Reply answers req with body.
func (c *Conn) Reply(req *wire.Frame, body any) error {
	f := &wire.Frame{Header: wire.Header{Type: req.Type, Flags: wire.FlagResponse, TxID: req.TxID}}
	if err := setBody(f, body); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.WriteTimeout)
	defer cancel()
	return c.SendCtx(ctx, f)
}

// ReplyError answers req with an error; non-protocol errors become
// CodeInternal with their text.
func (c *Conn) ReplyError(req *wire.Frame, err error) error {
	var e *wire.Error
	if !errors.As(err, &e) {
		e = &wire.Error{Code: wire.CodeInternal, Reason: err.Error()}
	}
	if len(e.Reason) > wire.MaxReason {
		e = &wire.Error{Code: e.Code, Reason: e.Reason[:wire.MaxReason]}
	}
	f := &wire.Frame{Header: wire.Header{Type: req.Type, Flags: wire.FlagResponse | wire.FlagError, TxID: req.TxID}}
	if err := setBody(f, e); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.WriteTimeout)
	defer cancel()
	return c.SendCtx(ctx, f)
}

func setBody(f *wire.Frame, body any) error {
	switch b := body.(type) {
	case nil:
	case []byte:
		f.Body = b
	default:
		enc, err := wire.Marshal(body)
		if err != nil {
			return err
		}
		f.Body = enc
	}
	return nil
}
