// Package superpeer is the super peer's composition root: it loads the
// node's identity and the overlay secret, binds the sockets, and runs the
// mesh, the store, the peer-protocol server, the data-plane links, the SIP
// edge and the admin API under one context (ARCHITECTURE.md §1). Logic lives in the
// subpackages; this package only wires them.
package superpeer

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// Config is everything a super peer needs. cmd/p2psip fills it from flags,
// environment and config file; tests fill it directly. Zero values mean
// the defaults of ARCHITECTURE.md §1 and §11.
type Config struct {
	// Overlay is the overlay name, a domain (required).
	Overlay string
	// DataDir holds the identity key, the CA certificate written for
	// clients, and the dev secret (default "./p2psip-data").
	DataDir string
	// SecretFile is the overlay secret; empty means DataDir/overlay.secret,
	// created on first start (development only: every super peer of one
	// overlay needs the same secret).
	SecretFile string
	// Secret, if set, is used instead of SecretFile (tests).
	Secret []byte
	// Bind is the IP every service binds (default 127.0.0.1).
	Bind string
	// Advertise is the IP others reach us at (default Bind; required when
	// Bind is 0.0.0.0 or ::).
	Advertise string
	// Ports; 0 means the default, -1 means an ephemeral port (tests).
	PeerPort   int // 6084
	GossipPort int // 7946
	// Admin is the admin HTTP address (default 127.0.0.1:6085; "off" disables).
	Admin string
	// Join lists gossip addresses of existing super peers.
	Join []string
	// Replicas is the replica-set size (default 3); WriteQuorum the acks a
	// write needs (default a majority).
	Replicas    int
	WriteQuorum int
	// Promotion is "off" (default) or "auto": promotion of reachable
	// agents (superpeer/promote). A promoted node receives the overlay
	// secret, so carriers keep it off.
	Promotion string
	// PromotionMinUptime is how long an agent must have run before it is
	// promoted (0: no minimum; the command line's default is 10m).
	PromotionMinUptime time.Duration
	// PromotionRatio is the target number of ordinary peers per super
	// peer: agents are promoted only while the mesh has more (0: always).
	PromotionRatio int
	// Capacity is how many agents this super peer admits (advertised).
	Capacity int
	// Keepalive is the Ping interval agents are told to keep (default 25s).
	Keepalive time.Duration
	// Publishers lists, per service, the users allowed to publish it.
	Publishers map[string][]string

	// Tuning, mostly for tests; zero means the package defaults.
	ProbeInterval       time.Duration
	SuspicionMult       int
	StoreTimeout        time.Duration
	SweepInterval       time.Duration
	AntiEntropyInterval time.Duration

	// PeerListener and AdminListener, if set, are used instead of binding
	// (tests pass 127.0.0.1:0 listeners). Run closes them.
	PeerListener  net.Listener
	AdminListener net.Listener

	// SIP edge for plain SIP phones (ARCHITECTURE.md §6). SIPPort is its
	// UDP and TCP port (default 5060; -1: an ephemeral port, the same for
	// both), SIPSPort its TLS port (default 5061; -1: ephemeral).
	SIPPort  int
	SIPSPort int
	// SIPUDP, SIPTCP and SIPTLS, if set, are used instead of binding
	// (tests). SIPTLS is a plain TCP listener: the node adds TLS. New takes
	// them over; Run closes them.
	SIPUDP net.PacketConn
	SIPTCP net.Listener
	SIPTLS net.Listener
	// SIPSCertFile and SIPSKeyFile are an operator's PEM certificate chain
	// and key for SIPS. Empty means the node's certificate: Ed25519, signed
	// by the overlay CA (clients verify it with ca.pem), which not every
	// phone supports.
	SIPSCertFile string
	SIPSKeyFile  string
	// EdgeMaxInFlight bounds SIP requests the edge handles at once; past
	// it new ones get 503 with Retry-After (default 1000).
	EdgeMaxInFlight int
	// EdgeMaxWaiting bounds proxied SIP requests waiting for answers at
	// the edge (siproute.Config.MaxWaiting); 0 means 64 × EdgeMaxInFlight.
	EdgeMaxWaiting int
	// ForeignDomain is the edge's answer to requests for domains other
	// than the overlay: "403" (default) or "404".
	ForeignDomain string
	// EdgeMinExpires is the shortest registration the edge accepts
	// (default 60s; tests use less).
	EdgeMinExpires time.Duration
	// EdgeMaxConns and EdgeMaxConnsPerIP bound the phones' TCP and TLS
	// connections at the edge, in all and from one IP address (0: the
	// edge's defaults, 4096 and 64).
	EdgeMaxConns      int
	EdgeMaxConnsPerIP int
	// EdgeConnSilence is how long a phone connection may stay silent
	// before its first bytes (0: the edge's default, 20s).
	EdgeConnSilence time.Duration

	// STUN and TURN (ARCHITECTURE.md §7). TURNPort is the UDP and TCP port
	// (default 3478; -1: ephemeral). TURNUDP and TURNTCP, if set, are used
	// instead of binding (tests); Run closes them.
	TURNPort int
	TURNUDP  net.PacketConn
	TURNTCP  net.Listener
	// RelayMinPort and RelayMaxPort bound the relay ports (default
	// 49152-65535).
	RelayMinPort, RelayMaxPort int
	// TURNMaxAllocations (default 10000) and TURNMaxPerUser (default 10)
	// are the allocation quotas.
	TURNMaxAllocations, TURNMaxPerUser int
	// TURNAllowLoopback lets the relay reach loopback peers (tests, labs;
	// like coturn's --allow-loopback-peers).
	TURNAllowLoopback bool
}

func (c *Config) setDefaults() error {
	if c.Overlay == "" {
		return errors.New("overlay name is required")
	}
	if c.DataDir == "" {
		c.DataDir = "p2psip-data"
	}
	if c.Bind == "" {
		c.Bind = "127.0.0.1"
	}
	if ip := net.ParseIP(c.Bind); ip == nil {
		return fmt.Errorf("bind %q is not an IP address", c.Bind)
	}
	if c.Advertise == "" {
		if ip := net.ParseIP(c.Bind); ip.IsUnspecified() {
			return fmt.Errorf("advertise address is required when binding %s", c.Bind)
		}
		c.Advertise = c.Bind
	}
	if ip := net.ParseIP(c.Advertise); ip == nil || ip.IsUnspecified() {
		return fmt.Errorf("advertise %q is not a usable IP address", c.Advertise)
	}
	c.PeerPort = port(c.PeerPort, 6084)
	c.GossipPort = port(c.GossipPort, 7946)
	c.SIPPort = port(c.SIPPort, 5060)
	c.SIPSPort = port(c.SIPSPort, 5061)
	c.TURNPort = port(c.TURNPort, 3478)
	switch c.ForeignDomain {
	case "":
		c.ForeignDomain = "403"
	case "403", "404":
	default:
		return fmt.Errorf("foreign-domain %q: want 403 or 404", c.ForeignDomain)
	}
	if (c.SIPSCertFile == "") != (c.SIPSKeyFile == "") {
		return errors.New("sips certificate and key files go together")
	}
	if c.EdgeMaxConns < 0 || c.EdgeMaxConnsPerIP < 0 || c.EdgeConnSilence < 0 {
		return fmt.Errorf("edge connection limits %d, %d per address, silence %s: must not be negative", c.EdgeMaxConns, c.EdgeMaxConnsPerIP, c.EdgeConnSilence)
	}
	if c.EdgeMaxInFlight < 0 {
		return fmt.Errorf("edge max in-flight %d: must not be negative", c.EdgeMaxInFlight)
	}
	if c.Admin == "" {
		c.Admin = "127.0.0.1:6085"
	}
	switch c.Promotion {
	case "":
		c.Promotion = "off"
	case "off", "auto":
	default:
		return fmt.Errorf("promotion %q: want off or auto", c.Promotion)
	}
	if c.PromotionMinUptime < 0 || c.PromotionRatio < 0 {
		return errors.New("promotion minimum uptime and ratio must not be negative")
	}
	if c.Replicas < 0 || c.Replicas > 7 {
		return fmt.Errorf("replicas %d: want 1..7", c.Replicas)
	}
	if c.Capacity == 0 {
		c.Capacity = 100000
	}
	return nil
}

func port(p, def int) int {
	switch {
	case p == 0:
		return def
	case p < 0:
		return 0
	}
	return p
}
