package nat

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/transport/v2/stdnet"
	"github.com/pion/transport/v2/vnet"
	"github.com/pion/turn/v2"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/logx"
)

// The topology of STYLE.md B8: a WAN router (0.0.0.0/0) with two super
// peers' STUN services on 1.2.3.4 and 1.2.3.5 (pion turn.Servers on vnet
// sockets) and, where a test asks for one, a LAN 192.168.0.0/24 behind a
// NAT whose external address is 5.6.7.8.
const (
	stunA = "1.2.3.4:3478"
	stunB = "1.2.3.5:3478"
	natIP = "5.6.7.8"
)

func testLogger(t testing.TB) zerolog.Logger {
	return logx.ForTest(t, zerolog.DebugLevel)
}

// world is the WAN router with a STUN server on each of its ips, started
// once lan (if not nil) is attached. Cleanup stops it all.
type world struct {
	wan *vnet.Router
}

func newWorld(t *testing.T, lan *vnet.Router, ips ...string) *world {
	t.Helper()
	lf := logx.Pion(testLogger(t).Level(zerolog.WarnLevel))
	wan, err := vnet.NewRouter(&vnet.RouterConfig{CIDR: "0.0.0.0/0", LoggerFactory: lf})
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range ips {
		n, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{ip}})
		if err != nil {
			t.Fatal(err)
		}
		if err := wan.AddNet(n); err != nil {
			t.Fatal(err)
		}
		pc, err := n.ListenPacket("udp4", ip+":3478")
		if err != nil {
			t.Fatal(err)
		}
		srv, err := turn.NewServer(turn.ServerConfig{
			Realm:         "example.net",
			LoggerFactory: lf,
			PacketConnConfigs: []turn.PacketConnConfig{{
				PacketConn:            pc,
				RelayAddressGenerator: &turn.RelayAddressGeneratorNone{Address: ip, Net: n},
			}},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Close() })
	}
	if lan != nil {
		if err := wan.AddRouter(lan); err != nil {
			t.Fatal(err)
		}
	}
	if err := wan.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wan.Stop() })
	return &world{wan: wan}
}

// natted returns a host on a LAN behind a NAT with the given mapping
// behaviour (filtering is port-restricted, as most home NATs), and the LAN
// router to attach to the world.
func natted(t *testing.T, mapping vnet.EndpointDependencyType) (*vnet.Net, *vnet.Router) {
	t.Helper()
	lan, err := vnet.NewRouter(&vnet.RouterConfig{
		StaticIPs: []string{natIP},
		CIDR:      "192.168.0.0/24",
		NATType: &vnet.NATType{
			MappingBehavior:   mapping,
			FilteringBehavior: vnet.EndpointAddrPortDependent,
		},
		LoggerFactory: logx.Pion(testLogger(t).Level(zerolog.WarnLevel)),
	})
	if err != nil {
		t.Fatal(err)
	}
	host, err := vnet.NewNet(&vnet.NetConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := lan.AddNet(host); err != nil {
		t.Fatal(err)
	}
	return host, lan
}

// public returns a host for the WAN at ip (attach it with wan.AddNet).
func public(t *testing.T, ip string) *vnet.Net {
	t.Helper()
	n, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{ip}})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func discover(t *testing.T, n Net, local string, timeout time.Duration, servers ...string) (Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return Discover(ctx, n, local, servers, testLogger(t))
}

func TestEndpointIndependentNAT(t *testing.T) {
	host, lan := natted(t, vnet.EndpointIndependent)
	newWorld(t, lan, "1.2.3.4", "1.2.3.5")
	for _, local := range []string{"0.0.0.0:0", "192.168.0.1:0"} {
		t.Run(local, func(t *testing.T) {
			res, err := discover(t, host, local, 5*time.Second, stunA, stunB)
			if err != nil {
				t.Fatal(err)
			}
			if res.Mapping != EndpointIndependent || !res.Behind {
				t.Fatalf("%+v: want endpoint-independent, behind", res)
			}
			if res.Reflexive != res.Reflexive2 || !strings.HasPrefix(res.Reflexive, natIP+":") {
				t.Fatalf("reflexive %s / %s, want the same %s address", res.Reflexive, res.Reflexive2, natIP)
			}
			if !strings.HasPrefix(res.Local, "192.168.0.") {
				t.Fatalf("local %s, want the LAN address", res.Local)
			}
		})
	}
}

func TestSymmetricNAT(t *testing.T) {
	for name, mapping := range map[string]vnet.EndpointDependencyType{
		"address and port dependent": vnet.EndpointAddrPortDependent,
		"address dependent":          vnet.EndpointAddrDependent,
	} {
		t.Run(name, func(t *testing.T) {
			host, lan := natted(t, mapping)
			newWorld(t, lan, "1.2.3.4", "1.2.3.5")
			res, err := discover(t, host, "0.0.0.0:0", 5*time.Second, stunA, stunB)
			if err != nil {
				t.Fatal(err)
			}
			if res.Mapping != EndpointDependent || !res.Behind {
				t.Fatalf("%+v: want endpoint-dependent, behind", res)
			}
			if res.Reflexive == res.Reflexive2 || res.Reflexive2 == "" {
				t.Fatalf("reflexive %s / %s: want two different mappings", res.Reflexive, res.Reflexive2)
			}
		})
	}
}

func TestPublicHost(t *testing.T) {
	host := public(t, "1.2.3.6")
	w := newWorld(t, nil, "1.2.3.4", "1.2.3.5")
	if err := w.wan.AddNet(host); err != nil {
		t.Fatal(err)
	}
	for _, local := range []string{"0.0.0.0:0", "1.2.3.6:0", "1.2.3.6:5060"} {
		t.Run(local, func(t *testing.T) {
			res, err := discover(t, host, local, 5*time.Second, stunA, stunB)
			if err != nil {
				t.Fatal(err)
			}
			if res.Behind || res.Mapping != EndpointIndependent || res.Local != res.Reflexive ||
				!strings.HasPrefix(res.Local, "1.2.3.6:") {
				t.Fatalf("%+v: want not behind, local == reflexive on 1.2.3.6", res)
			}
		})
	}
}

func TestOneServer(t *testing.T) {
	host, lan := natted(t, vnet.EndpointIndependent)
	newWorld(t, lan, "1.2.3.4", "1.2.3.5")
	t.Run("only one given", func(t *testing.T) {
		res, err := discover(t, host, "0.0.0.0:0", 5*time.Second, stunA)
		if err != nil {
			t.Fatal(err)
		}
		if res.Mapping != Unknown || !res.Behind || res.Reflexive2 != "" {
			t.Fatalf("%+v: want unknown mapping, behind", res)
		}
	})
	t.Run("other unreachable", func(t *testing.T) {
		start := time.Now()
		res, err := discover(t, host, "0.0.0.0:0", time.Second, stunA, "1.2.3.9:3478")
		if err != nil {
			t.Fatal(err)
		}
		if res.Mapping != Unknown || !strings.HasPrefix(res.Reflexive, natIP+":") || res.Reflexive2 != "" {
			t.Fatalf("%+v: want the reachable server's answer, unknown mapping", res)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("took %v despite a 1 s context", d)
		}
	})
	t.Run("none reachable", func(t *testing.T) {
		_, err := discover(t, host, "0.0.0.0:0", 700*time.Millisecond, "1.2.3.8:3478", "1.2.3.9:3478")
		if !errors.Is(err, ErrNoAnswer) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want ErrNoAnswer and the deadline", err)
		}
	})
	t.Run("unresolvable", func(t *testing.T) {
		res, err := discover(t, host, "0.0.0.0:0", 5*time.Second, "no-such-host.invalid:3478", stunA)
		if err != nil || res.Reflexive == "" {
			t.Fatalf("%+v, %v: want the resolvable server's answer", res, err)
		}
		if _, err := discover(t, host, "0.0.0.0:0", time.Second); !errors.Is(err, ErrNoServers) {
			t.Fatalf("no servers: %v", err)
		}
	})
}

// TestRetransmission drops the first requests on the WAN and still gets
// an answer; a server that never answers is given up after maxSends
// requests.
func TestRetransmission(t *testing.T) {
	host, lan := natted(t, vnet.EndpointIndependent)
	w := newWorld(t, lan, "1.2.3.4", "1.2.3.5")
	var toA, dropped atomic.Int32
	w.wan.AddChunkFilter(func(c vnet.Chunk) bool {
		if c.DestinationAddr().String() != stunA {
			return true
		}
		if toA.Add(1) <= 2 {
			dropped.Add(1)
			return false
		}
		return true
	})
	res, err := discover(t, host, "0.0.0.0:0", 5*time.Second, stunA, stunB)
	if err != nil {
		t.Fatal(err)
	}
	if dropped.Load() != 2 || toA.Load() < 3 || res.Mapping != EndpointIndependent {
		t.Fatalf("%+v after %d requests to A (%d dropped)", res, toA.Load(), dropped.Load())
	}
}

// TestStdnet runs Discover over real loopback sockets through pion's
// stdnet, with a STUN server on 127.0.0.1: no NAT.
func TestStdnet(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm: "example.net", LoggerFactory: logx.Pion(testLogger(t).Level(zerolog.WarnLevel)),
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn:            pc,
			RelayAddressGenerator: &turn.RelayAddressGeneratorNone{Address: "127.0.0.1"},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Close() }()
	n, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	res, err := discover(t, n, "127.0.0.1:0", 5*time.Second, pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	if res.Behind || res.Local != res.Reflexive || res.Mapping != Unknown {
		t.Fatalf("%+v: want not behind, unknown mapping", res)
	}
}

func TestMappingText(t *testing.T) {
	for m, want := range map[Mapping]string{Unknown: "unknown", EndpointIndependent: "endpoint-independent", EndpointDependent: "endpoint-dependent"} {
		if b, _ := m.MarshalText(); string(b) != want || m.String() != want {
			t.Fatalf("%d: %s", m, b)
		}
	}
}
