// Package promote is the super peer's side of promotion (ARCHITECTURE.md
// §5.6): an agent started with --role auto asks its super peer to become
// one; the super peer applies the overlay's policy (operator switch,
// minimum uptime, ratio of ordinary peers per super peer), checks the
// node's addresses (no NAT: reflexive = local = the session's source =
// the advertised IP), and has another super peer dial back the advertised
// peer-protocol address, which must answer with the asking node's
// Peer-ID. Then it grants the node what joining the mesh takes.
//
// The grant holds the overlay secret. A super peer cannot do without it:
// it verifies credentials (HMAC), signs its node certificate with the
// overlay CA derived from it, proves itself to the mesh and keys the
// gossip. Promotion therefore trusts the promoted endpoint as much as an
// operator's own server, which is why it is off by default and carrier
// deployments keep it off.
package promote

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/superpeer/mesh"
	"github.com/p2psip/p2psip/superpeer/session"
)

// Links reaches other super peers (superpeer/peers).
type Links interface {
	Request(ctx context.Context, to ids.PeerID, t wire.Type, body any) (*wire.Frame, error)
}

// Config configures the promoter. Zero values mean defaults.
type Config struct {
	Self    ids.PeerID
	Overlay string
	Policy  Policy
	// Secret is the overlay secret handed to promoted nodes.
	Secret []byte
	// Replicas and WriteQuorum are the mesh's, handed on too.
	Replicas, WriteQuorum int
	// Members returns the current mesh view (required).
	Members func() []mesh.Member
	// Links asks another super peer for the dial-back test (required).
	Links Links
	// Cert is presented when this super peer dials back.
	Cert *tls.Certificate
	// DialTimeout bounds one dial-back test (default 10s).
	DialTimeout time.Duration
	Registerer  prometheus.Registerer
}

// Promoter serves Promote and DialBack; it implements session.Promoter.
type Promoter struct {
	cfg      Config
	log      zerolog.Logger
	outcomes *prometheus.CounterVec
}

// New validates cfg.
func New(cfg Config, log zerolog.Logger) (*Promoter, error) {
	if cfg.Members == nil || cfg.Links == nil {
		return nil, errors.New("promote: Members and Links are required")
	}
	switch cfg.Policy.Mode {
	case "":
		cfg.Policy.Mode = ModeOff
	case ModeOff, ModeAuto:
	default:
		return nil, fmt.Errorf("promote: mode %q: want off or auto", cfg.Policy.Mode)
	}
	if cfg.Policy.MinUptime < 0 || cfg.Policy.Ratio < 0 {
		return nil, errors.New("promote: minimum uptime and ratio must not be negative")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = probeDeadline
	}
	p := &Promoter{cfg: cfg, log: logx.Component(log, "promote"),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "p2psip", Subsystem: "promotion", Name: "requests_total",
			Help: "Promotion requests answered, by outcome (granted, off, policy, address, dialback).",
		}, []string{"outcome"})}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(p.outcomes)
	}
	return p, nil
}

// Promote decides on an attached agent's request.
func (p *Promoter) Promote(ctx context.Context, peer session.Peer, req *wire.PromoteReq) (*wire.PromoteResp, error) {
	start := time.Now()
	log := p.log.With().Str("peer_id", peer.ID.Short()).Str("user", peer.User).Str("remote_addr", peer.Remote).Str("advertised", req.PeerAddr).Logger()
	refuse := func(outcome, reason string, retry time.Duration) (*wire.PromoteResp, error) {
		p.outcomes.WithLabelValues(outcome).Inc()
		log.Info().Str("reason", reason).Dur("took", time.Since(start)).Msg("promotion refused")
		return &wire.PromoteResp{Reason: reason, RetryAfterS: uint32(retry / time.Second)}, nil
	}
	if p.cfg.Policy.Mode != ModeAuto {
		reason, retry := p.cfg.Policy.Decide(Input{})
		return refuse("off", reason, retry)
	}
	if err := CheckAddrs(req, peer.Remote); err != nil {
		return refuse("address", err.Error(), retryAddress)
	}
	members := p.cfg.Members()
	in := Input{Uptime: time.Duration(req.UptimeS) * time.Second, SuperPeers: len(members)}
	for _, m := range members {
		in.Attached += int(m.Load)
		if m.PeerAddr == req.PeerAddr {
			return refuse("address", fmt.Sprintf("advertised address %s is super peer %s's", req.PeerAddr, m.PeerID.Short()), retryAddress)
		}
	}
	if reason, retry := p.cfg.Policy.Decide(in); reason != "" {
		return refuse("policy", reason, retry)
	}
	tester, err := p.dialBack(ctx, peer.ID, req.PeerAddr, members)
	if err != nil {
		return refuse("dialback", "dial-back: "+err.Error(), retryDialBack)
	}
	grant := &wire.PromoteGrant{
		Secret: p.cfg.Secret, Replicas: p.cfg.Replicas, WriteQuorum: p.cfg.WriteQuorum,
		Promotion: p.cfg.Policy.Mode, MinUptimeS: uint32(p.cfg.Policy.MinUptime / time.Second), Ratio: p.cfg.Policy.Ratio,
	}
	for _, m := range members {
		if m.Gossip != "" {
			grant.Join = append(grant.Join, m.Gossip)
		}
		grant.Members = append(grant.Members, wire.SuperPeerInfo{PeerID: m.PeerID, PeerAddr: m.PeerAddr, Load: m.Load, Capacity: m.Capacity, TURNAddr: m.TURNAddr})
	}
	if len(grant.Join) == 0 {
		return refuse("policy", "no mesh members to join yet", time.Minute)
	}
	p.outcomes.WithLabelValues("granted").Inc()
	log.Info().Str("tester", tester.Short()).Dur("took", time.Since(start)).Msg("promotion granted")
	return &wire.PromoteResp{Promote: true, Grant: grant}, nil
}

// dialBack has another super peer test the node, or tests it here when
// this super peer is alone (or the other does not answer). It returns the
// tester and nil, or the verdict's reason.
func (p *Promoter) dialBack(ctx context.Context, node ids.PeerID, addr string, members []mesh.Member) (ids.PeerID, error) {
	var others []ids.PeerID
	for _, m := range members {
		if m.PeerID != p.cfg.Self {
			others = append(others, m.PeerID)
		}
	}
	if len(others) > 0 {
		// A random other member spreads the tests; testing from a second
		// vantage point is the point (ARCHITECTURE.md §5.6).
		tester := others[rand.IntN(len(others))]
		tctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout+5*time.Second)
		f, err := p.cfg.Links.Request(tctx, tester, wire.TypeDialBack, &wire.DialBackReq{PeerID: node, Addr: addr})
		cancel()
		var resp wire.DialBackResp
		if err == nil {
			err = wire.Unmarshal(f.Body, &resp)
		}
		if err == nil {
			if !resp.OK {
				return tester, fmt.Errorf("from %s: %s", tester.Short(), resp.Reason)
			}
			return tester, nil
		}
		p.log.Warn().Err(err).Str("sp_id", tester.Short()).Msg("dial-back test by another super peer failed to run; testing from here")
	} else {
		p.log.Info().Str("peer_id", node.Short()).Msg("no other super peer in the mesh; dial-back test from this one")
	}
	pctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	return p.cfg.Self, Probe(pctx, addr, node, p.cfg.Overlay, p.cfg.Cert)
}

// DialBack runs the test another super peer asked for.
func (p *Promoter) DialBack(ctx context.Context, req *wire.DialBackReq) (*wire.DialBackResp, error) {
	if _, _, err := net.SplitHostPort(req.Addr); err != nil || req.PeerID.IsZero() {
		return nil, wire.Errorf(wire.CodeBadRequest, "dialback: want a Peer-ID and host:port, got %q", req.Addr)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	err := Probe(ctx, req.Addr, req.PeerID, p.cfg.Overlay, p.cfg.Cert)
	resp := &wire.DialBackResp{OK: err == nil, TookMS: uint32(time.Since(start) / time.Millisecond)}
	if err != nil {
		resp.Reason = err.Error()
	}
	p.log.Info().Str("peer_id", req.PeerID.Short()).Str("addr", req.Addr).Bool("ok", resp.OK).Str("reason", resp.Reason).Msg("dial-back test")
	return resp, nil
}
