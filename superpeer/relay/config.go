package relay

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults for zero Config fields.
const (
	DefaultMinPort        = 49152
	DefaultMaxPort        = 65535
	DefaultMaxAllocations = 10000
	DefaultMaxPerUser     = 10

	// maxUDPSockets bounds the default UDPSockets: past a few read loops
	// the relay sockets' goroutines and the clients need the cores.
	maxUDPSockets = 4
)

// Config configures a Server. Zero values mean the defaults named on each
// field. The sockets are owned by the Server once Run is called: Run
// closes them when it returns.
type Config struct {
	// Realm is the TURN realm: the overlay name (required). Clients
	// compute their long-term key over it, so every super peer of an
	// overlay uses the same one.
	Realm string
	// Secret is the overlay secret TURN-REST passwords are derived from
	// (required): password = base64(HMAC-SHA1(Secret, "EXPIRY:USER")).
	Secret []byte

	// PacketConn is the bound UDP socket for STUN and TURN (required; the
	// caller binds --turn-port).
	PacketConn net.PacketConn
	// UDPSockets is how many sockets read the UDP port: PacketConn and
	// UDPSockets-1 more that Run binds on its address with SO_REUSEPORT
	// (Linux; PacketConn must be a *net.UDPConn), each with its own pion
	// read loop. pion handles a datagram start to finish on the loop
	// that read it, so one socket caps relaying near one core. Default
	// min(GOMAXPROCS, 4); 1 serves PacketConn alone. If the further
	// sockets cannot be bound, Run serves PacketConn alone and logs why.
	UDPSockets int
	// Listener, if set, serves STUN and TURN over TCP as well (RFC 5766
	// §2.1: the client talks TCP to the server, relays stay UDP).
	Listener net.Listener

	// RelayIP is the IPv4 address allocations are advertised on
	// (XOR-RELAYED-ADDRESS). Default: PacketConn's local IP when that is a
	// specific IPv4 address; required otherwise. pion/turn v2 relays are
	// udp4 only.
	RelayIP net.IP
	// RelayBind is the local IP relay sockets bind (default RelayIP). Set
	// it to the private or wildcard address when RelayIP is a public
	// address mapped onto this host (cloud 1:1 NAT).
	RelayBind string
	// MinPort and MaxPort bound the relay ports, inclusive (default
	// 49152-65535).
	MinPort, MaxPort int

	// MaxAllocations caps open allocations in total (default 10000).
	MaxAllocations int
	// MaxPerUser caps open allocations per user, the USER of the
	// credential's "EXPIRY:USER" (default 10). Past either cap an Allocate
	// gets 486 Allocation Quota Reached.
	MaxPerUser int

	// AllowLoopback lets clients relay to loopback peers (127.0.0.0/8),
	// like coturn's --allow-loopback-peers. For tests and labs: on a real
	// super peer it opens every loopback-bound service to the Internet.
	AllowLoopback bool
	// DenyPorts are this super peer's own service ports (peer protocol,
	// gossip, SIP, admin, ...). Relaying to any of them on any of its own
	// addresses (RelayIP, RelayBind and the STUN/TURN sockets' IPs; every
	// interface address when one of those is a wildcard) is refused. The
	// STUN/TURN ports themselves are always added.
	DenyPorts []int
	// DenyAddrs are further addresses that are never relayed to.
	DenyAddrs []netip.AddrPort

	// Registerer receives the relay's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Now is the clock credentials expire by (default time.Now).
	Now func() time.Time
}

// withDefaults validates c and fills its zero fields.
func (c Config) withDefaults() (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return Config{}, fmt.Errorf("%w: "+format, append([]any{errConfig}, args...)...)
	}
	switch {
	case c.Realm == "":
		return bad("realm is required")
	case len(c.Secret) == 0:
		return bad("secret is required")
	case c.PacketConn == nil:
		return bad("a UDP PacketConn is required")
	}
	if c.RelayIP == nil {
		if ua, ok := c.PacketConn.LocalAddr().(*net.UDPAddr); ok && !ua.IP.IsUnspecified() {
			c.RelayIP = ua.IP
		}
	}
	ip4 := c.RelayIP.To4()
	if ip4 == nil || ip4.IsUnspecified() {
		return bad("relay IP %v: want a specific IPv4 address (relays are udp4 only)", c.RelayIP)
	}
	c.RelayIP = ip4
	if c.RelayBind == "" {
		c.RelayBind = ip4.String()
	}
	if b := net.ParseIP(c.RelayBind); b == nil || b.To4() == nil {
		return bad("relay bind %q: want an IPv4 address", c.RelayBind)
	}
	if c.MinPort == 0 {
		c.MinPort = DefaultMinPort
	}
	if c.MaxPort == 0 {
		c.MaxPort = DefaultMaxPort
	}
	if c.MinPort < 1 || c.MaxPort > 65535 || c.MinPort > c.MaxPort {
		return bad("relay ports %d-%d: want 1 <= min <= max <= 65535", c.MinPort, c.MaxPort)
	}
	if c.UDPSockets == 0 {
		c.UDPSockets = min(runtime.GOMAXPROCS(0), maxUDPSockets)
	}
	if c.UDPSockets < 1 || c.UDPSockets > 64 {
		return bad("udp sockets %d: want 1-64", c.UDPSockets)
	}
	if c.MaxAllocations == 0 {
		c.MaxAllocations = DefaultMaxAllocations
	}
	if c.MaxPerUser == 0 {
		c.MaxPerUser = DefaultMaxPerUser
	}
	if c.MaxAllocations < 0 || c.MaxPerUser < 0 {
		return bad("quotas must not be negative")
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	c.Secret = append([]byte(nil), c.Secret...)
	c.DenyPorts = append([]int(nil), c.DenyPorts...)
	c.DenyAddrs = append([]netip.AddrPort(nil), c.DenyAddrs...)
	return c, nil
}
