package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/p2psip/p2psip/common/ids"
)

// The CA's validity is fixed, not taken from a clock, so that every super
// peer derives byte-identical certificates from the same secret.
var (
	caNotBefore = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	caNotAfter  = time.Date(2124, 1, 1, 0, 0, 0, 0, time.UTC)
)

const (
	pemCertificate = "CERTIFICATE"
	// maxCAFile bounds LoadCAFile's read: room for a few hundred certs.
	maxCAFile = 1 << 20
	// leafLifetime is how long node and self-signed certificates are
	// valid; they are minted at every start, so a year is plenty.
	leafLifetime = 365 * 24 * time.Hour
	// clockSkew backdates leaves so a peer whose clock is a little behind
	// does not reject a certificate minted a moment ago.
	clockSkew = time.Hour
)

// CA is an overlay's certificate authority. Super peers use it to sign
// their node certificates; agents and CLI clients pin it (--ca-file, the
// PEM) to recognise super peers; super peers use it to tell a super peer
// from an agent on an incoming link (PeerVerifiedByCA).
type CA struct {
	Cert *x509.Certificate
	Key  ed25519.PrivateKey
	PEM  []byte // Cert as one PEM "CERTIFICATE" block, for --ca-file
}

// OverlayCA derives the CA of overlay from the overlay secret. It is
// deterministic, because the key comes from DeriveKey(secret, "ca
// "+overlay, 32), every field of the certificate is fixed, and Ed25519
// signatures are deterministic: super peers started independently with
// the same secret and overlay name hold the same CA, and anyone who knows
// the secret can act as the CA (which is exactly the trust the secret
// already confers). The overlay name is used as given, case included.
func OverlayCA(secret []byte, overlay string) (*CA, error) {
	if len(secret) == 0 {
		return nil, fmt.Errorf("overlay ca %q: %w: empty", overlay, ErrShortSecret)
	}
	if overlay == "" {
		return nil, fmt.Errorf("overlay ca: %w", errNoOverlay)
	}
	key := ed25519.NewKeyFromSeed(DeriveKey(secret, "ca "+overlay, ed25519.SeedSize))
	pub := key.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber:          caSerial(pub),
		Subject:               pkix.Name{CommonName: "p2psip overlay CA " + overlay},
		NotBefore:             caNotBefore,
		NotAfter:              caNotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		// The CA signs node certificates only, never another CA.
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, fmt.Errorf("overlay ca %q: create certificate: %w", overlay, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("overlay ca %q: parse certificate: %w", overlay, err)
	}
	return &CA{
		Cert: cert,
		Key:  key,
		PEM:  pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der}),
	}, nil
}

// caSerial derives a positive 128-bit serial from the CA's public key, so
// that different overlays' CAs differ in serial too while one overlay's CA
// is always the same.
func caSerial(pub ed25519.PublicKey) *big.Int {
	sum := sha256.Sum256(append([]byte("p2psip ca serial "), pub...))
	s := new(big.Int).SetBytes(sum[:16])
	if s.Sign() == 0 {
		s.SetInt64(1)
	}
	return s
}

// randomSerial is a random positive 128-bit serial for leaves, which are
// minted at every start and must not collide.
func randomSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	return s.Add(s, big.NewInt(1)), nil
}

// Pool returns a new pool holding only the CA certificate, for
// ClientTLSConfig and PeerVerifiedByCA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// NodeCertificate mints a super peer's TLS certificate for nodeKey, signed
// by the CA and valid from now-1h to now+1 year, usable as server and as
// client (mesh links go both ways). Its names are hosts (each an IP
// address or a DNS name; a "host:port" form is reduced to the host) plus
// localhost, 127.0.0.1 and ::1, so loopback tests and local CLI use verify.
// The common name is the node's Peer-ID, for humans reading the cert.
func (ca *CA) NodeCertificate(nodeKey ed25519.PrivateKey, hosts []string, now time.Time) (tls.Certificate, error) {
	if len(nodeKey) != ed25519.PrivateKeySize {
		return tls.Certificate{}, fmt.Errorf("node certificate: %w", errNoKey)
	}
	pub := nodeKey.Public().(ed25519.PublicKey)
	serial, err := randomSerial()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("node certificate: serial: %w", err)
	}
	dns, ips := sanNames(append([]string{"localhost", "127.0.0.1", "::1"}, hosts...))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: ids.PeerIDFromKey(pub).String()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(leafLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	return makeCertificate(tmpl, ca.Cert, pub, nodeKey, ca.Key)
}

// SelfSignedCertificate mints a self-signed certificate for an agent's or
// CLI client's identity key. It proves nothing but possession of the key,
// which is all a client needs: the server derives the client's Peer-ID
// from it (PeerIDFromState) and authenticates the user by credentials.
func SelfSignedCertificate(key ed25519.PrivateKey, now time.Time) (tls.Certificate, error) {
	if len(key) != ed25519.PrivateKeySize {
		return tls.Certificate{}, fmt.Errorf("self-signed certificate: %w", errNoKey)
	}
	pub := key.Public().(ed25519.PublicKey)
	serial, err := randomSerial()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("self-signed certificate: serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: ids.PeerIDFromKey(pub).String()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(leafLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	return makeCertificate(tmpl, tmpl, pub, key, key)
}

// makeCertificate signs tmpl and wraps the result for crypto/tls, with
// Leaf set so callers need not parse it again. Only the leaf is sent: the
// other side either pins the CA itself or does not verify at all.
func makeCertificate(tmpl, parent *x509.Certificate, pub ed25519.PublicKey, key, signer ed25519.PrivateKey) (tls.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate %s: %w", tmpl.Subject.CommonName, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parse certificate %s: %w", tmpl.Subject.CommonName, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// sanNames sorts hosts into DNS names and IP addresses, dropping empties
// and duplicates and reducing "host:port" and "[v6]" forms to the host.
func sanNames(hosts []string) (dns []string, ips []net.IP) {
	seen := make(map[string]bool, len(hosts))
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if host, _, err := net.SplitHostPort(h); err == nil {
			h = host
		}
		h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		if h == "" {
			continue
		}
		if a, err := netip.ParseAddr(h); err == nil {
			a = a.WithZone("").Unmap()
			if !seen[a.String()] {
				seen[a.String()] = true
				ips = append(ips, net.IP(a.AsSlice()))
			}
			continue
		}
		h = strings.ToLower(strings.TrimSuffix(h, "."))
		if !seen[h] {
			seen[h] = true
			dns = append(dns, h)
		}
	}
	return dns, ips
}

// LoadCAFile reads a PEM file of one or more certificates (the CA PEM a
// super peer writes to its data dir, or several overlays' CAs
// concatenated) into a pool. Blocks of other types are skipped; a file
// without any certificate is ErrMalformed.
func LoadCAFile(path string) (*x509.CertPool, error) {
	b, err := readBounded(path, maxCAFile)
	if err != nil {
		return nil, fmt.Errorf("load ca file %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	n := 0
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != pemCertificate {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("load ca file %s: certificate %d: %w", path, n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("load ca file %s: %w: no PEM certificate", path, ErrMalformed)
	}
	return pool, nil
}
