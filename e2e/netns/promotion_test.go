//go:build e2e

package netns

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// promotionStatus is the promotion part of an agent's /v1/status.
type promotionStatus struct {
	Role      string `json:"role"`
	Attached  bool   `json:"attached"`
	SuperPeer string `json:"super_peer"`
	Promotion *struct {
		Reason     string `json:"reason"`
		Attempts   int    `json:"attempts"`
		PromotedAt string `json:"promoted_at"`
		SuperPeer  string `json:"super_peer"`
		PeerAddr   string `json:"peer_addr"`
	} `json:"promotion"`
}

func (a *Agent) promotion() (promotionStatus, error) {
	var st promotionStatus
	if a.Proc.Exited() {
		return st, fmt.Errorf("agent %s has exited (status %d)", a.User, a.Proc.ExitCode())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := getJSON(ctx, a.o.NS(a.Host), a.AdminURL()+"/v1/status", &st)
	if err == nil && st.Promotion == nil {
		err = fmt.Errorf("agent %s reports no promotion state (role %q)", a.User, st.Role)
	}
	return st, err
}

// TestPromotion is scenario 5: with promotion auto on the overlay, the
// public host runs `p2psip peer --role auto` and is promoted: its super
// peer joins the mesh (4 members as the super peers' /v1/members show),
// its agent attaches to it, and records are read through it from behind a
// NAT. A host behind NAT with the same flags is not promoted, and its
// status says why.
func TestPromotion(t *testing.T) {
	RequireAgent(t)
	tp := NewTopology(t)
	// A small minimum uptime: the first request (sent right after
	// attaching) is refused for it and the agent asks again when told.
	o := StartOverlayWith(t, tp, []string{"--promotion", "auto", "--promotion-min-uptime", "2s"}, SP1, SP2, SP3)
	promoteArgs := func(ip string) []string {
		// --promote-listen keeps its default, 0.0.0.0:6084; the advertised
		// IP defaults to the uplink's own address.
		return []string{"--role", "auto", "--promote-admin", net.JoinHostPort(ip, strconv.Itoa(AdminPort))}
	}
	start := time.Now()
	pub := o.StartAgentWith(t, Public, "pat", keepalive, promoteArgs(PublicIP), o.SP(SP1), o.SP(SP2))
	lan := o.StartAgentWith(t, LAN1, "lou", keepalive, promoteArgs(LAN1IP), o.SP(SP1), o.SP(SP2))

	var st promotionStatus
	Eventually(t, 60*time.Second, "pat's node promoted", func() error {
		var err error
		if st, err = pub.promotion(); err != nil {
			return err
		}
		if st.Role != "superpeer" {
			return fmt.Errorf("role %q, reason %q after %d attempts", st.Role, st.Promotion.Reason, st.Promotion.Attempts)
		}
		return nil
	})
	took := time.Since(start)
	promotedAddr := net.JoinHostPort(PublicIP, strconv.Itoa(PeerPort))
	if st.Promotion.PeerAddr != promotedAddr {
		t.Fatalf("promoted super peer at %q, want %s", st.Promotion.PeerAddr, promotedAddr)
	}
	promotedSP := &SuperPeer{Host: Public, IP: PublicIP}

	// The mesh has four members, seen by every super peer's /v1/members.
	var members []string
	Eventually(t, 30*time.Second, "a mesh of 4 with the promoted node", func() error {
		for _, sp := range append(o.Live(), promotedSP) {
			var ms []struct {
				PeerID   string `json:"peer_id"`
				PeerAddr string `json:"peer_addr"`
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			err := getJSON(ctx, o.NS(sp.Host), sp.AdminURL()+"/v1/members", &ms)
			cancel()
			if err != nil {
				return fmt.Errorf("%s /v1/members: %w", sp.Host, err)
			}
			members = members[:0]
			found := false
			for _, m := range ms {
				members = append(members, m.PeerAddr)
				found = found || m.PeerAddr == promotedAddr && m.PeerID == st.Promotion.SuperPeer
			}
			if len(ms) != 4 || !found {
				return fmt.Errorf("%s sees members %v", sp.Host, members)
			}
		}
		return nil
	})
	// Its own agent moved to it.
	Eventually(t, 15*time.Second, "pat's agent on its own super peer", func() error {
		s, err := pub.promotion()
		if err != nil {
			return err
		}
		if !s.Attached || s.SuperPeer != s.Promotion.SuperPeer {
			return fmt.Errorf("attached %v to %s, own super peer %s", s.Attached, s.SuperPeer, s.Promotion.SuperPeer)
		}
		return nil
	})

	// The NATed host is refused: its reflexive address (nat1's) is not its own.
	var reason string
	Eventually(t, 30*time.Second, "lou's node refused with a reason", func() error {
		s, err := lan.promotion()
		if err != nil {
			return err
		}
		if s.Role != "ordinary" {
			return fmt.Errorf("lou's node has role %q", s.Role)
		}
		reason = s.Promotion.Reason
		if !strings.Contains(reason, "differs from local "+LAN1IP) {
			return fmt.Errorf("reason %q", reason)
		}
		return nil
	})

	// Records written at sp1 are read through the promoted super peer from
	// behind nat2.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	creds := o.Credentials(t, "lee")
	aor := "sip:lee@" + o.Name
	if out, err := o.RecordPut(ctx, LAN2, o.SP(SP1), creds, aor, "sip:lee@192.0.2.130:5080"); err != nil {
		t.Fatalf("record put: %v: %s", err, out)
	}
	out, err := o.RecordGet(ctx, LAN2, promotedSP, creds, aor)
	if err != nil || !strings.Contains(out, "192.0.2.130:5080") {
		t.Fatalf("record get through the promoted super peer: %v: %s", err, out)
	}
	// Still four: the refused node joined nothing.
	o.WaitMesh(t, 4, 10*time.Second)

	t.Logf("SUMMARY %s: %s promoted in %s (attempts %d, minimum uptime 2s); mesh %d members %v; record read through it ok; %s not promoted: %q",
		t.Name(), Public, took.Round(time.Millisecond), st.Promotion.Attempts, len(members), members, LAN1, reason)
}
