package relay

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/pion/stun"
	"github.com/pion/turn/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/logx"
)

const testRealm = "example.net"

var testSecret = []byte("0123456789abcdef0123456789abcdef")

func testLogger(t testing.TB) zerolog.Logger {
	lvl := zerolog.InfoLevel
	if os.Getenv("RELAY_TEST_TRACE") != "" {
		lvl = zerolog.TraceLevel
	}
	return logx.ForTest(t, lvl)
}

// testServer is a running Server on 127.0.0.1 sockets.
type testServer struct {
	*Server
	udp *net.UDPAddr
	tcp *net.TCPAddr
	reg *prometheus.Registry
}

// startServer runs a Server with UDP and TCP on 127.0.0.1 ephemeral ports;
// mutate adjusts the config first. Cleanup stops it and checks that Run
// returned cleanly and left no allocation.
func startServer(t testing.TB, mutate func(*Config)) *testServer {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		_ = pc.Close()
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg := Config{
		Realm:      testRealm,
		Secret:     testSecret,
		PacketConn: pc,
		Listener:   ln,
		Registerer: reg,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg, testLogger(t))
	if err != nil {
		_ = pc.Close()
		_ = ln.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return")
		}
		if n := s.Allocations(); n != 0 {
			t.Errorf("allocations after Run: %d", n)
		}
	})
	return &testServer{Server: s, udp: pc.LocalAddr().(*net.UDPAddr), tcp: ln.Addr().(*net.TCPAddr), reg: reg}
}

func (ts *testServer) refused(reason string) float64 {
	return testutil.ToFloat64(ts.metrics.refused.WithLabelValues(reason))
}

func issue(t testing.TB, user string) auth.Credentials {
	t.Helper()
	c, err := auth.Issue(testSecret, user, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newClient is a pion TURN client on its own UDP socket (or, with tcp, its
// own TCP connection) to ts. Cleanup closes it and its socket.
func newClient(t testing.TB, ts *testServer, username, password string, tcp bool) *turn.Client {
	t.Helper()
	var conn net.PacketConn
	if tcp {
		c, err := net.Dial("tcp4", ts.tcp.String())
		if err != nil {
			t.Fatal(err)
		}
		conn = turn.NewSTUNConn(c)
	} else {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		conn = c
	}
	addr := ts.udp.String()
	if tcp {
		addr = ts.tcp.String()
	}
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: addr,
		TURNServerAddr: addr,
		Conn:           conn,
		Username:       username,
		Password:       password,
		Realm:          testRealm,
		LoggerFactory:  logx.Pion(testLogger(t)),
	})
	if err != nil {
		_ = conn.Close()
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		_ = conn.Close()
	})
	return c
}

// allocate allocates on c; cleanup closes the relay, which stops the
// client's refresh timers (closing the client does not).
func allocate(t testing.TB, c *turn.Client) (net.PacketConn, error) {
	relay, err := c.Allocate()
	if err == nil {
		t.Cleanup(func() { _ = relay.Close() })
	}
	return relay, err
}

// peer is a UDP socket on 127.0.0.1 that tests exchange relayed packets
// with.
func peer(t testing.TB) net.PacketConn {
	t.Helper()
	p, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// readWithin reads one datagram from pc within d, or reports none.
func readWithin(pc net.PacketConn, d time.Duration) ([]byte, net.Addr, error) {
	buf := make([]byte, 1600)
	if err := pc.SetReadDeadline(time.Now().Add(d)); err != nil {
		return nil, nil, err
	}
	defer func() { _ = pc.SetReadDeadline(time.Time{}) }()
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		return nil, nil, err
	}
	return buf[:n], from, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// rawClient speaks STUN by hand, to see exact error codes and to send
// what pion's client will not (a short LIFETIME, a wrong realm).
type rawClient struct {
	t      testing.TB
	conn   net.PacketConn
	server net.Addr
}

func newRawClient(t testing.TB, ts *testServer) *rawClient {
	t.Helper()
	return &rawClient{t: t, conn: peer(t), server: ts.udp}
}

// do sends a request built from setters and returns the response with its
// transaction ID.
func (r *rawClient) do(setters ...stun.Setter) *stun.Message {
	r.t.Helper()
	req, err := stun.Build(append([]stun.Setter{stun.TransactionID}, setters...)...)
	if err != nil {
		r.t.Fatal(err)
	}
	for attempt := 0; attempt < 5; attempt++ {
		if _, err := r.conn.WriteTo(req.Raw, r.server); err != nil {
			r.t.Fatal(err)
		}
		b, _, err := readWithin(r.conn, 500*time.Millisecond)
		if isTimeout(err) {
			continue
		}
		if err != nil {
			r.t.Fatal(err)
		}
		res := &stun.Message{Raw: b}
		if err := res.Decode(); err != nil {
			r.t.Fatalf("decode response: %v", err)
		}
		if res.TransactionID != req.TransactionID {
			continue
		}
		return res
	}
	r.t.Fatalf("no response to %s", req.Type)
	return nil
}

var requestUDP = stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}

// challenge sends an unauthenticated Allocate and returns the nonce and
// realm of the 401 it must get.
func (r *rawClient) challenge() (stun.Nonce, stun.Realm) {
	r.t.Helper()
	res := r.do(stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestUDP, stun.Fingerprint)
	if code := errorCode(res); code != stun.CodeUnauthorized {
		r.t.Fatalf("unauthenticated Allocate: got %v, want 401", code)
	}
	var nonce stun.Nonce
	var realm stun.Realm
	if err := nonce.GetFrom(res); err != nil {
		r.t.Fatalf("401 without NONCE: %v", err)
	}
	if err := realm.GetFrom(res); err != nil {
		r.t.Fatalf("401 without REALM: %v", err)
	}
	return nonce, realm
}

// allocate runs the long-term credential exchange for an Allocate (with
// extra attributes) and returns the final response.
func (r *rawClient) allocate(username, password, realm string, extra ...stun.Setter) *stun.Message {
	r.t.Helper()
	nonce, _ := r.challenge()
	setters := []stun.Setter{stun.NewType(stun.MethodAllocate, stun.ClassRequest), requestUDP}
	setters = append(setters, extra...)
	setters = append(setters, stun.NewUsername(username), stun.NewRealm(realm), nonce,
		stun.NewLongTermIntegrity(username, realm, password), stun.Fingerprint)
	return r.do(setters...)
}

// errorCode returns a response's error code, or 0 for a success.
func errorCode(m *stun.Message) stun.ErrorCode {
	if m.Type.Class != stun.ClassErrorResponse {
		return 0
	}
	var ec stun.ErrorCodeAttribute
	if err := ec.GetFrom(m); err != nil {
		return -1 // an error response without ERROR-CODE
	}
	return ec.Code
}
