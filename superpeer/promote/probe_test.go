package promote

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/wire"
)

// responder serves dial-back tests the way a would-be super peer does:
// TLS with key, then HelloOK{id, overlay} to a probe Hello. hold makes it
// accept and then say nothing (a port that swallows connections).
func responder(t *testing.T, key ed25519.PrivateKey, overlay string, hold bool) string {
	t.Helper()
	cert, err := auth.SelfSignedCertificate(key, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	id := ids.PeerIDFromKey(key.Public().(ed25519.PublicKey))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			if hold {
				t.Cleanup(func() { nc.Close() })
				continue
			}
			tc := tls.Server(nc, auth.ServerTLSConfig(cert))
			f, err := wire.ReadFrame(tc, 4<<10)
			if err == nil {
				body, _ := wire.Marshal(&wire.HelloOK{PeerID: id, Overlay: overlay})
				wire.WriteFrame(tc, &wire.Frame{Header: wire.Header{Type: wire.TypeHello, Flags: wire.FlagResponse, TxID: f.TxID}, Body: body}) //nolint:errcheck
			}
			nc.Close()
		}
	}()
	return l.Addr().String()
}

func TestProbe(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	id := ids.PeerIDFromKey(key.Public().(ed25519.PublicKey))
	good := responder(t, key, "example.net", false)
	other := responder(t, otherKey, "example.net", false)
	foreign := responder(t, key, "other.example", false)
	silent := responder(t, key, "example.net", true)
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()
	tests := map[string]struct {
		addr string
		want string // "" : passes
	}{
		"the node answers":    {good, ""},
		"another node":        {other, "answers as Peer-ID"},
		"another overlay":     {foreign, `of overlay "other.example"`},
		"nothing listens":     {closedAddr, "connect " + closedAddr + ": connection refused"},
		"port swallows conns": {silent, "tls at " + silent + ": timeout"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := Probe(ctx, tc.addr, id, "example.net", nil)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("took %s past its 500ms bound", took)
			}
		})
	}
}
