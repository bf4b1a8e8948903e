package promote

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/wire"
)

// Probe is the dial-back test: it connects to addr over TCP, runs the peer
// protocol's TLS handshake and a Hello{RoleProbe}, and checks that the
// node answering there is want. TLS 1.3 makes the server sign the
// handshake with the key of its certificate, so a node cannot pass by
// pointing at a port someone else owns: that port answers with another
// Peer-ID, or not at all. cert, if non-nil, is presented (the node does
// not require it). It returns nil or the reason, bounded by ctx.
func Probe(ctx context.Context, addr string, want ids.PeerID, overlay string, cert *tls.Certificate) error {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("connect %s: %s", addr, short(err))
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl) //nolint:errcheck // a failed deadline shows as a failed read
	}
	// No chain to verify: before promotion the node has only its
	// self-signed identity certificate. Its key is what is checked.
	tc := tls.Client(nc, auth.ClientTLSConfig(cert, nil, ""))
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("tls at %s: %s", addr, short(err))
	}
	got, err := auth.PeerIDFromState(tc.ConnectionState())
	if err != nil {
		return fmt.Errorf("tls at %s: %w", addr, err)
	}
	if got != want {
		return fmt.Errorf("%s answers as Peer-ID %s, not %s", addr, got.Short(), want.Short())
	}
	body, err := wire.Marshal(&wire.Hello{Role: wire.RoleProbe, Overlay: overlay})
	if err != nil {
		return err
	}
	if err := wire.WriteFrame(tc, &wire.Frame{Header: wire.Header{Type: wire.TypeHello, TxID: 1}, Body: body}); err != nil {
		return fmt.Errorf("hello to %s: %s", addr, short(err))
	}
	f, err := wire.ReadFrame(tc, 64<<10)
	if err != nil {
		return fmt.Errorf("hello to %s: %s", addr, short(err))
	}
	if f.Type != wire.TypeHello || !f.IsResponse() || f.Flags&wire.FlagError != 0 {
		return fmt.Errorf("hello to %s: no HelloOK (got %s, flags %d)", addr, f.Type, f.Flags)
	}
	var ok wire.HelloOK
	if err := wire.Unmarshal(f.Body, &ok); err != nil {
		return fmt.Errorf("hello to %s: %w", addr, err)
	}
	if ok.PeerID != want || ok.Overlay != overlay {
		return fmt.Errorf("hello to %s: answered as %s of overlay %q", addr, ok.PeerID.Short(), ok.Overlay)
	}
	return nil
}

// short names the common network failures the way an operator reads them.
func short(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	return err.Error()
}

// probeDeadline is the default bound of one dial-back test: connect, TLS
// and Hello; well within the 30 s verdict.
const probeDeadline = 10 * time.Second
