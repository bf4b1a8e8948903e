package superpeer

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/superpeer/edge"
)

// buildEdge binds the SIP sockets not passed in and builds the edge. cert
// is the node's certificate, used for SIPS unless the operator gave one.
func (n *Node) buildEdge(cert tls.Certificate, advertised string) error {
	cfg := &n.cfg
	udp, tcp, err := listenPair(cfg.Bind, cfg.SIPPort, cfg.SIPUDP, cfg.SIPTCP)
	if err != nil {
		closeSIP(cfg)
		return err
	}
	cfg.SIPUDP, cfg.SIPTCP = udp, tcp
	if cfg.SIPTLS == nil {
		l, err := net.Listen("tcp", net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.SIPSPort)))
		if err != nil {
			closeSIP(cfg)
			return fmt.Errorf("sip tls listener: %w", err)
		}
		cfg.SIPTLS = l
	}
	if cfg.SIPSCertFile != "" {
		if cert, err = tls.LoadX509KeyPair(cfg.SIPSCertFile, cfg.SIPSKeyFile); err != nil {
			closeSIP(cfg)
			return fmt.Errorf("sips certificate: %w", err)
		}
	}
	_, port, _ := net.SplitHostPort(udp.LocalAddr().String())
	_, sport, _ := net.SplitHostPort(cfg.SIPTLS.Addr().String())
	n.sipAddr = net.JoinHostPort(cfg.Advertise, port)
	n.sipsAddr = net.JoinHostPort(cfg.Advertise, sport)
	p, _ := strconv.Atoi(port)
	foreign, _ := strconv.Atoi(cfg.ForeignDomain)
	n.edge, err = edge.New(edge.Config{
		Self: n.id, Overlay: cfg.Overlay, Secret: cfg.Secret, SPAddr: advertised,
		Host: cfg.Advertise, Port: p,
		UDP: udp, TCP: tcp,
		TLS:   tls.NewListener(cfg.SIPTLS, &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}),
		Store: n.store, Router: n.router,
		MaxInFlight: cfg.EdgeMaxInFlight, MaxWaiting: cfg.EdgeMaxWaiting, ForeignDomain: foreign, MinExpires: cfg.EdgeMinExpires,
		MaxConns: cfg.EdgeMaxConns, MaxConnsPerIP: cfg.EdgeMaxConnsPerIP, ConnSilence: cfg.EdgeConnSilence,
		Log: n.log,
	})
	if err != nil {
		return err
	}
	n.reg.MustRegister(n.edge.Collector())
	return nil
}

// listenPair returns a UDP socket and a TCP listener on one port (the SIP
// edge's, the STUN/TURN server's): the given ones, or bound on bind:port (port 0: a free port
// that both transports get).
func listenPair(bind string, port int, udp net.PacketConn, tcp net.Listener) (net.PacketConn, net.Listener, error) {
	switch {
	case udp != nil && tcp != nil:
		return udp, tcp, nil
	case udp != nil || tcp != nil:
		return nil, nil, errors.New("sip: give both SIPUDP and SIPTCP, or neither")
	}
	var lastErr error
	for range 20 {
		u, err := net.ListenPacket("udp", net.JoinHostPort(bind, strconv.Itoa(port)))
		if err != nil {
			return nil, nil, fmt.Errorf("udp: %w", err)
		}
		t, err := net.Listen("tcp", u.LocalAddr().String())
		if err == nil {
			return u, t, nil
		}
		u.Close()
		lastErr = err
		if port != 0 {
			break
		}
	}
	return nil, nil, fmt.Errorf("tcp: %w", lastErr)
}

func closeSIP(cfg *Config) {
	if cfg.SIPUDP != nil {
		cfg.SIPUDP.Close()
	}
	if cfg.TURNUDP != nil {
		cfg.TURNUDP.Close()
	}
	for _, l := range []net.Listener{cfg.SIPTCP, cfg.SIPTLS, cfg.TURNTCP} {
		if l != nil {
			l.Close()
		}
	}
}

// edgeFrame is route.Config.Local: tunnel frames for this super peer
// itself go to its SIP edge.
func (n *Node) edgeFrame(f *wire.Frame) { n.edge.Deliver(f) }

// SIPAddr is the SIP edge's UDP and TCP address (advertised IP).
func (n *Node) SIPAddr() string { return n.sipAddr }

// SIPSAddr is the SIP edge's TLS address (advertised IP).
func (n *Node) SIPSAddr() string { return n.sipsAddr }

// Edge is the node's SIP edge (tests, status).
func (n *Node) Edge() *edge.Edge { return n.edge }
