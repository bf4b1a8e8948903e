package agent

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/p2psip/p2psip/ordinarypeer/nat"
	"github.com/p2psip/p2psip/ordinarypeer/uplink"
)

// natTimeout bounds one NAT discovery (two STUN exchanges with retries).
const natTimeout = 3 * time.Second

// hostNet is the real network for nat.Discover.
type hostNet struct{}

func (hostNet) ListenPacket(network, address string) (net.PacketConn, error) {
	return net.ListenPacket(network, address)
}

func (hostNet) ResolveUDPAddr(network, address string) (*net.UDPAddr, error) {
	return net.ResolveUDPAddr(network, address)
}

// natState is the last NAT discovery result.
type natState struct {
	mu     sync.Mutex // guards result and err
	result *nat.Result
	err    string
}

func (s *natState) set(r *nat.Result, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.result, s.err = r, ""
	if err != nil {
		s.err = err.Error()
	}
}

func (s *natState) get() (*nat.Result, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.result, s.err
}

// discoverNAT asks the super peer and one alternate for our reflexive
// address, from the interface the uplink uses (ARCHITECTURE.md §5 step
// 2): two answers tell endpoint-independent from symmetric mapping.
func (a *Agent) discoverNAT(ctx context.Context, att uplink.Attachment) *nat.Result {
	var servers []string
	if att.TURNAddr != "" {
		servers = append(servers, att.TURNAddr)
	}
	for _, alt := range att.Alternates {
		if alt.TURNAddr != "" && len(servers) < 2 {
			servers = append(servers, alt.TURNAddr)
		}
	}
	if len(servers) == 0 {
		return nil
	}
	local := "0.0.0.0:0"
	if host, _, err := net.SplitHostPort(att.LocalAddr); err == nil {
		local = net.JoinHostPort(host, "0")
	}
	ctx, cancel := context.WithTimeout(ctx, natTimeout)
	defer cancel()
	res, err := nat.Discover(ctx, hostNet{}, local, servers, a.log)
	if err != nil {
		a.nat.set(nil, err)
		a.log.Warn().Err(err).Strs("servers", servers).Msg("NAT discovery failed")
		return nil
	}
	a.nat.set(&res, nil)
	a.log.Info().Str("reflexive", res.Reflexive).Bool("behind_nat", res.Behind).Str("mapping", res.Mapping.String()).Msg("NAT discovered")
	return &res
}
