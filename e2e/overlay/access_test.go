package overlay

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/client"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/e2e/harness"
)

func contactRecord(aor, uri string, callID string, cseq uint32, expires time.Time) *record.Record {
	return &record.Record{Kind: record.KindLocation, Name: aor, Entries: []record.Entry{{
		Key: uri, CallID: callID, CSeq: cseq, Expires: expires.Unix(),
		Contact: &record.Contact{URI: uri, Q: 1000},
	}}}
}

func TestOwnershipIsEnforced(t *testing.T) {
	o := harness.New(t)
	a, b, c := o.Start(), o.Start(), o.Start()
	o.WaitConverged(10 * time.Second)
	ctx := context.Background()
	alice := o.Client(a, "alice")
	bob := o.Client(b, "bob")
	exp := time.Now().Add(time.Hour)

	if _, err := alice.Put(ctx, contactRecord("sip:alice@example.net", "sip:alice@192.0.2.10:5060", "c1", 1, exp)); err != nil {
		t.Fatalf("alice writes her own AoR: %v", err)
	}
	_, err := bob.Put(ctx, contactRecord("sip:alice@example.net", "sip:evil@198.51.100.66:5060", "c2", 1, exp))
	if !client.IsCode(err, wire.CodeForbidden) {
		t.Fatalf("bob overwriting alice: got %v, want 403", err)
	}
	if _, err := bob.Remove(ctx, record.KindLocation, "sip:alice@example.net", nil); !client.IsCode(err, wire.CodeForbidden) {
		t.Fatalf("bob removing alice: got %v, want 403", err)
	}
	if _, err := bob.Put(ctx, contactRecord("sip:bob@elsewhere.org", "sip:bob@192.0.2.11", "c3", 1, exp)); !client.IsCode(err, wire.CodeForbidden) {
		t.Fatalf("bob writing outside the overlay: got %v, want 403", err)
	}
	// Bob's own AoR, but a contact naming alice's Peer-ID (and a relayed
	// address of bob's): calls to bob, and the TURN fallback's datagrams
	// meant for alice's agent, would go where bob says.
	spoof := contactRecord("sip:bob@example.net", "sip:bob@192.0.2.11:5060", "c4", 1, exp)
	spoof.Entries[0].Contact.PeerID = alice.Self
	spoof.Entries[0].Contact.Relay = "203.0.113.66:50000"
	if _, err := bob.Put(ctx, spoof); !client.IsCode(err, wire.CodeForbidden) {
		t.Fatalf("bob's contact naming alice's Peer-ID: got %v, want 403", err)
	}
	own := contactRecord("sip:bob@example.net", "sip:bob@192.0.2.11:5060", "c5", 1, exp)
	own.Entries[0].Contact.PeerID = bob.Self
	if _, err := bob.Put(ctx, own); err != nil {
		t.Fatalf("bob's contact naming his own Peer-ID: %v", err)
	}
	// Another session of bob's (`p2psip record rm`) may remove it.
	if _, err := o.Client(c, "bob").Remove(ctx, record.KindLocation, "sip:bob@example.net", []string{"sip:bob@192.0.2.11:5060"}); err != nil {
		t.Fatalf("bob removing his contact that names another session's Peer-ID: %v", err)
	}
	// Every super peer still returns alice's record unchanged.
	for _, sp := range []*harness.SP{a, b, c} {
		rec, err := o.Client(sp, "carol").Get(ctx, record.KindLocation, "sip:alice@example.net")
		if err != nil {
			t.Fatal(err)
		}
		if len(rec.Entries) != 1 || rec.Entries[0].Contact.URI != "sip:alice@192.0.2.10:5060" || rec.Entries[0].Writer != "alice" {
			t.Fatalf("alice's record changed: %+v", rec.Entries)
		}
	}
	// Alice removes her contact; it is gone everywhere.
	if _, err := alice.Remove(ctx, record.KindLocation, "sip:alice@example.net", []string{"sip:alice@192.0.2.10:5060"}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Get(ctx, record.KindLocation, "sip:alice@example.net"); !client.IsCode(err, wire.CodeNotFound) {
		t.Fatalf("after removal: got %v, want 404", err)
	}
	// Clients may not use the replica protocol.
	if _, err := bob.Conn.Request(ctx, wire.TypeReplicate, &wire.ReplicateReq{Records: []record.Record{*contactRecord("sip:alice@example.net", "sip:x@192.0.2.1", "c", 9, exp)}}); !client.IsCode(err, wire.CodeForbidden) {
		t.Fatalf("client replicate: got %v, want 403", err)
	}
}

func TestExpiryAndRegistrationOrder(t *testing.T) {
	o := harness.New(t)
	a, b := o.Start(), o.Start()
	o.Start()
	o.WaitConverged(10 * time.Second)
	ctx := context.Background()
	alice := o.Client(a, "alice")
	alice2 := o.Client(b, "alice")
	uri := "sip:alice@192.0.2.20:5062"

	// A newer registration (higher CSeq in the same Call-ID) through one
	// super peer, then the older one through another: the newer stays.
	newer := contactRecord("sip:alice@example.net", uri, "reg-1", 5, time.Now().Add(time.Hour))
	newer.Entries[0].Contact.Q = 900
	older := contactRecord("sip:alice@example.net", uri, "reg-1", 4, time.Now().Add(2*time.Hour))
	older.Entries[0].Version = uint64(time.Now().Add(time.Minute).UnixNano()) // a later clock must not beat the CSeq
	if _, err := alice.Put(ctx, newer); err != nil {
		t.Fatal(err)
	}
	if _, err := alice2.Put(ctx, older); err != nil {
		t.Fatal(err)
	}
	rec, err := alice.Get(ctx, record.KindLocation, "sip:alice@example.net")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Entries[0].CSeq != 5 || rec.Entries[0].Contact.Q != 900 {
		t.Fatalf("older registration replaced the newer one: %+v", rec.Entries[0])
	}

	// A contact registered for one second disappears from fetches.
	short := contactRecord("sip:alice@example.net", "sip:alice@192.0.2.21:5060", "reg-2", 1, time.Now().Add(time.Second))
	if _, err := alice.Put(ctx, short); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 5*time.Second, func() error {
		rec, err := alice2.Get(ctx, record.KindLocation, "sip:alice@example.net")
		if err != nil {
			return err
		}
		for _, e := range rec.Entries {
			if e.Key == "sip:alice@192.0.2.21:5060" {
				return errors.New("expired contact still returned")
			}
		}
		if len(rec.Entries) != 1 {
			return errors.New("the long-lived contact must stay")
		}
		return nil
	})
}

func TestBadInputAtTheSession(t *testing.T) {
	o := harness.New(t)
	sp := o.Start()
	ctx := context.Background()

	// Bad, expired and forged credentials are refused with 401.
	good := o.Credentials("alice")
	expired, _ := auth.Issue(o.Secret, "alice", time.Second, time.Now().Add(-time.Hour))
	forged := good
	forged.Username = strings.Replace(good.Username, "alice", "admin", 1)
	for name, c := range map[string]auth.Credentials{"expired": expired, "forged": forged, "wrong password": {Username: good.Username, Password: "AAAA"}} {
		if _, err := o.Dial(sp, c, wire.RoleClient); !client.IsCode(err, wire.CodeUnauthorized) {
			t.Fatalf("%s credentials: got %v, want 401", name, err)
		}
	}
	// A client claiming to be a super peer needs the mesh proof.
	if _, err := o.Dial(sp, good, wire.RoleSuperPeer); !client.IsCode(err, wire.CodeUnauthorized) {
		t.Fatalf("fake super peer: got %v, want 401", err)
	}

	s := o.Client(sp, "alice")
	// Unknown message types get an error, and the session lives on.
	if _, err := s.Conn.Request(ctx, wire.Type(200), nil); !client.IsCode(err, wire.CodeUnknownType) {
		t.Fatalf("unknown type: %v", err)
	}
	// A body that is not CBOR gets 400.
	if _, err := s.Conn.Request(ctx, wire.TypeStore, []byte{0xff, 0x00}); !client.IsCode(err, wire.CodeBadRequest) {
		t.Fatalf("garbage body: %v", err)
	}
	// An invalid record (CR/LF in the contact) gets 400 and stores nothing.
	bad := contactRecord("sip:alice@example.net", "sip:alice@192.0.2.1\r\nX-Evil: 1", "c", 1, time.Now().Add(time.Hour))
	if _, err := s.Put(ctx, bad); !client.IsCode(err, wire.CodeBadRequest) {
		t.Fatalf("header injection: %v", err)
	}
	if _, err := s.Get(ctx, record.KindLocation, "sip:alice@example.net"); !client.IsCode(err, wire.CodeNotFound) {
		t.Fatalf("nothing must be stored: %v", err)
	}

	// A frame announcing 4 GiB closes the connection, with a metric.
	raw := rawSession(t, o, sp)
	raw.Write(binary.BigEndian.AppendUint32(nil, 0xffffffff)) //nolint:errcheck
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))      //nolint:errcheck
	if _, err := io.ReadAll(raw); err != nil {
		t.Fatalf("connection not closed cleanly: %v", err)
	}
	harness.Eventually(t, 5*time.Second, func() error {
		if counter(t, sp, "p2psip_session_broken_total", "too_large") < 1 {
			return errors.New("no broken-session metric")
		}
		return nil
	})
	// The super peer still serves.
	if _, err := o.Client(sp, "bob").Get(ctx, record.KindLocation, "sip:bob@example.net"); !client.IsCode(err, wire.CodeNotFound) {
		t.Fatalf("after garbage: %v", err)
	}
}

// rawSession completes TLS and Hello by hand and returns the bare
// connection, so a test can write arbitrary bytes on an admitted session.
func rawSession(t *testing.T, o *harness.Overlay, sp *harness.SP) *tls.Conn {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	cert, _ := auth.SelfSignedCertificate(key, time.Now())
	tc, err := tls.Dial("tcp", sp.Node.PeerAddr(), auth.ClientTLSConfig(&cert, o.CA.Pool(), "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	c := o.Credentials("mallory")
	body, _ := wire.Marshal(&wire.Hello{Role: wire.RoleClient, Overlay: o.Name, Username: c.Username, Password: c.Password})
	if err := wire.WriteFrame(tc, &wire.Frame{Header: wire.Header{Type: wire.TypeHello, TxID: 1}, Body: body}); err != nil {
		t.Fatal(err)
	}
	f, err := wire.ReadFrame(tc, 0)
	if err != nil || f.Flags&wire.FlagError != 0 {
		t.Fatalf("hello: %v", err)
	}
	return tc
}
