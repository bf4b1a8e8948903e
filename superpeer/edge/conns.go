package edge

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/logx"
)

// Defaults of the phone connection bounds (Config.MaxConns, MaxConnsPerIP,
// ConnSilence).
const (
	// DefaultMaxConns: sipgo gives every TCP or TLS connection a 64 KiB
	// read buffer and a goroutine, so 4096 cost about 300 MiB at most.
	DefaultMaxConns = 4096
	// DefaultMaxConnsPerIP leaves room for an office of phones behind
	// one NAT address, not for one host holding the edge's descriptors.
	DefaultMaxConnsPerIP = 64
	// DefaultConnSilence: a phone sends its first request (a TLS phone,
	// its ClientHello and then a request) right after connecting.
	DefaultConnSilence = 20 * time.Second
)

// connLimits bounds the phone connections (TCP and TLS together): how
// many in all, how many from one IP address, and how long one may stay
// silent before its first SIP bytes. sipgo sets no read deadline (a
// registered phone's connection idles between re-registrations), so
// without these a stranger opening connections and saying nothing holds
// descriptors, goroutines and read buffers for as long as it likes.
type connLimits struct {
	max, perIP int
	silence    time.Duration
	log        zerolog.Logger

	mu   sync.Mutex // guards open and byIP
	open int
	byIP map[netip.Addr]int

	refusedMax, refusedPerIP, silent atomic.Uint64
}

func newConnLimits(max, perIP int, silence time.Duration, log zerolog.Logger) *connLimits {
	if max <= 0 {
		max = DefaultMaxConns
	}
	if perIP <= 0 {
		perIP = DefaultMaxConnsPerIP
	}
	if silence <= 0 {
		silence = DefaultConnSilence
	}
	// Refusals come in floods: their lines are sampled.
	return &connLimits{max: max, perIP: perIP, silence: silence, byIP: make(map[netip.Addr]int),
		log: logx.Throttle(log)}
}

// admit counts a new connection from a, or says why not. IPv6 sources
// count per /64: one host may hold a whole /64.
func (l *connLimits) admit(a net.Addr) (netip.Addr, string) {
	ip := remoteIP(a)
	if ip.Is6() {
		ip = netip.PrefixFrom(ip, 64).Masked().Addr()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.open >= l.max:
		l.refusedMax.Add(1)
		return ip, "connection limit"
	case l.byIP[ip] >= l.perIP:
		l.refusedPerIP.Add(1)
		return ip, "per-address connection limit"
	}
	l.open++
	l.byIP[ip]++
	return ip, ""
}

// release uncounts a connection from ip.
func (l *connLimits) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byIP[ip]--; l.byIP[ip] <= 0 {
		delete(l.byIP, ip)
	}
}

// Open is how many phone connections are open now.
func (l *connLimits) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

func remoteIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{} // unknown: all such share one count
}

// limitedConn is an admitted connection: silent connections time out
// before their first bytes, and Close uncounts it once.
type limitedConn struct {
	net.Conn
	l       *connLimits
	ip      netip.Addr
	waiting atomic.Bool // no byte read yet: the silence deadline is set
	once    sync.Once
}

func (l *connLimits) wrap(c net.Conn, ip netip.Addr) net.Conn {
	lc := &limitedConn{Conn: c, l: l, ip: ip}
	// On a TLS connection this bounds the handshake too: it runs inside
	// the first Read.
	if err := c.SetReadDeadline(time.Now().Add(l.silence)); err == nil {
		lc.waiting.Store(true)
	}
	return lc
}

func (c *limitedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.waiting.Load() {
		switch {
		case n > 0:
			// Spoken: from now on sipgo decides (it sets no deadline of
			// its own unless configured to, which the edge is not).
			if c.waiting.CompareAndSwap(true, false) {
				c.Conn.SetReadDeadline(time.Time{}) //nolint:errcheck // a closed conn fails the next Read anyway
			}
		case errors.Is(err, os.ErrDeadlineExceeded) && c.waiting.CompareAndSwap(true, false):
			c.l.silent.Add(1)
			c.l.log.Info().Str("remote_addr", c.RemoteAddr().String()).Dur("silence", c.l.silence).
				Msg("phone connection closed: nothing received")
		}
	}
	return n, err
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	return err
}
