package relay

import (
	"net"
	"net/netip"
)

// Why a peer address is refused; the values appear in log lines
// (reason=...) and all count as reasonPermission in the metrics.
const (
	peerUnspecified = "unspecified" // 0.0.0.0/8: "this host" on Linux
	peerLoopback    = "loopback"    // 127.0.0.0/8, ::1 (unless AllowLoopback)
	peerLinkLocal   = "link-local"  // 169.254.0.0/16, fe80::/10 (cloud metadata lives here)
	peerMulticast   = "multicast"   // 224.0.0.0/4, ff00::/8, 255.255.255.255
	peerFamily      = "family"      // not IPv4: relays are udp4 only
	peerDenied      = "denied"      // one of this super peer's own service addresses
	peerBadPort     = "bad-port"    // port 0
)

var (
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")
	broadcast   = netip.AddrFrom4([4]byte{255, 255, 255, 255})
)

// policy decides which peers an allocation may talk to. It is immutable
// once built, so the relay sockets' writers read it without locks.
//
// The checks come in two grains because TURN's do: permissions
// (CreatePermission, and pion's PermissionHandler) name an IP only, so
// checkIP refuses address classes; a denied service is an IP *and* a
// port, so checkPeer adds the deny list and runs where a port is known
// (ChannelBind, and every datagram a relay socket sends). Relaying to the
// super peer's own relay addresses stays allowed: X → relay(X) → relay(Y)
// → Y (ARCHITECTURE.md §6) needs exactly that.
type policy struct {
	allowLoopback bool
	deny          map[netip.AddrPort]struct{}
}

// newPolicy builds the policy. Each of ownIPs is combined with each of
// ports into the deny set, next to the explicit denyAddrs.
func newPolicy(allowLoopback bool, ownIPs []netip.Addr, ports []int, denyAddrs []netip.AddrPort) *policy {
	p := &policy{allowLoopback: allowLoopback, deny: make(map[netip.AddrPort]struct{})}
	for _, ip := range ownIPs {
		for _, port := range ports {
			if port > 0 && port <= 65535 {
				p.deny[netip.AddrPortFrom(ip.Unmap(), uint16(port))] = struct{}{}
			}
		}
	}
	for _, ap := range denyAddrs {
		p.deny[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] = struct{}{}
	}
	return p
}

// checkIP returns why ip may not be a peer, or "" if it may.
func (p *policy) checkIP(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case !ip.Is4():
		return peerFamily
	case thisNetwork.Contains(ip):
		return peerUnspecified
	case ip.IsLoopback():
		if p.allowLoopback {
			return ""
		}
		return peerLoopback
	case ip.IsLinkLocalUnicast():
		return peerLinkLocal
	case ip.IsMulticast(), ip == broadcast:
		return peerMulticast
	}
	return ""
}

// checkPeer returns why ap may not be a peer, or "" if it may.
func (p *policy) checkPeer(ap netip.AddrPort) string {
	if r := p.checkIP(ap.Addr()); r != "" {
		return r
	}
	if ap.Port() == 0 {
		return peerBadPort
	}
	if _, ok := p.deny[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())]; ok {
		return peerDenied
	}
	return ""
}

// ipOf converts a net.IP; an invalid slice gives the zero Addr, which
// checkIP refuses.
func ipOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// addrPortOf converts the address pion hands a relay socket's WriteTo.
func addrPortOf(a net.Addr) (netip.AddrPort, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		return netip.AddrPortFrom(ipOf(a.IP), uint16(a.Port)), true
	case interface{ AddrPort() netip.AddrPort }:
		return a.AddrPort(), true
	}
	ap, err := netip.ParseAddrPort(a.String())
	return ap, err == nil
}
