package siproute

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"syscall"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// dialTimeout bounds sipgo's outbound TCP connects (its default is a
// minute, far longer than a SIP transaction).
const dialTimeout = 10 * time.Second

// newUA builds the UA the router owns. TCP and TLS get our dialer, which
// refuses the tunnel's fake prefix; sipgo would otherwise dial a fake
// address whenever a virtual connection vanished between our check and its
// lookup. Those two transports log through sipgo's default logger (their
// logger field is unexported); everything else logs through log.
func (r *Router) newUA(log *slog.Logger) (*sipgo.UserAgent, error) {
	tcp := &sip.TransportTCP{DialerCreate: guardedDialer}
	tls := &sip.TransportTLS{TransportTCP: &sip.TransportTCP{DialerCreate: guardedDialer}}
	ua, err := sipgo.NewUA(
		sipgo.WithUserAgent(r.cfg.UserAgent),
		sipgo.WithUserAgentHostname(r.cfg.Overlay),
		sipgo.WithUserAgentTransportLayerOptions(
			sip.WithTransportLayerLogger(log),
			sip.WithTransportLayerTransports(sip.TransportsConfig{TCP: tcp, TLS: tls}),
		),
		sipgo.WithUserAgentTransactionLayerOptions(
			sip.WithTransactionLayerLogger(log),
			sip.WithTransactionLayerUnhandledResponseHandler(r.onUnhandledResponse),
			// Not WithTransactionLayerTerminateOnConnClose: see peerBranches.
		),
	)
	if err != nil {
		return nil, fmt.Errorf("siproute: sip user agent: %w", err)
	}
	return ua, nil
}

// guardedDialer is sipgo's DialerCreate hook.
func guardedDialer(laddr net.Addr) net.Dialer {
	d := net.Dialer{Timeout: dialTimeout, ControlContext: refuseFake}
	if a, ok := laddr.(*net.TCPAddr); ok && a != nil {
		d.LocalAddr = a
	}
	return d
}

// refuseFake runs after the socket exists and before connect, so a refused
// address never sees a packet.
func refuseFake(_ context.Context, _, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	if isFake(host) {
		return fmt.Errorf("dial %s: %w", address, errFakeAddr)
	}
	return nil
}
