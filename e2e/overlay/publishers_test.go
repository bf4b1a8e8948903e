package overlay

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/client"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/superpeer"
)

// TestPublishers: a user listed in Config.Publishers (--publishers
// voicemail=vm1) publishes the voicemail service under its own Peer-ID,
// and every super peer's Find returns it; another user, another service,
// or an entry naming someone else's Peer-ID is refused with 403.
func TestPublishers(t *testing.T) {
	o := harness.New(t)
	o.Tune = func(c *superpeer.Config) { c.Publishers = map[string][]string{"voicemail": {"vm1"}} }
	sps := []*harness.SP{o.Start(), o.Start(), o.Start()}
	o.WaitConverged(15 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	dial := func(user string) (*client.Session, ids.PeerID) {
		t.Helper()
		pub, key, _ := ed25519.GenerateKey(rand.Reader)
		cert, err := auth.SelfSignedCertificate(key, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		c := o.Credentials(user)
		s, err := client.Dial(ctx, client.Config{
			Addr: sps[0].Node.PeerAddr(),
			TLS:  auth.ClientTLSConfig(&cert, o.CA.Pool(), "127.0.0.1"),
			Hello: func(tls.ConnectionState) (wire.Hello, error) {
				return wire.Hello{Role: wire.RoleClient, Overlay: o.Name, Username: c.Username, Password: c.Password}, nil
			},
		}, o.Log)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s, ids.PeerIDFromKey(pub)
	}
	provider := func(svc string, p ids.PeerID) *record.Record {
		return &record.Record{Kind: record.KindService, Name: svc, Entries: []record.Entry{{
			Key: p.String(), Expires: time.Now().Add(time.Hour).Unix(),
			Provider: &record.Provider{PeerID: p, Addrs: []string{"192.0.2.50:5060"}},
		}}}
	}
	forbidden := func(what string, err error) {
		t.Helper()
		var we *wire.Error
		if !errors.As(err, &we) || we.Code != wire.CodeForbidden {
			t.Errorf("%s: got %v, want 403", what, err)
		}
	}

	vm, vmID := dial("vm1")
	if _, err := vm.Put(ctx, provider("voicemail", vmID)); err != nil {
		t.Fatalf("vm1 publishing voicemail: %v", err)
	}
	for _, sp := range sps {
		rec, err := sp.Node.Store().Find(ctx, "voicemail")
		if err != nil || len(rec.Entries) != 1 || rec.Entries[0].Provider.PeerID != vmID {
			t.Fatalf("find voicemail via %s: %+v, %v", sp.Node.ID().Short(), rec, err)
		}
	}
	_, err := vm.Put(ctx, provider("conference", vmID))
	forbidden("vm1 publishing conference", err)
	_, err = vm.Put(ctx, provider("voicemail", ids.PeerID{0xde, 0xad}))
	forbidden("vm1 publishing under another Peer-ID", err)
	alice, aliceID := dial("alice")
	_, err = alice.Put(ctx, provider("voicemail", aliceID))
	forbidden("alice publishing voicemail", err)
}
