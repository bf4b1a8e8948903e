package overlay

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/emiago/sipgo"

	"github.com/p2psip/p2psip/common/sipua"
	"github.com/p2psip/p2psip/e2e/harness"
)

// TestSIPUA drives common/sipua, the user agent of `p2psip demo` and of the
// compose test's phones, through real agents on two super peers: both
// register, call each other, and a call to a user nobody registered ends
// with the final response it got, not a hang.
func TestSIPUA(t *testing.T) {
	o, sps := agentOverlay(t, 2)
	ctx := context.Background()
	var uas []*sipua.UA
	for i, user := range []string{"alice", "bob"} {
		a := attachAgent(t, o, user, sps[i])
		ua, err := sipua.New(sipua.Config{User: user, Domain: o.Name, Proxy: a.SIPAddr(), Listen: "127.0.0.1:0"}, o.Log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ua.Close)
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		code, err := ua.Register(rctx, 600)
		cancel()
		if err != nil || code != 200 {
			t.Fatalf("%s: register: %d %v", user, code, err)
		}
		uas = append(uas, ua)
	}
	for _, pair := range [][2]*sipua.UA{{uas[0], uas[1]}, {uas[1], uas[0]}} {
		from, to := pair[0], pair[1]
		before := to.Answered()
		var res sipua.CallResult
		harness.Eventually(t, 10*time.Second, func() error {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			var err error
			res, err = from.Call(cctx, to.AoR())
			return err
		})
		if n := len(res.Codes); n == 0 || res.Codes[n-1] != 200 || res.CallID == "" || res.Setup <= 0 {
			t.Errorf("call %v → %v: %+v", from.AoR(), to.AoR(), res)
		}
		harness.Eventually(t, 5*time.Second, func() error {
			if to.Answered() == before {
				return errors.New("callee has not counted the call as answered")
			}
			return nil
		})
	}

	nobody := uas[1].AoR()
	nobody.User = "nobody"
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	res, err := uas[0].Call(cctx, nobody)
	var de *sipgo.ErrDialogResponse
	if !errors.As(err, &de) || de.Res.StatusCode < 400 || len(res.Codes) == 0 || res.Codes[len(res.Codes)-1] != de.Res.StatusCode {
		t.Fatalf("call to an unregistered user: want a final error response in the error and the codes, got %+v, %v", res, err)
	}
	t.Logf("call to an unregistered user: %v (codes %v)", err, res.Codes)
}
