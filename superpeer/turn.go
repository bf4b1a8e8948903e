package superpeer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/superpeer/relay"
	"github.com/p2psip/p2psip/superpeer/store"
)

// serviceTTL is how long a published service entry lives; it is
// re-published every third of that, so a dead super peer's entry is gone
// within a minute.
const serviceTTL = 60 * time.Second

// buildRelay binds the STUN/TURN sockets (UDP and TCP on one port) and
// builds the relay server.
func (n *Node) buildRelay() error {
	cfg := &n.cfg
	udp, tcp, err := listenPair(cfg.Bind, cfg.TURNPort, cfg.TURNUDP, cfg.TURNTCP)
	if err != nil {
		return err
	}
	cfg.TURNUDP, cfg.TURNTCP = udp, tcp
	_, port, _ := net.SplitHostPort(udp.LocalAddr().String())
	n.turnAddr = net.JoinHostPort(cfg.Advertise, port)
	// Never relay to our own service ports (no SSRF through the relay).
	var deny []int
	for _, p := range []int{cfg.PeerPort, cfg.GossipPort, cfg.SIPPort, cfg.SIPSPort} {
		if p > 0 {
			deny = append(deny, p)
		}
	}
	if ap, err := netip.ParseAddrPort(n.PeerAddr()); err == nil {
		deny = append(deny, int(ap.Port()))
	}
	if _, p, err := net.SplitHostPort(cfg.Admin); err == nil {
		if pn, err := strconv.Atoi(p); err == nil {
			deny = append(deny, pn)
		}
	}
	n.relay, err = relay.New(relay.Config{
		Realm: cfg.Overlay, Secret: cfg.Secret, PacketConn: udp, Listener: tcp,
		RelayIP: net.ParseIP(cfg.Advertise), RelayBind: cfg.Bind,
		MinPort: cfg.RelayMinPort, MaxPort: cfg.RelayMaxPort,
		MaxAllocations: cfg.TURNMaxAllocations, MaxPerUser: cfg.TURNMaxPerUser,
		AllowLoopback: cfg.TURNAllowLoopback, DenyPorts: deny, Registerer: n.reg,
	}, n.log)
	if err != nil {
		udp.Close()
		tcp.Close()
	}
	return err
}

// TURNAddr is the advertised STUN/TURN address.
func (n *Node) TURNAddr() string { return n.turnAddr }

// publishServices keeps this super peer's stun and turn service records
// fresh, with its current relay load, until ctx ends (ARCHITECTURE.md §7:
// `p2psip service find turn` lists them).
func (n *Node) publishServices(ctx context.Context) error {
	select {
	case <-n.ready:
	case <-ctx.Done():
		return nil
	}
	t := time.NewTicker(serviceTTL / 3)
	defer t.Stop()
	for {
		for _, name := range services {
			if n.leaving.Load() {
				break
			}
			if err := n.publish(ctx, name); err != nil && ctx.Err() == nil {
				n.log.Warn().Err(err).Str("service", name).Msg("publish service record")
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// services are the service records a super peer publishes.
var services = []string{"stun", "turn"}

// withdrawServices removes this super peer's entries from its service
// records (Leave): otherwise a departed super peer stays in `service find`
// for up to serviceTTL. A publish already under way may put one back; it
// expires within serviceTTL.
func (n *Node) withdrawServices(ctx context.Context) error {
	var errs []error
	for _, name := range services {
		if _, err := n.store.Remove(ctx, store.Writer{PeerID: n.id, SuperPeer: true}, record.KindService, name, []string{n.id.String()}); err != nil &&
			!errors.Is(err, store.ErrNotFound) {
			errs = append(errs, fmt.Errorf("withdraw service %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func (n *Node) publish(ctx context.Context, name string) error {
	now := time.Now()
	capacity := n.cfg.TURNMaxAllocations
	if capacity <= 0 {
		capacity = 10000
	}
	rec := &record.Record{Kind: record.KindService, Name: name, Entries: []record.Entry{{
		Key: n.id.String(), Version: uint64(now.UnixNano()), Expires: now.Add(serviceTTL).Unix(),
		Provider: &record.Provider{PeerID: n.id, Addrs: []string{"udp:" + n.turnAddr, "tcp:" + n.turnAddr},
			Capacity: uint32(capacity), Load: uint32(n.relay.Allocations())},
	}}}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := n.store.Put(pctx, store.Writer{PeerID: n.id, SuperPeer: true}, rec)
	return err
}
