package relay

import (
	"net/netip"
	"testing"
)

func TestPolicy(t *testing.T) {
	own := []netip.Addr{netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("10.0.0.5")}
	deny := []netip.AddrPort{netip.MustParseAddrPort("198.51.100.7:53")}
	strict := newPolicy(false, own, []int{6084, 7946, 0, 70000}, deny)
	lab := newPolicy(true, own, []int{6084}, nil)
	cases := map[string]struct {
		p    *policy
		peer string
		want string
	}{
		"public peer":            {strict, "198.51.100.1:5000", ""},
		"private peer":           {strict, "192.168.1.10:5000", ""},
		"own relay address":      {strict, "203.0.113.5:50000", ""},
		"own peer port":          {strict, "203.0.113.5:6084", peerDenied},
		"own gossip port, bind":  {strict, "10.0.0.5:7946", peerDenied},
		"own port elsewhere":     {strict, "198.51.100.1:6084", ""},
		"explicit deny":          {strict, "198.51.100.7:53", peerDenied},
		"explicit deny, mapped":  {strict, "[::ffff:198.51.100.7]:53", peerDenied},
		"loopback":               {strict, "127.0.0.1:5000", peerLoopback},
		"loopback 127/8":         {strict, "127.200.0.1:5000", peerLoopback},
		"loopback allowed":       {lab, "127.0.0.1:5000", ""},
		"allow lifts only lo":    {lab, "169.254.169.254:80", peerLinkLocal},
		"deny still on in lab":   {lab, "203.0.113.5:6084", peerDenied},
		"unspecified":            {strict, "0.0.0.0:5000", peerUnspecified},
		"this network":           {strict, "0.1.2.3:5000", peerUnspecified},
		"multicast":              {strict, "239.1.1.1:5000", peerMulticast},
		"broadcast":              {strict, "255.255.255.255:5000", peerMulticast},
		"ipv6":                   {strict, "[2001:db8::1]:5000", peerFamily},
		"ipv6 loopback":          {lab, "[::1]:5000", peerFamily},
		"mapped loopback":        {strict, "[::ffff:127.0.0.1]:5000", peerLoopback},
		"port zero":              {strict, "198.51.100.1:0", peerBadPort},
		"metadata (link-local)":  {strict, "169.254.169.254:80", peerLinkLocal},
		"ignored bad deny ports": {strict, "203.0.113.5:4464", ""},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := tc.p.checkPeer(netip.MustParseAddrPort(tc.peer)); got != tc.want {
				t.Fatalf("checkPeer(%s) = %q, want %q", tc.peer, got, tc.want)
			}
		})
	}
	if got := strict.checkIP(netip.Addr{}); got != peerFamily {
		t.Fatalf("checkIP(invalid) = %q", got)
	}
}
