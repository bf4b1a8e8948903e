package overlay

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/ordinarypeer/uplink"
	"github.com/p2psip/p2psip/superpeer"
)

// testUplink is an uplink run by the test that records what it receives.
type testUplink struct {
	*uplink.Uplink
	mu     sync.Mutex
	frames []*wire.Frame
	cancel context.CancelFunc
	done   chan struct{}
}

func (u *testUplink) received() []*wire.Frame {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*wire.Frame(nil), u.frames...)
}

func startUplink(t *testing.T, o *harness.Overlay, user string, bootstrap ...*harness.SP) *testUplink {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	tu := &testUplink{done: make(chan struct{})}
	var addrs []string
	for _, sp := range bootstrap {
		addrs = append(addrs, sp.Node.PeerAddr())
	}
	up, err := uplink.New(uplink.Config{
		Overlay: o.Name, Bootstrap: addrs, Credentials: o.Credentials(user), Key: key, Roots: o.CA.Pool(),
		Keepalive: 200 * time.Millisecond, DialTimeout: time.Second,
		Tunnel: func(f *wire.Frame) {
			tu.mu.Lock()
			tu.frames = append(tu.frames, f)
			tu.mu.Unlock()
		},
	}, o.Log)
	if err != nil {
		t.Fatal(err)
	}
	tu.Uplink = up
	ctx, cancel := context.WithCancel(context.Background())
	tu.cancel = cancel
	go func() {
		defer close(tu.done)
		up.Run(ctx) //nolint:errcheck
	}()
	t.Cleanup(func() { cancel(); <-tu.done })
	select {
	case <-up.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("uplink did not attach")
	}
	return tu
}

func attachedTo(u *testUplink) ids.PeerID {
	att, _ := u.Attachment()
	return att.SP
}

// waitFrame waits for a data frame whose body is want.
func waitFrame(t *testing.T, u *testUplink, want string) *wire.Frame {
	t.Helper()
	var got *wire.Frame
	harness.Eventually(t, 5*time.Second, func() error {
		for _, f := range u.received() {
			if string(f.Body) == want {
				got = f
				return nil
			}
		}
		return fmt.Errorf("no frame %q", want)
	})
	return got
}

func TestTunnelHopsAndFailover(t *testing.T) {
	o := harness.New(t)
	o.Tune = func(c *superpeer.Config) { c.Keepalive = 200 * time.Millisecond }
	a, b, c := o.Start(), o.Start(), o.Start()
	o.WaitConverged(10 * time.Second)

	x := startUplink(t, o, "alice", a)
	y := startUplink(t, o, "bob", b)
	z := startUplink(t, o, "carol", a)
	if attachedTo(x) != a.Node.ID() || attachedTo(y) != b.Node.ID() {
		t.Fatalf("agents did not attach where bootstrapped (no load difference to redirect on)")
	}

	// Different super peers: three hops, the receiver learns the sender's SP.
	if err := x.SendTunnel(y.Self(), b.Node.ID(), []byte("x->y")); err != nil {
		t.Fatal(err)
	}
	f := waitFrame(t, y, "x->y")
	if f.Hops != 3 || f.Src != x.Self() || f.Via != a.Node.ID() {
		t.Fatalf("x->y: hops %d src %s via %s; want 3 hops via %s", f.Hops, f.Src.Short(), f.Via.Short(), a.Node.ID().Short())
	}
	// Without a hint the first super peer finds the attachment in the store:
	// agents here do not store peer records, so the frame comes back as an error.
	if err := x.SendTunnel(y.Self(), ids.PeerID{}, []byte("nohint")); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 5*time.Second, func() error {
		for _, f := range x.received() {
			if f.Flags&wire.FlagError != 0 && f.Src == y.Self() {
				return nil
			}
		}
		return errors.New("no error frame for an unroutable destination")
	})
	// Same super peer: two hops.
	if err := x.SendTunnel(z.Self(), a.Node.ID(), []byte("x->z")); err != nil {
		t.Fatal(err)
	}
	if f := waitFrame(t, z, "x->z"); f.Hops != 2 {
		t.Fatalf("x->z on one super peer took %d hops, want 2", f.Hops)
	}

	// Kill bob's super peer: bob reattaches elsewhere within 2 s.
	killed := time.Now()
	o.Kill(b)
	harness.Eventually(t, 5*time.Second, func() error {
		if att, ok := y.Attachment(); !ok || att.SP == b.Node.ID() {
			return errors.New("not reattached")
		}
		return nil
	})
	att, _ := y.Attachment()
	t.Logf("reattached to %s after %s (measured by the uplink: %s)", att.SP.Short(), time.Since(killed), att.Reattach)
	if att.Reattach > 2*time.Second {
		t.Fatalf("reattach took %s, want < 2s", att.Reattach)
	}
	// And is reachable at its new super peer.
	if err := x.SendTunnel(y.Self(), att.SP, []byte("after")); err != nil {
		t.Fatal(err)
	}
	if f := waitFrame(t, y, "after"); f.Hops > 3 {
		t.Fatalf("%d hops", f.Hops)
	}
	_ = c
}

func TestAttachCapacityAndRedirect(t *testing.T) {
	o := harness.New(t)
	o.Tune = func(c *superpeer.Config) { c.Capacity = 2 }
	a := o.Start()
	b := o.Start()
	o.WaitConverged(10 * time.Second)
	// Fill a.
	startUplink(t, o, "u1", a)
	startUplink(t, o, "u2", a)
	// The next agent bootstrapping at a is redirected to b once a's load
	// has been gossiped (or refused by a and sent to b: either way it lands on b).
	harness.Eventually(t, 5*time.Second, func() error {
		for _, m := range b.Node.Mesh().View().Members {
			if m.PeerID == a.Node.ID() && m.Load == 2 {
				return nil
			}
		}
		return errors.New("a's load not gossiped yet")
	})
	u3 := startUplink(t, o, "u3", a)
	if attachedTo(u3) != b.Node.ID() {
		t.Fatalf("u3 attached to %s, want the free super peer %s", attachedTo(u3).Short(), b.Node.ID().Short())
	}
	startUplink(t, o, "u4", b)
	// Both full: a clear refusal.
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	up, _ := uplink.New(uplink.Config{Overlay: o.Name, Bootstrap: []string{a.Node.PeerAddr()}, Credentials: o.Credentials("u5"), Key: key, Roots: o.CA.Pool()}, o.Log)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); up.Run(ctx) }() //nolint:errcheck
	if _, err := up.Session(ctx); err == nil {
		t.Fatal("a fifth agent was admitted past capacity")
	}
	<-done
}
