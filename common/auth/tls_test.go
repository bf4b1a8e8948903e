package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/ids"
)

type handshakeResult struct {
	cs  tls.ConnectionState
	err error
}

// handshake runs one TLS handshake over loopback TCP and returns what each
// side saw. Loopback rather than net.Pipe: a TLS 1.3 server writes session
// tickets after its handshake, which on an unbuffered pipe would block
// until the client reads. Deadlines bound a broken handshake; nothing
// sleeps.
func handshake(t *testing.T, srvCfg, cliCfg *tls.Config) (srv, cli handshakeResult) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(10 * time.Second)
	done := make(chan handshakeResult, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- handshakeResult{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(deadline)
		tc := tls.Server(c, srvCfg)
		err = tc.Handshake()
		done <- handshakeResult{tc.ConnectionState(), err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(deadline)
	tc := tls.Client(c, cliCfg)
	cli.err = tc.Handshake()
	cli.cs = tc.ConnectionState()
	// The client does not wait for the server's verdict on its
	// certificate in TLS 1.3; the server's result is what tells.
	srv = <-done
	return srv, cli
}

// node is a test identity: key, Peer-ID and a certificate.
type node struct {
	id   ids.PeerID
	cert tls.Certificate
}

func superPeer(t *testing.T, ca *CA) node {
	t.Helper()
	k := newKey(t)
	c, err := ca.NodeCertificate(k, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return node{ids.PeerIDFromKey(k.Public().(ed25519.PublicKey)), c}
}

func agent(t *testing.T) node {
	t.Helper()
	k := newKey(t)
	c, err := SelfSignedCertificate(k, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return node{ids.PeerIDFromKey(k.Public().(ed25519.PublicKey)), c}
}

func ecdsaPKCS8(t testing.TB) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// ecdsaCert is a client certificate of the wrong key type.
func ecdsaCert(t *testing.T) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "ecdsa"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

func TestHandshake(t *testing.T) {
	ca := mustCA(t, testSecret, "example.net")
	otherCA := mustCA(t, testSecret, "other.net")
	sp := superPeer(t, ca)
	ag := agent(t)
	bad := ecdsaCert(t)

	tests := map[string]struct {
		client     *tls.Certificate
		roots      *CA // nil: insecure
		serverName string
		clientFail bool
		serverFail bool
		clientID   ids.PeerID // as the server sees it; zero: no cert
	}{
		"agent pins overlay CA": {client: &ag.cert, roots: ca, serverName: "127.0.0.1", clientID: ag.id},
		"by host name":          {client: &ag.cert, roots: ca, serverName: "localhost", clientID: ag.id},
		"by ipv6 literal":       {client: &ag.cert, roots: ca, serverName: "::1", clientID: ag.id},
		"no client cert":        {roots: ca, serverName: "127.0.0.1"},
		"other overlay's CA":    {client: &ag.cert, roots: otherCA, serverName: "127.0.0.1", clientFail: true, serverFail: true},
		"wrong server name":     {client: &ag.cert, roots: ca, serverName: "sp9.example.org", clientFail: true, serverFail: true},
		"insecure":              {client: &ag.cert, serverName: "127.0.0.1", clientID: ag.id},
		"insecure, any CA":      {client: &ag.cert, roots: nil, serverName: "", clientID: ag.id},
		"ecdsa client cert":     {client: &bad, roots: ca, serverName: "127.0.0.1", serverFail: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var pool *x509.CertPool
			if tc.roots != nil {
				pool = tc.roots.Pool()
			}
			srv, cli := handshake(t, ServerTLSConfig(sp.cert), ClientTLSConfig(tc.client, pool, tc.serverName))
			if (cli.err != nil) != tc.clientFail {
				t.Fatalf("client: %v, want failure=%v", cli.err, tc.clientFail)
			}
			if (srv.err != nil) != tc.serverFail {
				t.Fatalf("server: %v, want failure=%v", srv.err, tc.serverFail)
			}
			if tc.clientFail || tc.serverFail {
				return
			}
			for side, cs := range map[string]tls.ConnectionState{"server": srv.cs, "client": cli.cs} {
				if cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != ALPN {
					t.Errorf("%s: version %x, alpn %q", side, cs.Version, cs.NegotiatedProtocol)
				}
			}
			if got, err := PeerIDFromState(cli.cs); err != nil || got != sp.id {
				t.Errorf("client sees server %v (%v), want %v", got, err, sp.id)
			}
			got, err := PeerIDFromState(srv.cs)
			switch {
			case tc.clientID.IsZero() && !errors.Is(err, ErrNoPeerCert):
				t.Errorf("server without client cert: %v, want ErrNoPeerCert", err)
			case !tc.clientID.IsZero() && (err != nil || got != tc.clientID):
				t.Errorf("server sees client %v (%v), want %v", got, err, tc.clientID)
			}
		})
	}
}

func TestTLSConfigsRejectOldVersions(t *testing.T) {
	ca := mustCA(t, testSecret, "example.net")
	sp := superPeer(t, ca)
	cli := ClientTLSConfig(nil, ca.Pool(), "127.0.0.1")
	cli.MinVersion, cli.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	srv, _ := handshake(t, ServerTLSConfig(sp.cert), cli)
	if srv.err == nil {
		t.Fatal("server accepted TLS 1.2")
	}
}

func TestPeerVerifiedByCA(t *testing.T) {
	ca := mustCA(t, testSecret, "example.net")
	otherCA := mustCA(t, testSecret, "other.net")
	server := superPeer(t, ca)
	member := superPeer(t, ca)
	stranger := superPeer(t, otherCA)
	ag := agent(t)

	tests := map[string]struct {
		client *tls.Certificate
		ok     bool
		want   error
	}{
		"super peer of this overlay":  {client: &member.cert, ok: true},
		"self-signed agent":           {client: &ag.cert},
		"super peer of other overlay": {client: &stranger.cert},
		"no certificate":              {want: ErrNoPeerCert},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			srv, cli := handshake(t, ServerTLSConfig(server.cert), ClientTLSConfig(tc.client, ca.Pool(), "127.0.0.1"))
			if srv.err != nil || cli.err != nil {
				t.Fatalf("handshake: server %v, client %v", srv.err, cli.err)
			}
			err := PeerVerifiedByCA(srv.cs, ca.Pool())
			if (err == nil) != tc.ok {
				t.Fatalf("PeerVerifiedByCA = %v, want ok=%v", err, tc.ok)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			// The client side verifies the server the same way.
			if err := PeerVerifiedByCA(cli.cs, ca.Pool()); err != nil {
				t.Fatalf("client: server not verified: %v", err)
			}
		})
	}
}

func TestMeshProof(t *testing.T) {
	ca := mustCA(t, testSecret, "example.net")
	a, b := superPeer(t, ca), superPeer(t, ca)
	// a dials b, twice: two sessions between the same pair.
	link := func() (srv, cli tls.ConnectionState) {
		s, c := handshake(t, ServerTLSConfig(b.cert), ClientTLSConfig(&a.cert, ca.Pool(), "127.0.0.1"))
		if s.err != nil || c.err != nil {
			t.Fatalf("handshake: server %v, client %v", s.err, c.err)
		}
		return s.cs, c.cs
	}
	bSide, aSide := link()
	bSide2, _ := link()

	proof, err := MeshProof(testSecret, aSide, a.id, b.id)
	if err != nil {
		t.Fatal(err)
	}
	if len(proof) != MeshProofLen {
		t.Fatalf("proof is %d bytes", len(proof))
	}
	otherSecret := []byte("another secret of 16+")
	forged, err := MeshProof(otherSecret, aSide, a.id, b.id)
	if err != nil {
		t.Fatal(err)
	}

	tests := map[string]struct {
		secret   []byte
		cs       tls.ConnectionState
		from, to ids.PeerID
		proof    []byte
		want     error
	}{
		"same session":          {testSecret, bSide, a.id, b.id, proof, nil},
		"checker other secret":  {otherSecret, bSide, a.id, b.id, proof, ErrBadProof},
		"prover other secret":   {testSecret, bSide, a.id, b.id, forged, ErrBadProof},
		"swapped ids":           {testSecret, bSide, b.id, a.id, proof, ErrBadProof},
		"replayed on a session": {testSecret, bSide2, a.id, b.id, proof, ErrBadProof},
		"truncated":             {testSecret, bSide, a.id, b.id, proof[:16], ErrBadProof},
		"empty":                 {testSecret, bSide, a.id, b.id, nil, ErrBadProof},
		"empty secret":          {nil, bSide, a.id, b.id, proof, ErrShortSecret},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := CheckMeshProof(tc.secret, tc.cs, tc.from, tc.to, tc.proof)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}

	if _, err := MeshProof(testSecret, tls.ConnectionState{}, a.id, b.id); err == nil {
		t.Fatal("mesh proof over a zero ConnectionState")
	}
}
