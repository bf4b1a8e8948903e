package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun"
	"github.com/pion/turn/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/wait"
)

func TestSTUNBindingWithoutCredentials(t *testing.T) {
	ts := startServer(t, nil)
	t.Run("udp", func(t *testing.T) {
		c := newClient(t, ts, "", "", false)
		mapped, err := c.SendBindingRequest()
		if err != nil {
			t.Fatal(err)
		}
		// The client's socket is on 127.0.0.1 with no NAT in between.
		if got := mapped.String(); !strings.HasPrefix(got, "127.0.0.1:") {
			t.Fatalf("mapped address %s", got)
		}
	})
	t.Run("tcp", func(t *testing.T) {
		conn, err := net.Dial("tcp4", ts.tcp.String())
		if err != nil {
			t.Fatal(err)
		}
		c, err := stun.NewClient(conn, stun.WithNoRetransmit)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		var xa stun.XORMappedAddress
		var cbErr error
		if err := c.Do(stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint), func(e stun.Event) {
			if cbErr = e.Error; cbErr == nil {
				cbErr = xa.GetFrom(e.Message)
			}
		}); err != nil {
			t.Fatal(err)
		}
		if cbErr != nil {
			t.Fatal(cbErr)
		}
		if xa.String() != conn.LocalAddr().String() {
			t.Fatalf("mapped %s, want %s", xa, conn.LocalAddr())
		}
	})
}

func TestAllocateAndRelayRoundTrip(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.AllowLoopback = true })
	for _, tc := range []struct {
		name string
		tcp  bool
	}{{"udp", false}, {"tcp", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cred := issue(t, "alice")
			c := newClient(t, ts, cred.Username, cred.Password, tc.tcp)
			relay, err := allocate(t, c)
			if err != nil {
				t.Fatal(err)
			}
			if ts.Allocations() != 1 {
				t.Fatalf("Allocations() = %d, want 1", ts.Allocations())
			}
			ra := relay.LocalAddr().(*net.UDPAddr)
			if !ra.IP.Equal(net.IPv4(127, 0, 0, 1)) || ra.Port < DefaultMinPort {
				t.Fatalf("relay address %s", ra)
			}
			p := peer(t)
			if err := c.CreatePermission(p.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			// Several round trips: the first goes by Send indication,
			// later ones by ChannelData once pion's client bound a channel.
			for i := 0; i < 5; i++ {
				msg := []byte("ping " + tc.name + string(rune('0'+i)))
				if _, err := relay.WriteTo(msg, p.LocalAddr()); err != nil {
					t.Fatal(err)
				}
				got, from, err := readWithin(p, 2*time.Second)
				if err != nil {
					t.Fatalf("peer read: %v", err)
				}
				if !bytes.Equal(got, msg) || from.String() != ra.String() {
					t.Fatalf("peer got %q from %s, want %q from %s", got, from, msg, ra)
				}
				// At least 5 bytes: pion v2's TCP framing (STUNConn) holds
				// back a ChannelData frame shorter than 9 bytes until more
				// bytes arrive.
				pong := []byte("pong " + string(rune('0'+i)))
				if _, err := p.WriteTo(pong, ra); err != nil {
					t.Fatal(err)
				}
				if err := relay.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 1500)
				n, from, err := relay.ReadFrom(buf)
				if err != nil {
					t.Fatalf("round trip %d: relay read: %v", i, err)
				}
				if !bytes.Equal(buf[:n], pong) || from.String() != p.LocalAddr().String() {
					t.Fatalf("client got %q from %s", buf[:n], from)
				}
			}
			if err := relay.Close(); err != nil {
				t.Fatal(err)
			}
			wait.For(t, 2*time.Second, "allocation released", func() bool {
				return ts.Allocations() == 0 && ts.quota.held("alice") == 0
			})
		})
	}
	if got := testutil.ToFloat64(ts.metrics.allocated); got != 2 {
		t.Fatalf("allocations_total = %v, want 2", got)
	}
}

func TestBadCredentialsGet401(t *testing.T) {
	ts := startServer(t, nil)
	good := issue(t, "alice")
	expired, err := auth.Issue(testSecret, "alice", time.Minute, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		username, password, realm string
	}{
		"expired":        {expired.Username, expired.Password, testRealm},
		"wrong password": {good.Username, auth.Password([]byte("another secret"), good.Username), testRealm},
		"malformed":      {"alice", auth.Password(testSecret, "alice"), testRealm},
		"wrong realm":    {good.Username, good.Password, "other.example"},
		"tampered user":  {strings.Replace(good.Username, "alice", "bob", 1), good.Password, testRealm},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			before := ts.refused(reasonAuth)
			r := newRawClient(t, ts)
			res := r.allocate(tc.username, tc.password, tc.realm)
			if code := errorCode(res); code != stun.CodeUnauthorized {
				t.Fatalf("Allocate: error %v, want 401", code)
			}
			// RFC 5389 §10.2.2: the 401 carries a fresh NONCE and the
			// REALM and no MESSAGE-INTEGRITY.
			var nonce stun.Nonce
			var realm stun.Realm
			if nonce.GetFrom(res) != nil || realm.GetFrom(res) != nil || realm.String() != testRealm {
				t.Fatalf("401 without NONCE/REALM: %v", res)
			}
			if res.Contains(stun.AttrMessageIntegrity) {
				t.Fatal("401 with MESSAGE-INTEGRITY")
			}
			if got := ts.refused(reasonAuth); got != before+1 {
				t.Fatalf("refused{auth} = %v, want %v", got, before+1)
			}
		})
	}
	t.Run("pion client", func(t *testing.T) {
		c := newClient(t, ts, expired.Username, expired.Password, false)
		_, err := allocate(t, c)
		if err == nil || !strings.Contains(err.Error(), "error 401") {
			t.Fatalf("Allocate with expired credentials: %v, want error 401", err)
		}
	})
	t.Run("missing credentials", func(t *testing.T) {
		newRawClient(t, ts).challenge() // asserts the 401
	})
	if ts.Allocations() != 0 {
		t.Fatal("an allocation was made")
	}
}

func TestQuotaPerUser(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxPerUser = 2 })
	alice := issue(t, "alice")
	var relays []net.PacketConn
	for i := 0; i < 2; i++ {
		r, err := allocate(t, newClient(t, ts, alice.Username, alice.Password, false))
		if err != nil {
			t.Fatalf("allocation %d: %v", i+1, err)
		}
		relays = append(relays, r)
	}
	_, err := allocate(t, newClient(t, ts, alice.Username, alice.Password, false))
	if err == nil || !strings.Contains(err.Error(), "error 486") {
		t.Fatalf("third allocation: %v, want error 486", err)
	}
	// The 486 is signed with the user's key (RFC 5389 §10.2.2).
	res := newRawClient(t, ts).allocate(alice.Username, alice.Password, testRealm)
	if errorCode(res) != stun.CodeAllocQuotaReached {
		t.Fatalf("raw third allocation: %v, want 486", errorCode(res))
	}
	if err := stun.NewLongTermIntegrity(alice.Username, testRealm, alice.Password).Check(res); err != nil {
		t.Fatalf("486 integrity: %v", err)
	}
	if got := ts.refused(reasonQuota); got != 2 {
		t.Fatalf("refused{quota} = %v, want 2", got)
	}

	bob := issue(t, "bob")
	if _, err := allocate(t, newClient(t, ts, bob.Username, bob.Password, false)); err != nil {
		t.Fatalf("other user: %v", err)
	}

	// Closing one allocation (Refresh lifetime 0) gives the unit back.
	if err := relays[0].Close(); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 2*time.Second, "alice's unit released", func() bool { return ts.quota.held("alice") == 1 })
	if _, err := allocate(t, newClient(t, ts, alice.Username, alice.Password, false)); err != nil {
		t.Fatalf("allocation after release: %v", err)
	}
	if ts.Allocations() != 3 {
		t.Fatalf("Allocations() = %d, want 3", ts.Allocations())
	}
}

func TestQuotaTotal(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxAllocations = 2 })
	for _, user := range []string{"alice", "bob"} {
		cr := issue(t, user)
		if _, err := allocate(t, newClient(t, ts, cr.Username, cr.Password, false)); err != nil {
			t.Fatalf("%s: %v", user, err)
		}
	}
	carol := issue(t, "carol")
	_, err := allocate(t, newClient(t, ts, carol.Username, carol.Password, false))
	if err == nil || !strings.Contains(err.Error(), "error 486") {
		t.Fatalf("allocation past the total: %v, want error 486", err)
	}
}

// TestAllocationEndsRelease proves that the quota follows the allocation's
// lifetime however it ends: pion has no event for it, so the relay
// socket's Close is the event.
func TestAllocationEndsRelease(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxPerUser = 1 })
	alice := issue(t, "alice")

	t.Run("expiry", func(t *testing.T) {
		// A raw client asks for a 1 s lifetime and never refreshes.
		res := newRawClient(t, ts).allocate(alice.Username, alice.Password, testRealm,
			stun.RawAttribute{Type: stun.AttrLifetime, Value: []byte{0, 0, 0, 1}})
		if code := errorCode(res); code != 0 {
			t.Fatalf("Allocate: error %v", code)
		}
		if ts.quota.held("alice") != 1 || ts.Allocations() != 1 {
			t.Fatalf("held %d, allocations %d", ts.quota.held("alice"), ts.Allocations())
		}
		wait.For(t, 5*time.Second, "expired allocation released", func() bool {
			return ts.quota.held("alice") == 0 && ts.Allocations() == 0
		})
	})
	t.Run("tcp connection closed", func(t *testing.T) {
		conn, err := net.Dial("tcp4", ts.tcp.String())
		if err != nil {
			t.Fatal(err)
		}
		c, err := turn.NewClient(&turn.ClientConfig{
			STUNServerAddr: ts.tcp.String(), TURNServerAddr: ts.tcp.String(),
			Conn: turn.NewSTUNConn(conn), Username: alice.Username, Password: alice.Password,
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Listen(); err != nil {
			t.Fatal(err)
		}
		relay, err := c.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		// Drop the connection without deallocating.
		c.Close()
		_ = conn.Close()
		_ = relay.Close() // stops the client's refresh timers; its Refresh goes nowhere
		wait.For(t, 5*time.Second, "allocation of a closed TCP connection released", func() bool {
			return ts.quota.held("alice") == 0 && ts.Allocations() == 0
		})
	})
	t.Run("retransmitted allocate", func(t *testing.T) {
		// A retransmission of a successful Allocate must get the cached
		// success, not 486, even though the user is at the cap.
		r := newRawClient(t, ts)
		nonce, _ := r.challenge()
		req := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestUDP,
			stun.NewUsername(alice.Username), stun.NewRealm(testRealm), nonce,
			stun.NewLongTermIntegrity(alice.Username, testRealm, alice.Password), stun.Fingerprint)
		for i := 0; i < 2; i++ {
			if _, err := r.conn.WriteTo(req.Raw, r.server); err != nil {
				t.Fatal(err)
			}
			b, _, err := readWithin(r.conn, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			res := &stun.Message{Raw: b}
			if err := res.Decode(); err != nil {
				t.Fatal(err)
			}
			if code := errorCode(res); code != 0 {
				t.Fatalf("attempt %d: error %v", i+1, code)
			}
		}
		if ts.quota.held("alice") != 1 {
			t.Fatalf("held %d, want 1", ts.quota.held("alice"))
		}
		// Deallocate: Refresh with LIFETIME 0.
		res := r.do(stun.NewType(stun.MethodRefresh, stun.ClassRequest),
			stun.RawAttribute{Type: stun.AttrLifetime, Value: []byte{0, 0, 0, 0}},
			stun.NewUsername(alice.Username), stun.NewRealm(testRealm), nonce,
			stun.NewLongTermIntegrity(alice.Username, testRealm, alice.Password), stun.Fingerprint)
		if code := errorCode(res); code != 0 {
			t.Fatalf("Refresh 0: error %v", code)
		}
		wait.For(t, 2*time.Second, "deallocated", func() bool { return ts.quota.held("alice") == 0 })
	})
}

func TestForbiddenPeers(t *testing.T) {
	ts := startServer(t, nil) // AllowLoopback false
	alice := issue(t, "alice")
	c := newClient(t, ts, alice.Username, alice.Password, false)
	relay, err := allocate(t, c)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		ip   string
		want string
	}{
		"loopback":          {"127.0.0.1", "error 403"},
		"loopback 127/8":    {"127.1.2.3", "error 403"},
		"link-local":        {"169.254.169.254", "error 403"},
		"unspecified":       {"0.0.0.0", "error 403"},
		"multicast":         {"224.0.0.251", "error 403"},
		"broadcast":         {"255.255.255.255", "error 403"},
		"ipv6 loopback":     {"::1", "error 443"},
		"ipv6 link-local":   {"fe80::1", "error 443"},
		"ipv4-mapped local": {"::ffff:127.0.0.1", "error 403"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			before := ts.refused(reasonPermission)
			err := c.CreatePermission(&net.UDPAddr{IP: net.ParseIP(tc.ip), Port: 9})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CreatePermission(%s): %v, want %s", tc.ip, err, tc.want)
			}
			if ts.refused(reasonPermission) != before+1 {
				t.Fatal("refusal not counted")
			}
		})
	}

	// Traffic to a loopback peer is not relayed: pion's client asks for
	// the permission on the first write and reports the 403.
	p := peer(t)
	if _, err := relay.WriteTo([]byte("ssrf"), p.LocalAddr()); err == nil || !strings.Contains(err.Error(), "error 403") {
		t.Fatalf("WriteTo loopback peer: %v, want error 403", err)
	}
	if _, _, err := readWithin(p, 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("loopback peer received a datagram (%v)", err)
	}
}

func TestDeniedOwnPorts(t *testing.T) {
	service := peer(t) // stands for the super peer's SIP or gossip port
	servicePort := service.LocalAddr().(*net.UDPAddr).Port
	ts := startServer(t, func(c *Config) {
		c.AllowLoopback = true
		c.DenyPorts = []int{servicePort}
	})
	alice := issue(t, "alice")
	c := newClient(t, ts, alice.Username, alice.Password, false)
	relay, err := allocate(t, c)
	if err != nil {
		t.Fatal(err)
	}
	allowed := peer(t)
	// Permissions are per IP: 127.0.0.1 itself is allowed here.
	if err := c.CreatePermission(service.LocalAddr(), allowed.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	before := ts.refused(reasonPermission)
	for _, dst := range []net.Addr{service.LocalAddr(), ts.udp} {
		for i := 0; i < 3; i++ { // Send indication, then ChannelBind (refused 403), then Send again
			if _, err := relay.WriteTo([]byte("ssrf"), dst); err != nil {
				t.Fatalf("WriteTo %s: %v", dst, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if _, err := relay.WriteTo([]byte("ok"), allowed.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if got, _, err := readWithin(allowed, 2*time.Second); err != nil || string(got) != "ok" {
		t.Fatalf("allowed peer: %q, %v", got, err)
	}
	if _, _, err := readWithin(service, 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("denied service port received a datagram (%v)", err)
	}
	if ts.refused(reasonPermission) < before+2 {
		t.Fatalf("refused{permission} = %v, want >= %v", ts.refused(reasonPermission), before+2)
	}

	// A ChannelBind naming the denied port gets 403 with integrity.
	r := newRawClient(t, ts)
	nonce, _ := r.challenge()
	sig := []stun.Setter{stun.NewUsername(alice.Username), stun.NewRealm(testRealm), nonce,
		stun.NewLongTermIntegrity(alice.Username, testRealm, alice.Password), stun.Fingerprint}
	if res := r.do(append([]stun.Setter{stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestUDP}, sig...)...); errorCode(res) != 0 {
		t.Fatalf("Allocate: %v", errorCode(res))
	}
	svc := service.LocalAddr().(*net.UDPAddr)
	peerAttr := &stun.XORMappedAddress{IP: svc.IP, Port: svc.Port}
	bind := []stun.Setter{stun.NewType(stun.MethodChannelBind, stun.ClassRequest),
		xorPeer{peerAttr}, stun.RawAttribute{Type: stun.AttrChannelNumber, Value: []byte{0x40, 0x00, 0, 0}}}
	res := r.do(append(bind, sig...)...)
	if errorCode(res) != stun.CodeForbidden {
		t.Fatalf("ChannelBind to a denied port: %v, want 403", errorCode(res))
	}
	if err := stun.NewLongTermIntegrity(alice.Username, testRealm, alice.Password).Check(res); err != nil {
		t.Fatalf("403 integrity: %v", err)
	}
}

// xorPeer adds an XOR-PEER-ADDRESS.
type xorPeer struct{ a *stun.XORMappedAddress }

func (x xorPeer) AddTo(m *stun.Message) error { return x.a.AddToAs(m, stun.AttrXORPeerAddress) }

func TestRunStopsAndClosesAllocations(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Realm: testRealm, Secret: testSecret, PacketConn: pc}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	ts := &testServer{Server: s, udp: pc.LocalAddr().(*net.UDPAddr)}
	alice := issue(t, "alice")
	if _, err := allocate(t, newClient(t, ts, alice.Username, alice.Password, false)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if s.Allocations() != 0 || s.quota.held("alice") != 0 {
		t.Fatalf("after Run: %d allocations, %d held", s.Allocations(), s.quota.held("alice"))
	}
	if err := s.Run(context.Background()); err == nil {
		t.Fatal("second Run succeeded")
	}
}

func TestNewValidates(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pc.Close() }()
	wild, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = wild.Close() }()
	ok := Config{Realm: testRealm, Secret: testSecret, PacketConn: pc}
	cases := map[string]func(c *Config){
		"no realm":           func(c *Config) { c.Realm = "" },
		"no secret":          func(c *Config) { c.Secret = nil },
		"no socket":          func(c *Config) { c.PacketConn = nil },
		"wildcard, no relay": func(c *Config) { c.PacketConn = wild },
		"ipv6 relay":         func(c *Config) { c.RelayIP = net.ParseIP("2001:db8::1") },
		"ports reversed":     func(c *Config) { c.MinPort, c.MaxPort = 60000, 50000 },
		"bad bind":           func(c *Config) { c.RelayBind = "example.net" },
		"negative quota":     func(c *Config) { c.MaxPerUser = -1 },
		"negative sockets":   func(c *Config) { c.UDPSockets = -1 },
		"too many sockets":   func(c *Config) { c.UDPSockets = 65 },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			c := ok
			mutate(&c)
			if _, err := New(c, testLogger(t)); err == nil {
				t.Fatal("New accepted it")
			}
		})
	}
	s, err := New(ok, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.cfg.RelayIP.String(); got != "127.0.0.1" || s.cfg.RelayBind != "127.0.0.1" ||
		s.cfg.MinPort != DefaultMinPort || s.cfg.MaxPort != DefaultMaxPort ||
		s.cfg.MaxAllocations != DefaultMaxAllocations || s.cfg.MaxPerUser != DefaultMaxPerUser {
		t.Fatalf("defaults: %+v", s.cfg)
	}
}

func TestIdleTCPConnectionClosed(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Realm: testRealm, Secret: testSecret, PacketConn: pc, Listener: ln}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	s.tcpIdle = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	conn, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	start := time.Now()
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("idle connection not closed by the server: %v", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("closed after %v, before the idle limit", d)
	}
}

// TestQuotaConcurrent races allocations of one user over the UDP socket
// and several TCP connections (each served by its own goroutine): the cap
// holds exactly.
func TestQuotaConcurrent(t *testing.T) {
	const perUser, clients = 3, 12
	ts := startServer(t, func(c *Config) { c.MaxPerUser = perUser })
	alice := issue(t, "alice")
	cs := make([]*turn.Client, clients)
	for i := range cs {
		cs[i] = newClient(t, ts, alice.Username, alice.Password, i%2 == 1)
	}
	errs := make(chan error, clients)
	for _, c := range cs {
		go func() {
			_, err := allocate(t, c)
			errs <- err
		}()
	}
	ok, quota := 0, 0
	for range cs {
		switch err := <-errs; {
		case err == nil:
			ok++
		case strings.Contains(err.Error(), "error 486"):
			quota++
		default:
			t.Errorf("unexpected: %v", err)
		}
	}
	if ok != perUser || quota != clients-perUser {
		t.Fatalf("%d allocated, %d refused with 486; want %d and %d", ok, quota, perUser, clients-perUser)
	}
	if got := ts.quota.held("alice"); got != perUser {
		t.Fatalf("held %d", got)
	}
}

// TestEvenPort: pion probes the generator for an even port (RFC 5766
// §6.2 EVEN-PORT); the probes give their units back.
func TestEvenPort(t *testing.T) {
	ts := startServer(t, nil)
	alice := issue(t, "alice")
	res := newRawClient(t, ts).allocate(alice.Username, alice.Password, testRealm,
		stun.RawAttribute{Type: stun.AttrEvenPort, Value: []byte{0x80}})
	if code := errorCode(res); code != 0 {
		t.Fatalf("Allocate with EVEN-PORT: error %v", code)
	}
	var relayed stun.XORMappedAddress
	if err := relayed.GetFromAs(res, stun.AttrXORRelayedAddress); err != nil {
		t.Fatal(err)
	}
	if relayed.Port%2 != 0 {
		t.Fatalf("relayed port %d is odd", relayed.Port)
	}
	if ts.quota.held("alice") != 1 || ts.Allocations() != 1 {
		t.Fatalf("held %d, allocations %d; want 1 and 1", ts.quota.held("alice"), ts.Allocations())
	}
}

// TestUDPSocketsSpreadClients checks that the further UDP sockets share
// the port, that the kernel spreads clients over them (each socket's
// allocations then live on its own read loop) and that a client on any of
// them relays both ways and keeps its allocation on one socket.
func TestUDPSocketsSpreadClients(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SO_REUSEPORT balancing is Linux only")
	}
	const sockets, clients = 4, 16
	ts := startServer(t, func(c *Config) { c.AllowLoopback = true; c.UDPSockets = sockets })
	wait.For(t, 5*time.Second, "udp sockets bound", func() bool { return ts.Allocations() == 0 && ts.udpCount() == sockets })
	for _, pc := range ts.udpConns() {
		if pc.LocalAddr().String() != ts.udp.String() {
			t.Fatalf("socket on %s, want %s", pc.LocalAddr(), ts.udp)
		}
	}
	p := peer(t)
	for i := range clients {
		cred := issue(t, fmt.Sprintf("user%d", i))
		c := newClient(t, ts, cred.Username, cred.Password, false)
		relay, err := allocate(t, c)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		if err := c.CreatePermission(p.LocalAddr()); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		// Twice: by Send indication, then by ChannelData.
		for j := range 2 {
			msg := []byte(fmt.Sprintf("ping %d.%d", i, j))
			if _, err := relay.WriteTo(msg, p.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			got, from, err := readWithin(p, 2*time.Second)
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("client %d: peer got %q (%v), want %q", i, got, err, msg)
			}
			if _, err := p.WriteTo([]byte("pong"), from); err != nil {
				t.Fatal(err)
			}
			if err := relay.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64)
			if n, _, err := relay.ReadFrom(buf); err != nil || string(buf[:n]) != "pong" {
				t.Fatalf("client %d: relay read %q, %v", i, buf[:n], err)
			}
		}
	}
	if n := ts.Allocations(); n != clients {
		t.Fatalf("Allocations() = %d, want %d", n, clients)
	}
	// 16 clients all hashed to one of 4 sockets: odds 4^-15.
	if n := ts.gatesInUse(); n < 2 {
		t.Fatalf("allocations on %d socket(s), want them spread over several", n)
	}
}

func (ts *testServer) udpCount() int { return len(ts.udpConns()) }

// udpConns returns the UDP sockets, once Run has bound them.
func (ts *testServer) udpConns() []net.PacketConn {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.Server.udp
}

// gatesInUse counts the UDP sockets holding allocations.
func (ts *testServer) gatesInUse() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	gates := map[*gate]bool{}
	for rc := range ts.relays {
		gates[rc.g] = true
	}
	return len(gates)
}

// TestSiblings binds further sockets on a wildcard (dual-stack) port, as
// a super peer with --bind 0.0.0.0 does, and refuses a socket it cannot
// reach the file descriptor of.
func TestSiblings(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SO_REUSEPORT balancing is Linux only")
	}
	pc, err := net.ListenPacket("udp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pc.Close() }()
	more, err := siblings(pc, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range more {
		defer func() { _ = s.Close() }()
		if s.LocalAddr().String() != pc.LocalAddr().String() {
			t.Fatalf("sibling on %s, want %s", s.LocalAddr(), pc.LocalAddr())
		}
	}
	// Another socket without SO_REUSEPORT still cannot take the port.
	if other, err := net.ListenPacket("udp", pc.LocalAddr().String()); err == nil {
		_ = other.Close()
		t.Fatal("a socket without SO_REUSEPORT bound the port too")
	}
	if _, err := siblings(struct{ net.PacketConn }{pc}, 1); !errors.Is(err, errReusePort) {
		t.Fatalf("wrapped socket: %v, want errReusePort", err)
	}
}
