package siproute

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
)

// Fake tunnel addresses come from the shared address space of RFC 6598,
// which no peer of ours can legitimately use as a SIP destination; the
// dialer guard refuses the whole prefix.
var (
	fakePrefix = netip.MustParsePrefix("100.64.0.0/10")
	// fakeListen is the tunnel listener's own address (and the local
	// address of every virtual connection); peers get the addresses after
	// it.
	fakeListen = netip.MustParseAddr("100.64.0.1")
)

// fakePort is the port of every fake address: sipgo puts the listener's
// port in its Via headers, and 5061 says "TLS" to anyone who reads them.
const fakePort = 5061

// readyTimeout bounds the wait for sipgo to adopt a new virtual connection
// (normally microseconds: its accept loop does nothing else).
const readyTimeout = 2 * time.Second

// tunnel is the net.Listener served to sipgo as the "TLS" transport, plus
// the map between Peer-IDs, their virtual connections and fake addresses.
type tunnel struct {
	sender               Sender
	addr                 *net.TCPAddr
	queueLen, queueBytes int
	stats                *counters
	log                  zerolog.Logger

	accept    chan *vconn
	closed    chan struct{}
	closeOnce sync.Once

	mu      sync.Mutex // guards the fields below
	serving bool
	conns   map[ids.PeerID]*vconn
	byAddr  map[string]*vconn // fake remote address → connection
	hints   map[*vconn]ids.PeerID
	next    uint32 // offset of the next fake address in fakePrefix
}

func newTunnel(sender Sender, queueLen, queueBytes int, stats *counters, log zerolog.Logger) *tunnel {
	return &tunnel{
		sender: sender, queueLen: queueLen, queueBytes: queueBytes, stats: stats, log: log,
		addr:   net.TCPAddrFromAddrPort(netip.AddrPortFrom(fakeListen, fakePort)),
		accept: make(chan *vconn, 64), closed: make(chan struct{}),
		conns: make(map[ids.PeerID]*vconn), byAddr: make(map[string]*vconn),
		hints: make(map[*vconn]ids.PeerID), next: 2,
	}
}

// Accept hands sipgo the next new virtual connection.
func (t *tunnel) Accept() (net.Conn, error) {
	select {
	case c := <-t.accept:
		return c, nil
	case <-t.closed:
		return nil, net.ErrClosed
	}
}

// Addr is parsed by sipgo for the listen port it uses in Record-Route and
// Via; it must be a valid ip:port.
func (t *tunnel) Addr() net.Addr { return t.addr }

// stop ends Accept and refuses new connections; existing ones stay open
// so that transactions can end cleanly.
func (t *tunnel) stop() {
	t.closeOnce.Do(func() {
		t.mu.Lock()
		t.serving = false
		t.mu.Unlock()
		close(t.closed)
	})
}

// Close stops Accept and closes every virtual connection; sipgo's readers
// see io.EOF and drop them from its pool.
func (t *tunnel) Close() error {
	t.stop()
	t.mu.Lock()
	conns := make([]*vconn, 0, len(t.conns))
	for _, c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	for _, c := range conns {
		c.close(true)
	}
	return nil
}

func (t *tunnel) isServing() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.serving
}

func (t *tunnel) start() {
	t.mu.Lock()
	t.serving = true
	t.mu.Unlock()
}

// conn returns the peer's connection, creating it (and handing it to sipgo)
// if there is none. hint, if set, becomes the routing hint for the peer
// when force is set or none is known yet.
func (t *tunnel) conn(peer, hint ids.PeerID, force bool) (*vconn, error) {
	t.mu.Lock()
	if !t.serving {
		t.mu.Unlock()
		return nil, errNotServing
	}
	c := t.conns[peer]
	created := c == nil
	if created {
		a, err := t.allocLocked()
		if err != nil {
			t.mu.Unlock()
			return nil, err
		}
		c = newVconn(t, peer, net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, fakePort)))
		t.conns[peer] = c
		t.byAddr[c.addr] = c
	}
	if !hint.IsZero() && (force || t.hints[c].IsZero()) {
		t.hints[c] = hint
	}
	t.mu.Unlock()
	if created {
		select {
		case t.accept <- c:
		case <-t.closed:
			return nil, errNotServing
		}
	}
	return c, nil
}

// allocLocked picks the next free fake address, wrapping around the
// prefix; t.mu must be held.
func (t *tunnel) allocLocked() (netip.Addr, error) {
	size := uint32(1) << (32 - fakePrefix.Bits())
	base := binary.BigEndian.Uint32(fakePrefix.Addr().AsSlice())
	for range size {
		off := t.next
		t.next++
		if t.next >= size-1 {
			t.next = 2
		}
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], base+off)
		a := netip.AddrFrom4(b)
		if _, used := t.byAddr[netip.AddrPortFrom(a, fakePort).String()]; !used {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("tunnel: no free fake address")
}

// ensure returns the fake address of the peer's connection once sipgo has
// pooled it, so that a request with that destination reuses it instead of
// dialing. A hint given here comes from a fresh location lookup and
// replaces the one learned from the peer's last message: after a failover
// the lookup knows the new super peer before any message shows it.
func (t *tunnel) ensure(ctx context.Context, peer, hint ids.PeerID) (string, error) {
	c, err := t.conn(peer, hint, true)
	if err != nil {
		return "", err
	}
	select {
	case <-c.pooled: // the usual case: no timer needed
		return c.addr, nil
	default:
	}
	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case <-c.pooled:
		return c.addr, nil
	case <-c.done:
		return "", fmt.Errorf("tunnel to %s: %w", peer.Short(), net.ErrClosed)
	case <-timer.C:
		return "", fmt.Errorf("tunnel to %s: %w", peer.Short(), errPeerTimeout)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// peerOf maps a fake source address back to its Peer-ID.
func (t *tunnel) peerOf(addr string) (ids.PeerID, bool) {
	t.mu.Lock()
	c := t.byAddr[addr]
	t.mu.Unlock()
	if c == nil {
		return ids.PeerID{}, false
	}
	return c.peer, true
}

// hint returns the routing hint for the peer: the super peer its last
// payload came through, else the one its contact named.
func (t *tunnel) hint(c *vconn) ids.PeerID {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.hints[c]
}

// send is vconn.Write's way out. sipgo reuses its buffer, so the payload is
// copied before it leaves.
func (t *tunnel) send(c *vconn, b []byte) error {
	p := make([]byte, len(b))
	copy(p, b)
	t.stats.tunnelOut.Add(1)
	if err := t.sender.SendTunnel(c.peer, t.hint(c), p); err != nil {
		t.stats.tunnelErrors.Add(1)
		return fmt.Errorf("send tunnel to %s: %w", c.peer.Short(), err)
	}
	return nil
}

// forget drops a closed connection from the maps if it is still current.
func (t *tunnel) forget(c *vconn) {
	t.mu.Lock()
	if t.conns[c.peer] == c {
		delete(t.conns, c.peer)
	}
	if t.byAddr[c.addr] == c {
		delete(t.byAddr, c.addr)
	}
	delete(t.hints, c)
	t.mu.Unlock()
}

// gone closes the peer's connection, if any.
func (t *tunnel) gone(peer ids.PeerID) bool {
	t.mu.Lock()
	c := t.conns[peer]
	t.mu.Unlock()
	if c == nil {
		return false
	}
	c.close(true)
	return true
}

// deliver queues one inbound payload for sipgo.
func (t *tunnel) deliver(src, via ids.PeerID, payload []byte) error {
	p, err := checkFrame(payload)
	if err != nil {
		return err
	}
	c, err := t.conn(src, via, true)
	if err != nil {
		return err
	}
	if !c.push(p) {
		return fmt.Errorf("tunnel from %s: queue full", src.Short())
	}
	return nil
}

// isFake reports whether host (an IP literal, an IPv6 one with or
// without brackets) is in the tunnel's range.
func isFake(host string) bool {
	a, err := netip.ParseAddr(unbracket(host))
	return err == nil && fakePrefix.Contains(a.Unmap())
}

// unbracket strips the brackets sipgo keeps around an IPv6 literal host.
func unbracket(host string) string {
	if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
		return host[1 : len(host)-1]
	}
	return host
}
