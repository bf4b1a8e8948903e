// Package harness builds in-process overlays for tests (STYLE.md B7.4):
// super peers on 127.0.0.1 with ephemeral ports, all under the test's
// control, every one stopped at cleanup. Killing a super peer cancels its
// context without a graceful Leave, which the rest of the overlay sees as
// a crash.
package harness

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"

	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/client"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/superpeer"
)

// Overlay is a set of in-process super peers sharing a secret.
type Overlay struct {
	T      testing.TB
	Name   string
	Secret []byte
	CA     *auth.CA
	Log    zerolog.Logger
	// Tune adjusts each super peer's config before it starts.
	Tune func(*superpeer.Config)

	mu  sync.Mutex
	SPs []*SP
}

// SP is one super peer of the overlay.
type SP struct {
	Node   *superpeer.Node
	Dir    string
	cancel context.CancelFunc
	done   chan error
	killed bool
}

// Alive reports whether the super peer has not been killed.
func (s *SP) Alive() bool { return !s.killed }

// New makes an empty overlay; its super peers stop at test cleanup.
func New(t testing.TB) *Overlay {
	secret := make([]byte, 32)
	rand.Read(secret) //nolint:errcheck // never fails
	ca, err := auth.OverlayCA(secret, "example.net")
	if err != nil {
		t.Fatal(err)
	}
	o := &Overlay{T: t, Name: "example.net", Secret: secret, CA: ca, Log: logx.ForTest(t, zerolog.InfoLevel)}
	// logx.ForTest's cleanup, registered above, runs after stopAll: the
	// overlay's shutdown is logged, and what memberlist's timers log later
	// is dropped instead of panicking the test binary.
	t.Cleanup(o.stopAll)
	return o
}

// FastConfig is a super-peer configuration with short timers for tests.
func (o *Overlay) FastConfig() superpeer.Config {
	return superpeer.Config{
		Overlay:    o.Name,
		Secret:     o.Secret,
		Bind:       "127.0.0.1",
		GossipPort: -1,
		SIPPort:    -1,
		SIPSPort:   -1,
		TURNPort:   -1,
		Admin:      "off",
		// Short enough for quick failure detection (about 2–3 s), long
		// enough not to suspect healthy members on a loaded 2-core CI
		// machine running -race.
		ProbeInterval:       500 * time.Millisecond,
		SuspicionMult:       3,
		StoreTimeout:        5 * time.Second,
		SweepInterval:       200 * time.Millisecond,
		AntiEntropyInterval: 2 * time.Second,
	}
}

// Start adds a super peer that joins the alive ones and waits until it is
// ready.
func (o *Overlay) Start() *SP {
	o.T.Helper()
	cfg := o.FastConfig()
	cfg.DataDir = o.T.TempDir()
	for _, sp := range o.Alive() {
		cfg.Join = append(cfg.Join, sp.Node.GossipAddr())
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		o.T.Fatal(err)
	}
	cfg.PeerListener = l
	if o.Tune != nil {
		o.Tune(&cfg)
	}
	n, err := superpeer.New(cfg, o.Log)
	if err != nil {
		o.T.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sp := &SP{Node: n, Dir: cfg.DataDir, cancel: cancel, done: make(chan error, 1)}
	go func() { sp.done <- n.Run(ctx) }()
	select {
	case <-n.Ready():
	case err := <-sp.done:
		o.T.Fatalf("super peer stopped before ready: %v", err)
	case <-time.After(10 * time.Second):
		o.T.Fatal("super peer not ready after 10s")
	}
	o.mu.Lock()
	o.SPs = append(o.SPs, sp)
	o.mu.Unlock()
	return sp
}

// Alive lists the super peers not killed.
func (o *Overlay) Alive() []*SP {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []*SP
	for _, sp := range o.SPs {
		if !sp.killed {
			out = append(out, sp)
		}
	}
	return out
}

// Kill stops a super peer abruptly (no Leave) and waits for it to exit.
func (o *Overlay) Kill(sp *SP) {
	o.T.Helper()
	o.mu.Lock()
	sp.killed = true
	o.mu.Unlock()
	sp.cancel()
	select {
	case <-sp.done:
	case <-time.After(10 * time.Second):
		o.T.Fatal("super peer did not stop within 10s")
	}
}

func (o *Overlay) stopAll() {
	for _, sp := range o.Alive() {
		sp.cancel()
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, sp := range o.SPs {
		if !sp.killed {
			<-sp.done
			sp.killed = true
		}
	}
}

// WaitConverged waits until every alive super peer sees exactly the alive set.
func (o *Overlay) WaitConverged(timeout time.Duration) {
	o.T.Helper()
	Eventually(o.T, timeout, func() error {
		alive := o.Alive()
		for _, sp := range alive {
			if got := len(sp.Node.Mesh().View().Members); got != len(alive) {
				return fmt.Errorf("%s sees %d members, want %d", sp.Node.ID().Short(), got, len(alive))
			}
		}
		return nil
	})
}

// Credentials issues credentials for user.
func (o *Overlay) Credentials(user string) auth.Credentials {
	c, err := auth.Issue(o.Secret, user, time.Hour, time.Now())
	if err != nil {
		o.T.Fatal(err)
	}
	return c
}

// Client opens a client session to sp as user; closed at cleanup.
func (o *Overlay) Client(sp *SP, user string) *client.Session {
	o.T.Helper()
	s, err := o.Dial(sp, o.Credentials(user), wire.RoleClient)
	if err != nil {
		o.T.Fatal(err)
	}
	o.T.Cleanup(func() { s.Close() })
	return s
}

// Dial opens a session with explicit credentials and role.
func (o *Overlay) Dial(sp *SP, c auth.Credentials, role wire.Role) (*client.Session, error) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	cert, err := auth.SelfSignedCertificate(key, time.Now())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return client.Dial(ctx, client.Config{
		Addr: sp.Node.PeerAddr(),
		TLS:  auth.ClientTLSConfig(&cert, o.CA.Pool(), "127.0.0.1"),
		Hello: func(cs tls.ConnectionState) (wire.Hello, error) {
			return wire.Hello{Role: role, Overlay: o.Name, Username: c.Username, Password: c.Password}, nil
		},
	}, o.Log)
}

// Eventually polls f until it returns nil or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Leave makes a super peer depart gracefully, then stops it.
func (o *Overlay) Leave(sp *SP, timeout time.Duration) error {
	err := sp.Node.Leave(timeout)
	o.Kill(sp)
	return err
}
