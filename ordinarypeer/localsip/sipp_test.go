package localsip_test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/p2psip/p2psip/e2e/harness/sipp"
)

// sippCalls is how many calls TestSIPp places (P2PSIP_SIPP_CALLS, default
// 100) and sippRate how many it starts per second (P2PSIP_SIPP_RATE,
// default 100).
func sippCalls() int { return envInt("P2PSIP_SIPP_CALLS", 100) }
func sippRate() int  { return envInt("P2PSIP_SIPP_RATE", 100) }

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// TestSIPp: a SIPp UAS registers behind agent B, a SIPp UAC behind agent A
// places sippCalls() calls to it through both routers and the tunnel, with
// zero failures; ACK and BYE of every call traverse both agents.
func TestSIPp(t *testing.T) {
	sipp.Bin(t)
	if testing.Short() {
		t.Skip("SIPp run skipped in -short mode")
	}
	calls := sippCalls()
	_, a, b := twoAgents(t)
	uasPort := sipp.FreeUDPPort(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(calls/sippRate())*time.Second+2*time.Minute)
	defer cancel()

	// REGISTER from the port the UAS will listen on: that is the flow
	// agent B delivers to.
	if err := sipp.Register(ctx, t, b.addr(), "bob", overlay, uasPort); err != nil {
		t.Fatalf("sipp register: %v", err)
	}
	if n := b.reg.Bindings(); n != 1 {
		t.Fatalf("agent B has %d bindings after SIPp's REGISTER", n)
	}
	uas := sipp.UAS(ctx, t, uasPort, calls)
	uac := sipp.UAC(ctx, t, sipp.Calls{Target: a.addr(), From: "alice", To: "bob", Domain: overlay, N: calls, Rate: sippRate()})
	if err := uac.Wait(time.Duration(calls/sippRate())*time.Second + time.Minute); err != nil {
		t.Fatalf("sipp uac: %v\n%s\nuas:\n%s", err, uac.Output(), uas.Output())
	}
	if err := uas.Wait(30 * time.Second); err != nil {
		t.Fatalf("sipp uas: %v\n%s", err, uas.Output())
	}
	as, bs := a.router.Stats(), b.router.Stats()
	for _, m := range []string{"INVITE", "ACK", "BYE"} {
		if as.Forwarded[m] != uint64(calls) || bs.Forwarded[m] != uint64(calls) {
			t.Errorf("%s forwarded A=%d B=%d, want %d each", m, as.Forwarded[m], bs.Forwarded[m], calls)
		}
	}
	if as.MaxHops > 3 || bs.MaxHops > 3 || as.Dropped+bs.Dropped != 0 {
		t.Errorf("hops A=%d B=%d, dropped %d", as.MaxHops, bs.MaxHops, as.Dropped+bs.Dropped)
	}
	t.Logf("%d calls in %v at %d calls/s offered", calls, uac.Ended.Sub(uac.Started).Round(time.Millisecond), sippRate())
	t.Logf("agent A %+v", as)
	t.Logf("agent B %+v", bs)
}
