// Package link runs one peer-protocol connection: a reader, a writer
// draining a bounded queue, and request/response multiplexing by
// transaction id (ARCHITECTURE.md §4). Agents, clients and super peers all
// talk through it; what the frames mean is up to the Handler.
//
// A super peer holds one connection per attached agent, most of them idle
// between keepalives, so an idle connection is kept cheap: the writer
// goroutine exists only while frames are queued, nothing waits on the
// context, no buffers are held between frames, and with Config.ParkAfter
// the reader goroutine itself exits after a quiet spell and the socket is
// watched by a tiny goroutine until data arrives (park_linux.go).
package link

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
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
	// ParkAfter lets the reader goroutine exit once the connection has
	// been quiet this long; the socket is then watched without a reader
	// until data arrives (0: never). Only TLS over a TCP socket parks (on
	// Linux); other connections keep their reader.
	ParkAfter time.Duration
	// Handler gets requests and unsolicited frames; nil answers every
	// request with CodeUnknownType.
	Handler Handler
}

// Conn is one multiplexed connection. Its methods are safe for concurrent
// use; exactly one of Run or Start must be called, once.
type Conn struct {
	nc  net.Conn
	cfg Config
	log zerolog.Logger
	// raw is the socket under a TLS connection that may park (nil: never).
	raw syscall.RawConn

	done     chan struct{} // closed by shutdown
	finished chan struct{} // closed when every goroutine of the Conn is gone
	closed   sync.Once
	err      atomic.Pointer[error]
	nextTx   atomic.Uint64
	// live counts the Conn's goroutines (reader or parked watcher, and
	// the writer while it runs); the last one out finishes the Conn.
	live    atomic.Int32
	stopCtx func() bool
	onEnd   func(error)

	mu      sync.Mutex                  // guards pending
	pending map[uint64]chan *wire.Frame // made by the first request: most agents' sessions never send one

	qmu     sync.Mutex // guards the fields below
	q       [][]byte   // encoded frames waiting for the writer
	spare   [][]byte   // the writer's last batch, reused for q
	writing bool       // a writer goroutine runs
	waiting bool       // it waits for frames; kick it
	parked  bool       // the reader is parked: an idle writer exits
	kick    chan struct{}
	shut    bool // no more frames are taken
	room    chan struct{}

	// Reader state, owned by whichever goroutine reads (the reader and
	// the parked watcher hand it over with a go statement).
	rbuf     []byte // read buffer (nil while parked); rbuf[rr:rw] is unread
	rr, rw   int
	frame    []byte // body of a frame too large for rbuf, being read
	fn       int
	lastRead time.Time
	lingered bool // the read deadline set is the ParkAfter one

	parks atomic.Uint64 // times the reader parked (Parks)

	// Value is for the owner (session state); Conn never touches it.
	Value atomic.Value
}

// New wraps nc; the caller then runs Run or Start. nc is owned by the Conn.
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
	c := &Conn{
		nc:       nc,
		cfg:      cfg,
		log:      log,
		done:     make(chan struct{}),
		finished: make(chan struct{}),
	}
	// The count held from the start is the reader's: a writer started by
	// a Send before Start cannot finish the Conn.
	c.live.Store(1)
	if tc, ok := nc.(*tls.Conn); ok {
		if cfg.ParkAfter > 0 && canPark {
			if sc, ok := tc.NetConn().(syscall.Conn); ok {
				if raw, err := sc.SyscallConn(); err == nil {
					c.raw = raw
				}
			}
		}
	}
	return c
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

// Parks counts how often the reader went idle and parked (ParkAfter).
func (c *Conn) Parks() uint64 { return c.parks.Load() }

// Close ends the connection; safe to call more than once.
func (c *Conn) Close() error {
	c.shutdown(ErrClosed)
	return nil
}

func (c *Conn) shutdown(err error) {
	c.closed.Do(func() {
		c.err.Store(&err)
		c.qmu.Lock()
		c.shut = true
		c.q = nil
		c.qmu.Unlock()
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
	c.Start(ctx, nil)
	<-c.finished
	return c.Err()
}

// Start serves the connection in the background, like Run without a
// goroutine waiting for the end: onEnd (if not nil) is called with the
// reason once the connection has ended and its goroutines are gone.
func (c *Conn) Start(ctx context.Context, onEnd func(error)) {
	c.onEnd = onEnd
	c.lastRead = time.Now()
	if ctx.Done() != nil {
		c.stopCtx = context.AfterFunc(ctx, func() { c.shutdown(ErrClosed) })
	}
	go c.readLoop()
}

// exit is the last call of every goroutine of the Conn.
func (c *Conn) exit() {
	if c.live.Add(-1) != 0 {
		return
	}
	// Only a shut-down Conn gets here: the reader or its parked watcher
	// holds a count until then.
	if c.stopCtx != nil {
		c.stopCtx()
	}
	close(c.finished)
	if c.onEnd != nil {
		c.onEnd(c.Err())
	}
}

func (c *Conn) readLoop() {
	defer c.exit()
	for {
		f, err := c.readFrame()
		if err != nil {
			select {
			case <-c.done:
				c.shutdown(ErrClosed)
				return
			default:
			}
			if c.idle(err) {
				if c.park() {
					return
				}
				err = fmt.Errorf("read: %w", os.ErrDeadlineExceeded)
			}
			c.shutdown(err)
			return
		}
		if f.IsResponse() {
			c.deliver(f)
			continue
		}
		if c.cfg.Handler == nil {
			c.ReplyError(f, wire.Errorf(wire.CodeUnknownType, "%s not served here", f.Type)) //nolint:errcheck
			continue
		}
		c.cfg.Handler(c, f)
	}
}

// idle reports whether err is the ParkAfter deadline passing between two
// frames with the connection otherwise healthy.
func (c *Conn) idle(err error) bool {
	return c.lingered && c.between() && errors.Is(err, os.ErrDeadlineExceeded)
}

// between reports whether no part of a frame has been read.
func (c *Conn) between() bool { return c.rr == c.rw && c.frame == nil }

// readBufSize is the read buffer: room for a burst of small frames (a
// TLS record often carries several); a larger frame is read into its own
// slice. Small, because every active agent session holds one.
const readBufSize = 4 << 10

// readPool holds read buffers: a reader takes one while it runs and a
// parked connection gives it back.
var readPool = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

// readFrame reads one frame. Its progress lives in the Conn, so a read
// that stops at the ParkAfter deadline in the middle of a frame goes on
// where it was, with the ReadTimeout deadline. Small frames are cut from
// the read buffer; a frame larger than it is read into its own slice.
func (c *Conn) readFrame() (*wire.Frame, error) {
	if err := c.setReadDeadline(); err != nil {
		return nil, err
	}
	for {
		if c.frame != nil {
			if c.fn == len(c.frame) {
				body := c.frame
				c.frame, c.fn = nil, 0
				return c.decode(body)
			}
			n, err := c.nc.Read(c.frame[c.fn:])
			c.fn += n
			if err != nil && c.fn < len(c.frame) && !c.lingerPassed(err) {
				return nil, fmt.Errorf("read frame body: %w", unexpected(err))
			}
			continue
		}
		if avail := c.rw - c.rr; avail >= 4 {
			n := int(binary.BigEndian.Uint32(c.rbuf[c.rr:]))
			if n > c.cfg.MaxFrame {
				return nil, fmt.Errorf("read: %w: %d > %d bytes", wire.ErrTooLarge, n, c.cfg.MaxFrame)
			}
			if avail >= 4+n {
				body := make([]byte, n)
				copy(body, c.rbuf[c.rr+4:])
				c.rr += 4 + n
				if c.rr == c.rw {
					c.rr, c.rw = 0, 0
				}
				return c.decode(body)
			}
			if 4+n > len(c.rbuf) {
				c.frame = make([]byte, n)
				c.fn = copy(c.frame, c.rbuf[c.rr+4:c.rw])
				c.rr, c.rw = 0, 0
				continue
			}
		}
		if c.rbuf == nil {
			c.rbuf = *readPool.Get().(*[]byte)
		}
		if c.rr > 0 && len(c.rbuf)-c.rw < readBufSize/4 {
			c.rw = copy(c.rbuf, c.rbuf[c.rr:c.rw])
			c.rr = 0
		}
		n, err := c.nc.Read(c.rbuf[c.rw:])
		c.rw += n
		if err != nil && n == 0 && !c.lingerPassed(err) {
			if !c.between() {
				err = unexpected(err)
			}
			return nil, fmt.Errorf("read: %w", err)
		}
	}
}

func (c *Conn) decode(body []byte) (*wire.Frame, error) {
	if c.cfg.ReadTimeout > 0 || c.raw != nil {
		c.lastRead = time.Now()
	}
	f, err := wire.DecodeBody(body)
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return f, nil
}

// releaseReadBuf gives an empty read buffer back to the pool.
func (c *Conn) releaseReadBuf() {
	if c.rbuf != nil && c.rr == c.rw {
		b := c.rbuf
		c.rbuf, c.rr, c.rw = nil, 0, 0
		readPool.Put(&b)
	}
}

// lingerPassed reports whether err is the ParkAfter deadline passing
// inside a frame, which is no reason to stop: the read goes on with the
// ReadTimeout deadline. Between frames it is for the reader to park.
func (c *Conn) lingerPassed(err error) bool {
	if !c.lingered || c.between() || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	c.lingered = false
	return c.nc.SetReadDeadline(c.timeoutDeadline()) == nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// timeoutDeadline is when silence closes the connection (zero: never).
func (c *Conn) timeoutDeadline() time.Time {
	if c.cfg.ReadTimeout <= 0 {
		return time.Time{}
	}
	return c.lastRead.Add(c.cfg.ReadTimeout)
}

// setReadDeadline arms the deadline for the next frame: ReadTimeout after
// the last one, or ParkAfter from now if that comes first and the
// connection may park.
func (c *Conn) setReadDeadline() error {
	if c.cfg.ReadTimeout <= 0 && c.raw == nil {
		return nil
	}
	dl := c.timeoutDeadline()
	c.lingered = false
	if c.raw != nil {
		if p := time.Now().Add(c.cfg.ParkAfter); dl.IsZero() || p.Before(dl) {
			dl, c.lingered = p, true
		}
	}
	if err := c.nc.SetReadDeadline(dl); err != nil {
		return fmt.Errorf("set read deadline: %w", err)
	}
	return nil
}

// park hands the idle connection to a watcher goroutine that starts a
// new reader when data (or an error) arrives; false when ReadTimeout has
// passed already.
func (c *Conn) park() bool {
	dl := c.timeoutDeadline()
	if !dl.IsZero() && !time.Now().Before(dl) {
		return false
	}
	// The watcher honours the read deadline: silence past ReadTimeout
	// still closes the connection.
	if err := c.nc.SetReadDeadline(dl); err != nil {
		return false
	}
	c.releaseReadBuf()
	c.qmu.Lock()
	c.parked = true
	c.wakeWriterLocked() // to let it go
	c.qmu.Unlock()
	c.parks.Add(1)
	c.live.Add(1)
	go c.watch()
	return true
}

// watch waits, without buffers or a deep stack, until the socket has
// something to read, then starts a reader again. A TLS record that
// crypto/tls buffered whole would be missed here, but the reader only
// parks after a read that found nothing buffered and went to the socket.
func (c *Conn) watch() {
	defer c.exit()
	if err := c.raw.Read(readable); err != nil {
		select {
		case <-c.done:
			c.shutdown(ErrClosed)
		default:
			c.shutdown(fmt.Errorf("read: %w", err))
		}
		return
	}
	c.qmu.Lock()
	c.parked = false
	c.qmu.Unlock()
	c.live.Add(1)
	go c.readLoop()
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

// writePool holds the buffers that coalesce a batch of small frames into
// one write (one TLS record instead of one per frame).
var writePool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// writeLoop drains the queue and waits for more. It exits when the
// connection ends, or once the queue is empty while the reader is parked:
// an idle connection has no writer.
func (c *Conn) writeLoop() {
	defer c.exit()
	var done [][]byte // the last batch written, handed back as spare
	for {
		c.qmu.Lock()
		if done != nil && cap(done) <= 64 {
			c.spare = done[:0]
		}
		done = nil
		batch := c.q
		if c.shut || (len(batch) == 0 && c.parked) {
			c.writing = false
			c.qmu.Unlock()
			return
		}
		if len(batch) == 0 {
			c.waiting = true
			c.qmu.Unlock()
			select {
			case <-c.kick:
			case <-c.done:
			}
			continue
		}
		c.q, c.spare = c.spare, nil
		if c.room != nil {
			close(c.room)
			c.room = nil
		}
		c.qmu.Unlock()
		if err := c.write(batch); err != nil {
			c.shutdown(err)
			return
		}
		clear(batch) // the frames are garbage now
		done = batch
	}
}

// wakeWriterLocked wakes a waiting writer; c.qmu is held.
func (c *Conn) wakeWriterLocked() {
	if c.waiting {
		c.waiting = false
		select {
		case c.kick <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

func (c *Conn) write(batch [][]byte) error {
	if err := c.nc.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout)); err != nil {
		return fmt.Errorf("set write deadline: %w", err)
	}
	if len(batch) == 1 {
		if _, err := c.nc.Write(batch[0]); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		return nil
	}
	bp := writePool.Get().(*[]byte)
	defer writePool.Put(bp)
	for i := 0; i < len(batch); {
		buf := (*bp)[:0]
		// Coalesce up to the buffer's size; a larger frame goes alone.
		for ; i < len(batch) && (len(buf) == 0 || len(buf)+len(batch[i]) <= cap(buf)); i++ {
			if len(buf) == 0 && len(batch[i]) > cap(buf) {
				if _, err := c.nc.Write(batch[i]); err != nil {
					return fmt.Errorf("write: %w", err)
				}
				continue
			}
			buf = append(buf, batch[i]...)
		}
		if len(buf) > 0 {
			if _, err := c.nc.Write(buf); err != nil {
				return fmt.Errorf("write: %w", err)
			}
		}
	}
	return nil
}

// enqueue adds b to the queue, starting a writer if none runs. With wait
// nil it fails at once on a full queue; otherwise it waits for room until
// wait is closed.
func (c *Conn) enqueue(b []byte, wait <-chan struct{}) error {
	for {
		c.qmu.Lock()
		if c.shut {
			c.qmu.Unlock()
			return ErrClosed
		}
		if len(c.q) < c.cfg.QueueLen {
			c.q = append(c.q, b)
			switch {
			case !c.writing:
				c.writing = true
				if c.kick == nil {
					c.kick = make(chan struct{}, 1)
				}
				c.live.Add(1)
				go c.writeLoop()
			default:
				c.wakeWriterLocked()
			}
			c.qmu.Unlock()
			return nil
		}
		if wait == nil {
			c.qmu.Unlock()
			return ErrQueueFull
		}
		if c.room == nil {
			c.room = make(chan struct{})
		}
		room := c.room
		c.qmu.Unlock()
		select {
		case <-room:
		case <-c.done:
			return ErrClosed
		case <-wait:
			return errWaitEnded
		}
	}
}

var errWaitEnded = errors.New("wait ended")

// Send queues f without waiting; it fails with ErrQueueFull when the peer
// is not keeping up (the caller drops and counts: this is for data frames).
func (c *Conn) Send(f *wire.Frame) error {
	b, err := wire.Encode(f)
	if err != nil {
		return err
	}
	return c.enqueue(b, nil)
}

// SendCtx queues f, waiting for room until ctx ends.
func (c *Conn) SendCtx(ctx context.Context, f *wire.Frame) error {
	b, err := wire.Encode(f)
	if err != nil {
		return err
	}
	wait := ctx.Done()
	if wait == nil {
		wait = make(chan struct{}) // never closed: wait for room or the end
	}
	if err := c.enqueue(b, wait); errors.Is(err, errWaitEnded) {
		return ctx.Err()
	} else if err != nil {
		return err
	}
	return nil
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
	if c.pending == nil {
		c.pending = make(map[uint64]chan *wire.Frame)
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
