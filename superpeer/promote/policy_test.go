package promote

import (
	"strings"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/wire"
)

func TestDecide(t *testing.T) {
	auto := Policy{Mode: ModeAuto, MinUptime: 10 * time.Minute, Ratio: 50}
	tests := map[string]struct {
		p     Policy
		in    Input
		want  string // "" : promote
		retry time.Duration
	}{
		"off":                 {Policy{Mode: ModeOff}, Input{Uptime: time.Hour, Attached: 1000, SuperPeers: 1}, "promotion off on this overlay", retryOff},
		"unset mode is off":   {Policy{}, Input{Uptime: time.Hour}, "promotion off", retryOff},
		"too young":           {auto, Input{Uptime: 4 * time.Minute, Attached: 1000, SuperPeers: 3}, "uptime 4m0s below the overlay's minimum 10m0s", 6 * time.Minute},
		"ratio met":           {auto, Input{Uptime: time.Hour, Attached: 150, SuperPeers: 3}, "enough super peers: 150 ordinary peers on 3 super peers, target ratio 50", retryRatio},
		"ratio exceeded":      {auto, Input{Uptime: time.Hour, Attached: 151, SuperPeers: 3}, "", 0},
		"ratio 0 always":      {Policy{Mode: ModeAuto}, Input{Attached: 1, SuperPeers: 3}, "", 0},
		"exactly min uptime":  {auto, Input{Uptime: 10 * time.Minute, Attached: 1000, SuperPeers: 3}, "", 0},
		"no members (ratio)":  {auto, Input{Uptime: time.Hour}, "", 0},
		"uptime before ratio": {auto, Input{Uptime: time.Minute, Attached: 1, SuperPeers: 3}, "uptime", 9 * time.Minute},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, retry := tc.p.Decide(tc.in)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) || retry != tc.retry {
				t.Fatalf("Decide = %q, %s; want %q, %s", got, retry, tc.want, tc.retry)
			}
		})
	}
}

func TestCheckAddrs(t *testing.T) {
	tests := map[string]struct {
		req    wire.PromoteReq
		source string
		want   string // "" : passes
	}{
		"public":             {wire.PromoteReq{PeerAddr: "203.0.113.20:6084", LocalAddr: "203.0.113.20", Reflexive: "203.0.113.20:40000"}, "203.0.113.20:51000", ""},
		"no stun answer":     {wire.PromoteReq{PeerAddr: "203.0.113.20:6084", LocalAddr: "203.0.113.20:51000"}, "203.0.113.20:51000", ""},
		"behind NAT":         {wire.PromoteReq{PeerAddr: "192.0.2.10:6084", LocalAddr: "192.0.2.10", Reflexive: "203.0.113.1:40000"}, "203.0.113.1:40001", "reflexive address 203.0.113.1 differs from local 192.0.2.10"},
		"NAT without stun":   {wire.PromoteReq{PeerAddr: "192.0.2.10:6084", LocalAddr: "192.0.2.10"}, "203.0.113.1:40001", "session comes from 203.0.113.1, not from local address 192.0.2.10"},
		"advertises another": {wire.PromoteReq{PeerAddr: "203.0.113.1:6084", LocalAddr: "203.0.113.20"}, "203.0.113.20:5000", "advertised address 203.0.113.1 differs from the session's source 203.0.113.20"},
		"wildcard":           {wire.PromoteReq{PeerAddr: "0.0.0.0:6084", LocalAddr: "203.0.113.20"}, "203.0.113.20:5000", "not IP:port"},
		"host name":          {wire.PromoteReq{PeerAddr: "node.example.net:6084", LocalAddr: "203.0.113.20"}, "203.0.113.20:5000", "not IP:port"},
		"no local":           {wire.PromoteReq{PeerAddr: "203.0.113.20:6084"}, "203.0.113.20:5000", "local address \"\" is not an IP address"},
		"junk reflexive":     {wire.PromoteReq{PeerAddr: "203.0.113.20:6084", LocalAddr: "203.0.113.20", Reflexive: "x"}, "203.0.113.20:5000", "reflexive address \"x\""},
		"ipv6":               {wire.PromoteReq{PeerAddr: "[2001:db8::1]:6084", LocalAddr: "2001:db8::1"}, "[2001:db8::1]:5000", ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := CheckAddrs(&tc.req, tc.source)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
