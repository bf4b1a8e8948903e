package promote

import (
	"fmt"
	"net"
	"time"

	"github.com/p2psip/p2psip/common/wire"
)

// Modes of the operator switch (--promotion).
const (
	ModeOff  = "off"
	ModeAuto = "auto"
)

// Retry hints sent with a refusal: how soon asking again may succeed.
const (
	retryOff      = time.Hour        // an operator has to change the overlay's mode
	retryAddress  = 10 * time.Minute // a NAT or a firewall rarely changes faster
	retryDialBack = 10 * time.Minute
	retryRatio    = 5 * time.Minute
)

// Policy is the overlay's promotion policy, set by operators on every
// super peer (and handed to promoted ones).
type Policy struct {
	// Mode is ModeOff (default; carriers, who do not hand the overlay
	// secret to endpoints) or ModeAuto.
	Mode string
	// MinUptime is how long a node must have run before it is promoted:
	// short-lived nodes would only churn the mesh.
	MinUptime time.Duration
	// Ratio is the target number of ordinary peers per super peer: a node
	// is promoted only while attached agents per super peer exceed it
	// (0: whenever a reachable node asks).
	Ratio int
}

// Input is what the policy decides on.
type Input struct {
	// Uptime is the asking node's own uptime.
	Uptime time.Duration
	// Attached counts the agents attached across the mesh (gossiped loads).
	Attached int
	// SuperPeers counts the mesh's members.
	SuperPeers int
}

// Decide applies the policy: "" when promotion may go ahead, otherwise
// the reason and when asking again may succeed. It does not look at
// reachability (CheckAddrs and the dial-back test do).
func (p Policy) Decide(in Input) (reason string, retry time.Duration) {
	switch {
	case p.Mode != ModeAuto:
		return "promotion off on this overlay", retryOff
	case in.Uptime < p.MinUptime:
		return fmt.Sprintf("uptime %s below the overlay's minimum %s", in.Uptime.Round(time.Second), p.MinUptime), p.MinUptime - in.Uptime
	case p.Ratio > 0 && in.SuperPeers > 0 && in.Attached <= p.Ratio*in.SuperPeers:
		return fmt.Sprintf("enough super peers: %d ordinary peers on %d super peers, target ratio %d", in.Attached, in.SuperPeers, p.Ratio), retryRatio
	}
	return "", 0
}

// CheckAddrs checks that a node asking for promotion is not behind a NAT
// and advertises its own address: its reflexive address (STUN), its local
// address and the source of its attach session (source, IP:port as the
// super peer sees it) must all be one IP, and the advertised peer-protocol
// address must be on it. It returns nil or the reason.
func CheckAddrs(req *wire.PromoteReq, source string) error {
	src := hostIP(source)
	if src == nil {
		return fmt.Errorf("session source %q is not an IP address", source)
	}
	local := hostIP(req.LocalAddr)
	if local == nil {
		return fmt.Errorf("local address %q is not an IP address", req.LocalAddr)
	}
	advHost, _, err := net.SplitHostPort(req.PeerAddr)
	adv := net.ParseIP(advHost)
	if err != nil || adv == nil || adv.IsUnspecified() {
		return fmt.Errorf("advertised address %q is not IP:port", req.PeerAddr)
	}
	if req.Reflexive != "" {
		refl := hostIP(req.Reflexive)
		if refl == nil {
			return fmt.Errorf("reflexive address %q is not an IP address", req.Reflexive)
		}
		if !refl.Equal(local) {
			return fmt.Errorf("reflexive address %s differs from local %s (behind NAT)", refl, local)
		}
	}
	if !src.Equal(local) {
		return fmt.Errorf("session comes from %s, not from local address %s (behind NAT)", src, local)
	}
	if !adv.Equal(src) {
		return fmt.Errorf("advertised address %s differs from the session's source %s", adv, src)
	}
	return nil
}

// hostIP parses "IP" or "IP:port".
func hostIP(s string) net.IP {
	if host, _, err := net.SplitHostPort(s); err == nil {
		s = host
	}
	return net.ParseIP(s)
}
