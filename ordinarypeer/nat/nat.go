// Package nat discovers an ordinary peer's NAT situation (ARCHITECTURE.md
// §5 step 2): from one local UDP socket it sends STUN Binding requests
// (pion/stun) to the STUN services of one or two super peers and compares
// the reflexive addresses they report with the local address and with
// each other.
//
//   - Behind: the reflexive address differs from the local one, so a NAT
//     is in the way (local == reflexive means a publicly reachable host,
//     a candidate for promotion).
//   - Mapping: the same reflexive address towards two servers means the
//     NAT maps endpoint-independently (RFC 4787 §4.1: "cone" NATs); a
//     different one means endpoint-(address-)dependent mapping, the
//     "symmetric" NAT that only a TURN relay gets through. With one
//     answering server it is Unknown.
//
// Only mapping is classified: filtering (RFC 5780 §4.4) needs CHANGE-REQUEST,
// which super peers (pion/turn) do not answer. Put the two servers on
// different IP addresses: a NAT whose mapping depends on the address only
// looks endpoint-independent to two ports of one IP.
package nat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/pion/stun"
	"github.com/pion/transport/v2"
	"github.com/rs/zerolog"
)

// Net is what Discover needs from the network: pion's transport stdnet
// (real sockets; stdnet.NewNet()) and vnet (*vnet.Net, simulated NATs)
// both satisfy it. If it also has Interfaces(), as both do, a socket bound
// to a wildcard address is compared by its interface addresses.
type Net interface {
	ListenPacket(network, address string) (net.PacketConn, error)
	ResolveUDPAddr(network, address string) (*net.UDPAddr, error)
}

// interfacer is the optional part of Net.
type interfacer interface {
	Interfaces() ([]*transport.Interface, error)
}

// Mapping is a NAT's mapping behaviour as far as two servers can tell.
type Mapping int

const (
	// Unknown: fewer than two servers answered.
	Unknown Mapping = iota
	// EndpointIndependent: both servers saw the same reflexive address
	// (also the answer for a host without NAT).
	EndpointIndependent
	// EndpointDependent: the servers saw different reflexive addresses
	// (address- or address-and-port-dependent mapping: a symmetric NAT).
	EndpointDependent
)

func (m Mapping) String() string {
	switch m {
	case EndpointIndependent:
		return "endpoint-independent"
	case EndpointDependent:
		return "endpoint-dependent"
	}
	return "unknown"
}

// MarshalText makes a Mapping read well in JSON status and peer records.
func (m Mapping) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// Result is what Discover found. Addresses are "ip:port".
type Result struct {
	// Local is the socket's local address. For a socket bound to a
	// wildcard address it is the interface address matching Reflexive,
	// or else the first non-loopback IPv4 interface address (what the OS
	// most likely sent from), with the socket's port.
	Local string `json:"local"`
	// Reflexive is the address the first answering server (in the order
	// given) saw; Reflexive2 the one the next answering server saw, or
	// "" if only one answered.
	Reflexive  string `json:"reflexive"`
	Reflexive2 string `json:"reflexive2,omitempty"`
	// Mapping compares Reflexive and Reflexive2.
	Mapping Mapping `json:"mapping"`
	// Behind reports Reflexive != Local: there is a NAT.
	Behind bool `json:"behind_nat"`
}

// Retransmission schedule (RFC 5389 §7.2.1, with a shorter first RTO and
// a cap, as LAN-to-super-peer round trips are short): a request is sent
// up to maxSends times, waiting rto, 2·rto, ... (at most maxRTO) between
// them and maxRTO after the last; about 9.75 s in all unless ctx ends
// first.
const (
	initialRTO = 250 * time.Millisecond
	maxRTO     = 2 * time.Second
	maxSends   = 7
	// maxServers bounds the servers queried from one socket.
	maxServers = 4
)

var (
	// ErrNoServers: Discover was given no STUN server it could resolve.
	ErrNoServers = errors.New("no STUN server")
	// ErrNoAnswer: no server answered in time.
	ErrNoAnswer = errors.New("no STUN server answered")
	// errTimeout: one server did not answer after every retransmission.
	errTimeout = errors.New("no answer after retransmissions")
)

// probe is one server's Binding transaction.
type probe struct {
	name   string // as given
	server *net.UDPAddr
	req    *stun.Message
	sends  int
	next   time.Time    // when to (re)send or give up
	mapped *net.UDPAddr // the answer
	err    error        // or why there is none
}

func (p *probe) finished() bool { return p.mapped != nil || p.err != nil }

// Discover binds one UDP socket on local (e.g. "0.0.0.0:0") through n,
// sends STUN Binding requests from it to every server (host:port; at most
// four, normally two super peers' STUN addresses), retransmitting until
// each answers, gives up, or ctx ends, and classifies what they saw.
// It succeeds if at least one server answered; servers that did not are
// logged and leave the Mapping Unknown if fewer than two remain. The
// socket is closed before Discover returns.
func Discover(ctx context.Context, n Net, local string, servers []string, log zerolog.Logger) (Result, error) {
	log = log.With().Str("component", "nat").Logger()
	probes := resolve(n, servers, log)
	if len(probes) == 0 {
		return Result{}, fmt.Errorf("nat discovery: %w (given %q)", ErrNoServers, servers)
	}
	conn, err := n.ListenPacket("udp4", local)
	if err != nil {
		return Result{}, fmt.Errorf("nat discovery: listen %s: %w", local, err)
	}
	la, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok {
		_ = conn.Close()
		return Result{}, fmt.Errorf("nat discovery: local address %v is not UDP", conn.LocalAddr())
	}
	exchange(ctx, conn, probes, log) // closes conn

	var answered []*probe
	var errs []error
	for _, p := range probes {
		if p.mapped != nil {
			answered = append(answered, p)
			continue
		}
		errs = append(errs, fmt.Errorf("%s: %w", p.name, p.err))
		log.Warn().Str("server", p.name).Err(p.err).Msg("stun server did not answer")
	}
	if len(answered) == 0 {
		return Result{}, fmt.Errorf("nat discovery from %s: %w: %w", la, ErrNoAnswer, errors.Join(errs...))
	}
	res := classify(la, localIPs(n, la), answered)
	log.Info().Str("local", res.Local).Str("reflexive", res.Reflexive).Str("reflexive2", res.Reflexive2).
		Stringer("mapping", res.Mapping).Bool("behind_nat", res.Behind).Msg("nat discovered")
	return res, nil
}

// resolve turns servers into probes, skipping (and logging) those that do
// not resolve and duplicates.
func resolve(n Net, servers []string, log zerolog.Logger) []*probe {
	var probes []*probe
	for i, s := range servers {
		if len(probes) == maxServers {
			log.Warn().Strs("ignored", servers[i:]).Msg("too many stun servers")
			break
		}
		ua, err := n.ResolveUDPAddr("udp4", s)
		if err != nil {
			log.Warn().Str("server", s).Err(err).Msg("stun server not resolved")
			continue
		}
		if slices.ContainsFunc(probes, func(p *probe) bool { return p.server.String() == ua.String() }) {
			continue
		}
		probes = append(probes, &probe{
			name:   s,
			server: ua,
			req:    stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint),
		})
	}
	return probes
}

// classify builds the Result from the answers, in server order.
func classify(la *net.UDPAddr, ips []net.IP, answered []*probe) Result {
	r1 := answered[0].mapped
	res := Result{Reflexive: r1.String(), Mapping: Unknown}
	if len(answered) > 1 {
		r2 := answered[1].mapped
		res.Reflexive2 = r2.String()
		if r1.IP.Equal(r2.IP) && r1.Port == r2.Port {
			res.Mapping = EndpointIndependent
		} else {
			res.Mapping = EndpointDependent
		}
	}
	local := &net.UDPAddr{IP: la.IP, Port: la.Port}
	if la.IP.IsUnspecified() {
		switch {
		case slices.ContainsFunc(ips, r1.IP.Equal):
			local.IP = r1.IP
		case len(ips) > 0:
			local.IP = ips[0]
		}
	}
	res.Local = local.String()
	res.Behind = !(local.IP.Equal(r1.IP) && local.Port == r1.Port)
	return res
}

// localIPs lists the IPv4 addresses of n's interfaces, non-loopback ones
// first, when la is a wildcard and n can tell.
func localIPs(n Net, la *net.UDPAddr) []net.IP {
	ifs, ok := n.(interfacer)
	if !la.IP.IsUnspecified() || !ok {
		return nil
	}
	list, err := ifs.Interfaces()
	if err != nil {
		return nil
	}
	var ips, loopback []net.IP
	for _, ifc := range list {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			var ip net.IP
			switch a := a.(type) {
			case *net.IPNet:
				ip = a.IP
			case *net.IPAddr:
				ip = a.IP
			}
			if ip = ip.To4(); ip == nil {
				continue
			}
			if ip.IsLoopback() {
				loopback = append(loopback, ip)
			} else {
				ips = append(ips, ip)
			}
		}
	}
	return append(ips, loopback...)
}
