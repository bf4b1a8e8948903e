package fallback

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/wait"
	"github.com/p2psip/p2psip/superpeer/relay"
	"github.com/rs/zerolog"
)

const realm = "fallback.test"

var secret = []byte("0123456789abcdef0123456789abcdef")

// turnServer runs the super peer's TURN server on 127.0.0.1 (relaying to
// loopback allowed) and returns its address.
func turnServer(t *testing.T) string {
	t.Helper()
	addr, _ := turnServerAt(t, "127.0.0.1:0")
	return addr
}

// turnServerAt runs a TURN server on addr; stop ends it (also at
// cleanup).
func turnServerAt(t *testing.T, addr string) (string, func()) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	s, err := relay.New(relay.Config{Realm: realm, Secret: secret, PacketConn: pc, AllowLoopback: true},
		logx.ForTest(t, zerolog.WarnLevel))
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("TURN server: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return pc.LocalAddr().String(), stop
}

func testKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func randomID(t *testing.T) ids.PeerID {
	var id ids.PeerID
	if _, err := rand.Read(id[:]); err != nil {
		t.Fatal(err)
	}
	return id
}

type received struct {
	src     ids.PeerID
	payload string
}

// testRelay is a Relay whose credentials the test swaps.
func testRelay(t *testing.T, user string, ttl time.Duration, in chan<- received) (*Relay, *atomic.Pointer[auth.Credentials]) {
	t.Helper()
	var creds atomic.Pointer[auth.Credentials]
	issue(t, &creds, user, ttl)
	r := New(Config{
		Key: testKey(t), Realm: realm, RenewBefore: 2 * time.Second,
		Credentials: func() auth.Credentials { return *creds.Load() },
		Deliver: func(src ids.PeerID, _ string, p []byte) {
			select {
			case in <- received{src, string(p)}:
			default:
			}
		},
		Log: logx.ForTest(t, zerolog.WarnLevel),
	})
	t.Cleanup(r.Close)
	return r, &creds
}

func issue(t *testing.T, p *atomic.Pointer[auth.Credentials], user string, ttl time.Duration) {
	t.Helper()
	c, err := auth.Issue(secret, user, ttl, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	p.Store(&c)
}

// roundTrip sends from a to b's relayed address and waits for it.
func roundTrip(t *testing.T, a, b *Relay, bIn <-chan received, msg string) {
	t.Helper()
	if err := a.Send(b.cfg.Self, b.Addr(), []byte(msg)); err != nil {
		t.Fatalf("send %q: %v", msg, err)
	}
	select {
	case got := <-bIn:
		if got.src != a.cfg.Self || got.payload != msg {
			t.Fatalf("received %q from %s, want %q from %s", got.payload, got.src.Short(), msg, a.cfg.Self.Short())
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%q not relayed within 5 s", msg)
	}
}

// TestRenewal: an allocation made with credentials about to expire moves
// to a new one made with renewed credentials before they do (the server
// would refuse its refreshes); with expired credentials and no newer ones
// it is dropped and allocating fails with the server's 401 until
// credentials come back. Relayed datagrams flow on the new allocation.
func TestRenewal(t *testing.T) {
	srv := turnServer(t)
	permits := []string{"127.0.0.1"}
	aIn, bIn := make(chan received, 8), make(chan received, 8)
	a, aCreds := testRelay(t, "alice", 4*time.Second, aIn)
	b, _ := testRelay(t, "bob", time.Hour, bIn)
	for _, r := range []*Relay{a, b} {
		if changed, err := r.Ensure("", []string{srv}, permits); err != nil || !changed {
			t.Fatalf("first Ensure: changed %t, %v", changed, err)
		}
	}
	first := a.Addr()
	roundTrip(t, a, b, bIn, "before renewal")
	if changed, err := a.Ensure("", []string{srv}, permits); err != nil || changed {
		t.Fatalf("Ensure with fresh credentials: changed %t, %v; want no change", changed, err)
	}

	// Near expiry without newer credentials: kept (it still works).
	deadline := time.Now().Add(10 * time.Second)
	for time.Until(CredExpiry(*aCreds.Load())) > time.Second {
		if time.Now().After(deadline) {
			t.Fatal("credentials never near expiry")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if changed, err := a.Ensure("", []string{srv}, permits); err != nil || changed {
		t.Fatalf("Ensure near expiry, no newer credentials: changed %t, %v; want no change", changed, err)
	}
	// Renewed credentials: a new allocation, released old one.
	issue(t, aCreds, "alice", time.Hour)
	changed, err := a.Ensure("", []string{srv}, permits)
	if err != nil || !changed || a.Addr() == first || a.Addr() == "" {
		t.Fatalf("Ensure with renewed credentials: changed %t, %v, relayed %s (was %s)", changed, err, a.Addr(), first)
	}
	roundTrip(t, b, a, aIn, "after renewal")
	roundTrip(t, a, b, bIn, "after renewal, back")
	if st := a.Stats(); st.Allocations != 2 || st.Failures != 0 {
		t.Errorf("stats %+v; want 2 allocations, 0 failures", st)
	}

	// Credentials that expire with nothing newer: the allocation is given
	// up once they have, and a new one is refused (401) meanwhile.
	cIn := make(chan received, 8)
	c, cCreds := testRelay(t, "carol", 2*time.Second, cIn)
	if changed, err := c.Ensure("", []string{srv}, permits); err != nil || !changed {
		t.Fatalf("carol's first Ensure: changed %t, %v", changed, err)
	}
	for time.Now().Before(CredExpiry(*cCreds.Load())) {
		time.Sleep(50 * time.Millisecond)
	}
	changed, err = c.Ensure("", []string{srv}, permits)
	if err == nil || !changed || c.Addr() != "" {
		t.Fatalf("Ensure with expired credentials: changed %t, %v, relayed %q; want the allocation dropped and an error", changed, err, c.Addr())
	}
	t.Logf("with expired credentials: %v", err)
	issue(t, cCreds, "carol", time.Hour)
	if changed, err := c.Ensure("", []string{srv}, permits); err != nil || !changed || c.Addr() == "" {
		t.Fatalf("Ensure after new credentials: changed %t, %v", changed, err)
	}
	roundTrip(t, b, c, cIn, "after expiry")
	if st := c.Stats(); st.Allocations != 2 || st.Failures != 1 {
		t.Errorf("carol's stats %+v; want 2 allocations, 1 failure", st)
	}
}

// TestOrder: rendezvous hashing spreads agents evenly over the servers,
// and dropping one server moves only the agents that had picked it.
func TestOrder(t *testing.T) {
	servers := []string{"203.0.113.11:3478", "203.0.113.12:3478", "203.0.113.13:3478", "203.0.113.14:3478"}
	const agents = 4000
	count := map[string]int{}
	moved := 0
	for range agents {
		id := randomID(t)
		o := Order(id, servers)
		if len(o) != len(servers) {
			t.Fatalf("Order = %v", o)
		}
		count[o[0]]++
		without := Order(id, servers[1:])
		if o[0] != servers[0] && without[0] != o[0] {
			moved++
		}
		if got := Order(id, []string{servers[2], servers[0], servers[3], servers[1], servers[0]}); fmt.Sprint(got) != fmt.Sprint(o) {
			t.Fatalf("Order depends on the input order or duplicates: %v vs %v", got, o)
		}
	}
	for _, s := range servers {
		// 1000 expected each; ±20% is > 6 standard deviations.
		if n := count[s]; n < 800 || n > 1200 {
			t.Errorf("%s picked by %d of %d agents; want about %d", s, n, agents, agents/len(servers))
		}
	}
	if moved != 0 {
		t.Errorf("%d agents moved although their server stayed", moved)
	}
	t.Logf("first choices: %v", count)
}

// TestLostAllocation: the TURN server restarts on the same address and
// forgets the allocation (as it would refuse its next refresh); pion only
// logs that. The self-probe's missing echo shows it, and Ensure
// re-allocates; relayed datagrams flow again.
func TestLostAllocation(t *testing.T) {
	addr, stop := turnServerAt(t, "127.0.0.1:0")
	other := turnServer(t)
	permits := []string{"127.0.0.1"}
	aIn, bIn := make(chan received, 8), make(chan received, 8)
	a, _ := testRelay(t, "alice", time.Hour, aIn)
	a.cfg.ProbeTimeout = 300 * time.Millisecond
	b, _ := testRelay(t, "bob", time.Hour, bIn)
	if _, err := a.Ensure("", []string{addr}, permits); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Ensure("", []string{other}, permits); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 5*time.Second, "the first probe's echo", func() bool { return a.Stats().Probes == 1 })
	roundTrip(t, a, b, bIn, "before the restart")

	stop()
	_, stop2 := turnServerAt(t, addr)
	defer stop2()
	first := a.Addr()
	if changed, err := a.Ensure("", []string{addr}, permits); err != nil || changed {
		t.Fatalf("Ensure right after the restart: changed %t, %v; want a probe sent, no change yet", changed, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		time.Sleep(a.cfg.ProbeTimeout)
		changed, err := a.Ensure("", []string{addr}, permits)
		if changed && err == nil && a.Addr() != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no re-allocation within 10 s after the restart (changed %t, %v, stats %+v)", changed, err, a.Stats())
		}
	}
	st := a.Stats()
	t.Logf("relayed address %s → %s; stats %+v", first, a.Addr(), st)
	if st.Lost != 1 || st.Allocations != 2 {
		t.Errorf("stats %+v; want 1 lost, 2 allocations", st)
	}
	roundTrip(t, b, a, aIn, "after the restart")
}

// TestSpoofedSender: anyone with credentials can get an allocation and
// send to an agent's relayed address. Mallory's datagrams claiming to
// come from alice (the unsigned framing of version 1, a signed one with
// alice's public key swapped in, one alice signed replayed from mallory's
// allocation) are dropped; what mallory signs with her own key arrives as
// hers.
func TestSpoofedSender(t *testing.T) {
	srv := turnServer(t)
	permits := []string{"127.0.0.1"}
	aIn, bIn, mIn := make(chan received, 8), make(chan received, 8), make(chan received, 8)
	a, _ := testRelay(t, "alice", time.Hour, aIn)
	b, _ := testRelay(t, "bob", time.Hour, bIn)
	m, _ := testRelay(t, "mallory", time.Hour, mIn)
	for _, r := range []*Relay{a, b, m} {
		if _, err := r.Ensure("", []string{srv}, permits); err != nil {
			t.Fatal(err)
		}
	}
	to, err := net.ResolveUDPAddr("udp4", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	invite := []byte("INVITE sip:bob@example.net SIP/2.0\r\n\r\n")
	v1 := append(append([]byte("P2R1"), a.cfg.Self[:]...), invite...)
	forged := Encode(m.cfg.Key, b.cfg.Self, m.Addr(), time.Now(), invite)
	copy(forged[len(Magic):], a.cfg.Key.Public().(ed25519.PublicKey))
	// A datagram alice really signed for bob, replayed from mallory's
	// allocation: bob would answer alice's traffic there.
	replayed := Encode(a.cfg.Key, b.cfg.Self, a.Addr(), time.Now(), invite)
	for _, raw := range [][]byte{v1, forged, replayed} {
		if _, err := m.cur.relay.WriteTo(raw, to); err != nil {
			t.Fatal(err)
		}
	}
	wait.For(t, 5*time.Second, "bob's relay to drop the forgeries and the replay", func() bool { return b.Stats().Dropped >= 3 })
	roundTrip(t, m, b, bIn, "signed by mallory") // checks the sender is mallory
	select {
	case got := <-bIn:
		t.Fatalf("bob received %q as from %s", got.payload, got.src.Short())
	default:
	}
}
