package siproute

import (
	"bytes"
	"io"
	"net"
	"sync"
	"time"

	"github.com/p2psip/p2psip/common/ids"
)

// vconn is the virtual stream connection sipgo sees for one remote Peer-ID.
// Inbound payloads queue up for sipgo's reader; each sipgo Write is one
// whole SIP message and leaves as one SendTunnel call. The queue is bounded
// (tunnel.queueLen payloads, tunnel.queueBytes bytes): when sipgo falls
// behind that far, new payloads are dropped and counted rather than
// blocking the uplink's reader.
type vconn struct {
	t     *tunnel
	peer  ids.PeerID
	raddr *net.TCPAddr
	addr  string // raddr.String(), the key sipgo and the tunnel use

	// pooled is closed by sipgo's first Read, which it makes only after it
	// has put the connection in its pool (TransportTCP.initConnection).
	pooled     chan struct{}
	pooledOnce sync.Once
	wake       chan struct{} // capacity 1: "queue changed"
	done       chan struct{} // closed by Close
	closeOnce  sync.Once

	mu sync.Mutex // guards the fields below
	q  [][]byte   // whole messages not yet read
	qb int        // their bytes
	// cur is the unread rest of the message sipgo is reading.
	cur []byte
}

func newVconn(t *tunnel, peer ids.PeerID, raddr *net.TCPAddr) *vconn {
	return &vconn{
		t: t, peer: peer, raddr: raddr, addr: raddr.String(),
		pooled: make(chan struct{}), wake: make(chan struct{}, 1), done: make(chan struct{}),
	}
}

// push queues one inbound payload; false when the queue is full or the
// connection closed.
func (c *vconn) push(p []byte) bool {
	c.mu.Lock()
	select {
	case <-c.done:
		c.mu.Unlock()
		return false
	default:
	}
	if len(c.q) >= c.t.queueLen || c.qb+len(p) > c.t.queueBytes {
		c.mu.Unlock()
		return false
	}
	c.q = append(c.q, p)
	c.qb += len(p)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return true
}

// Read hands sipgo as many queued bytes as fit in b. It returns io.EOF once
// the connection is closed, dropping whatever was still queued.
func (c *vconn) Read(b []byte) (int, error) {
	c.pooledOnce.Do(func() { close(c.pooled) })
	for {
		select {
		case <-c.done:
			return 0, io.EOF
		default:
		}
		c.mu.Lock()
		n := 0
		for n < len(b) {
			if len(c.cur) == 0 {
				if len(c.q) == 0 {
					break
				}
				c.cur, c.q[0] = c.q[0], nil
				c.q = c.q[1:]
				c.qb -= len(c.cur)
			}
			k := copy(b[n:], c.cur)
			c.cur = c.cur[k:]
			n += k
		}
		c.mu.Unlock()
		if n > 0 {
			return n, nil
		}
		select {
		case <-c.wake:
		case <-c.done:
		}
	}
}

// Write sends one message sipgo wrote to the peer. sipgo writes a CRLF
// "pong" when it sees a CRLFCRLF keepalive; there is nothing to carry for
// it over the overlay, so it is swallowed.
func (c *vconn) Write(b []byte) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	if len(bytes.TrimLeft(b, "\r\n")) == 0 {
		return len(b), nil
	}
	if err := c.t.send(c, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close is idempotent; it wakes a blocked Read and removes the connection
// from the tunnel so that the next message to or from the peer gets a new
// one. sipgo calls it when it gives up on the connection (a payload it
// could not parse); that is counted as a reset.
func (c *vconn) Close() error { return c.close(false) }

func (c *vconn) close(ours bool) error {
	c.closeOnce.Do(func() {
		if !ours && c.t.isServing() {
			c.t.stats.resets.Add(1)
			c.t.log.Warn().Str("peer", c.peer.Short()).Msg("tunnel connection reset by sipgo")
		}
		close(c.done)
		c.t.forget(c)
		c.mu.Lock()
		c.q, c.cur = nil, nil
		c.mu.Unlock()
	})
	return nil
}

func (c *vconn) LocalAddr() net.Addr  { return c.t.addr }
func (c *vconn) RemoteAddr() net.Addr { return c.raddr }

// Deadlines are not supported: sipgo sets them only when the transport has
// ReadTimeout/WriteTimeout, which the router leaves off for the tunnel.
func (c *vconn) SetDeadline(time.Time) error      { return nil }
func (c *vconn) SetReadDeadline(time.Time) error  { return nil }
func (c *vconn) SetWriteDeadline(time.Time) error { return nil }
