package auth

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func newKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustCA(t testing.TB, secret []byte, overlay string) *CA {
	t.Helper()
	ca, err := OverlayCA(secret, overlay)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestOverlayCADeterministic(t *testing.T) {
	a := mustCA(t, testSecret, "example.net")
	b := mustCA(t, testSecret, "example.net")
	if !bytes.Equal(a.Cert.Raw, b.Cert.Raw) {
		t.Fatal("two derivations of the same CA give different DER")
	}
	if !bytes.Equal(a.PEM, b.PEM) || !a.Key.Equal(b.Key) {
		t.Fatal("PEM or key differ between derivations")
	}
	c := a.Cert
	if c.Subject.CommonName != "p2psip overlay CA example.net" || !c.IsCA ||
		c.KeyUsage&x509.KeyUsageCertSign == 0 || c.SerialNumber.Sign() <= 0 {
		t.Fatalf("unexpected CA fields: cn=%q ca=%v ku=%v serial=%v", c.Subject.CommonName, c.IsCA, c.KeyUsage, c.SerialNumber)
	}
	if !c.NotBefore.Equal(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)) || !c.NotAfter.Equal(time.Date(2124, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("validity %v..%v", c.NotBefore, c.NotAfter)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Fatalf("not self-signed: %v", err)
	}

	others := map[string]*CA{
		"overlay": mustCA(t, testSecret, "other.net"),
		"secret":  mustCA(t, []byte("another secret of 16+"), "example.net"),
	}
	for name, o := range others {
		if bytes.Equal(o.Cert.Raw, a.Cert.Raw) || o.Key.Equal(a.Key) || o.Cert.SerialNumber.Cmp(a.Cert.SerialNumber) == 0 {
			t.Errorf("changing the %s does not change the CA", name)
		}
	}

	if _, err := OverlayCA(testSecret, ""); !errors.Is(err, errNoOverlay) {
		t.Errorf("empty overlay: %v", err)
	}
	if _, err := OverlayCA(nil, "example.net"); !errors.Is(err, ErrShortSecret) {
		t.Errorf("empty secret: %v", err)
	}
}

func TestNodeCertificate(t *testing.T) {
	ca := mustCA(t, testSecret, "example.net")
	key := newKey(t)
	cert, err := ca.NodeCertificate(key, []string{"sp1.Example.net", "192.0.2.7", "192.0.2.7:6084", "[2001:db8::1]", "", "localhost"}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if leaf == nil || !bytes.Equal(leaf.Raw, cert.Certificate[0]) {
		t.Fatal("Leaf not set to the certificate")
	}
	if wantDNS := []string{"localhost", "sp1.example.net"}; !slices.Equal(leaf.DNSNames, wantDNS) {
		t.Errorf("DNS SANs %v, want %v", leaf.DNSNames, wantDNS)
	}
	var ips []string
	for _, ip := range leaf.IPAddresses {
		ips = append(ips, ip.String())
	}
	if wantIPs := []string{"127.0.0.1", "::1", "192.0.2.7", "2001:db8::1"}; !slices.Equal(ips, wantIPs) {
		t.Errorf("IP SANs %v, want %v", ips, wantIPs)
	}
	if !leaf.NotBefore.Equal(testNow.Add(-time.Hour)) || !leaf.NotAfter.Equal(testNow.Add(365*24*time.Hour)) {
		t.Errorf("validity %v..%v", leaf.NotBefore, leaf.NotAfter)
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		t.Errorf("ext key usage %v", leaf.ExtKeyUsage)
	}
	for _, name := range []string{"localhost", "127.0.0.1", "::1", "sp1.example.net", "192.0.2.7"} {
		opts := x509.VerifyOptions{Roots: ca.Pool(), DNSName: name, CurrentTime: testNow}
		if _, err := leaf.Verify(opts); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	other, err := ca.NodeCertificate(key, nil, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if other.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two node certificates share a serial")
	}
	if _, err := ca.NodeCertificate(nil, nil, testNow); err == nil {
		t.Error("nil key accepted")
	}
}

func TestLoadCAFile(t *testing.T) {
	a := mustCA(t, testSecret, "a.net")
	b := mustCA(t, testSecret, "b.net")
	tests := map[string]struct {
		content []byte
		verify  []*CA // CAs whose node certs must verify
		reject  []*CA
		wantErr error
	}{
		"one":         {content: a.PEM, verify: []*CA{a}, reject: []*CA{b}},
		"two":         {content: append(append([]byte{}, a.PEM...), b.PEM...), verify: []*CA{a, b}},
		"with junk":   {content: append([]byte("# overlay a\n"), a.PEM...), verify: []*CA{a}},
		"empty":       {content: nil, wantErr: ErrMalformed},
		"no certs":    {content: []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), wantErr: ErrMalformed},
		"bad cert":    {content: []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), wantErr: errAny},
		"oversize":    {content: bytes.Repeat([]byte("x"), maxCAFile+1), wantErr: errTooLarge},
		"missing":     {content: nil, wantErr: os.ErrNotExist},
		"only header": {content: []byte("-----BEGIN CERTIFICATE-----\n"), wantErr: ErrMalformed},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ca.pem")
			if name != "missing" {
				if err := os.WriteFile(path, tc.content, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			pool, err := LoadCAFile(path)
			switch {
			case tc.wantErr == errAny && err != nil:
				return
			case !errors.Is(err, tc.wantErr):
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			case err != nil:
				return
			}
			key := newKey(t)
			for _, ca := range tc.verify {
				c, _ := ca.NodeCertificate(key, nil, testNow)
				if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: testNow}); err != nil {
					t.Errorf("%s: %v", ca.Cert.Subject.CommonName, err)
				}
			}
			for _, ca := range tc.reject {
				c, _ := ca.NodeCertificate(key, nil, testNow)
				if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: testNow}); err == nil {
					t.Errorf("%s verified against the wrong pool", ca.Cert.Subject.CommonName)
				}
			}
		})
	}
}

// errAny marks a case where any error will do.
var errAny = errors.New("any error")

func TestSelfSignedCertificate(t *testing.T) {
	key := newKey(t)
	c, err := SelfSignedCertificate(key, testNow)
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := c.Leaf.PublicKey.(ed25519.PublicKey)
	if !ok || !pub.Equal(key.Public()) {
		t.Fatal("certificate does not carry the identity key")
	}
	if err := c.Leaf.CheckSignature(c.Leaf.SignatureAlgorithm, c.Leaf.RawTBSCertificate, c.Leaf.Signature); err != nil {
		t.Fatalf("not self-signed: %v", err)
	}
	if net.ParseIP(c.Leaf.Subject.CommonName) != nil || len(c.Leaf.Subject.CommonName) != 32 {
		t.Errorf("common name %q is not a Peer-ID", c.Leaf.Subject.CommonName)
	}
}
