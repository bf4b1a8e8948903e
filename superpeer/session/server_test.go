package session

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/wire"
)

// emfileListener fails its first accepts the way a process out of file
// descriptors does.
type emfileListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *emfileListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// stubStore is never called in these tests.
type stubStore struct{ Store }

func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.SelfSignedCertificate(key, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// Running out of file descriptors refuses connections for a moment; it
// does not stop the server (and with it every session it holds).
func TestAcceptSurvivesDescriptorExhaustion(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	el := &emfileListener{Listener: l}
	el.fails.Store(3)
	s, err := New(Config{Listener: el, TLS: auth.ServerTLSConfig(testCert(t)), Overlay: "example.net", Secret: []byte("secret"),
		Store: stubStore{}}, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	// A Hello for another overlay is refused with a reason: proof that
	// the connection was accepted and served after the failed accepts.
	cert := testCert(t)
	tc, err := tls.Dial("tcp", l.Addr().String(), auth.ClientTLSConfig(&cert, nil, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck
	body, _ := wire.Marshal(&wire.Hello{Role: wire.RoleClient, Overlay: "other.net"})
	if err := wire.WriteFrame(tc, &wire.Frame{Header: wire.Header{Type: wire.TypeHello, TxID: 1}, Body: body}); err != nil {
		t.Fatal(err)
	}
	f, err := wire.ReadFrame(tc, 64<<10)
	if err != nil {
		t.Fatalf("no answer after the failed accepts: %v", err)
	}
	var e wire.Error
	if f.Flags&wire.FlagError == 0 || wire.Unmarshal(f.Body, &e) != nil || !errors.Is(&e, &wire.Error{Code: wire.CodeForbidden}) {
		t.Fatalf("got flags %x body %q, want a 403 refusal", f.Flags, f.Body)
	}
	select {
	case err := <-done:
		t.Fatalf("Run stopped: %v", err)
	default:
	}
}
