package auth

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/p2psip/p2psip/common/ids"
)

// ALPN is the application protocol both sides of a peer-protocol
// connection offer; a version bump of the framing gets a new name.
const ALPN = "p2psip/1"

// ServerTLSConfig is the peer protocol's server side (TLS 1.3 only). It
// asks for, but does not require, a client certificate: agents and CLI
// clients present a self-signed Ed25519 certificate (their Peer-ID), super
// peers dialling a mesh link present their CA-signed one, and the session
// layer decides what it needs (PeerIDFromState, PeerVerifiedByCA). A
// certificate that is present must carry an Ed25519 key, or the handshake
// fails, so PeerIDFromState cannot fail on the key type later.
func ServerTLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{cert},
		ClientAuth:            tls.RequestClientCert,
		VerifyPeerCertificate: checkEd25519Leaf,
		NextProtos:            []string{ALPN},
	}
}

// ClientTLSConfig is the peer protocol's client side (TLS 1.3 only). cert,
// if non-nil, is presented to the server. roots pins the overlay CA and
// the server must present a certificate for serverName (an IP address
// matches IP SANs; empty only works with tls.Dial, which fills it in from
// the address); roots == nil turns verification off, for --insecure
// development use only, and the caller is the one to log that loudly. In
// both cases the server's key must be Ed25519, so the client can name the
// super peer it reached by Peer-ID.
func ClientTLSConfig(cert *tls.Certificate, roots *x509.CertPool, serverName string) *tls.Config {
	cfg := &tls.Config{
		MinVersion:            tls.VersionTLS13,
		RootCAs:               roots,
		ServerName:            serverName,
		InsecureSkipVerify:    roots == nil,
		VerifyPeerCertificate: checkEd25519Leaf,
		NextProtos:            []string{ALPN},
	}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

// checkEd25519Leaf is the VerifyPeerCertificate hook of both configs. It
// runs after crypto/tls's own chain verification (if any) and accepts an
// absent certificate; the policy on absence belongs to the caller.
func checkEd25519Leaf(rawCerts [][]byte, _ [][]*x509.Certificate) error {
	if len(rawCerts) == 0 {
		return nil
	}
	c, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return fmt.Errorf("check peer certificate: %w", err)
	}
	if _, ok := c.PublicKey.(ed25519.PublicKey); !ok {
		return fmt.Errorf("check peer certificate: %w: %T", errNotEd25519, c.PublicKey)
	}
	return nil
}

// PeerIDFromState returns the Peer-ID of the other side of a finished
// handshake, from its leaf certificate's Ed25519 key. TLS has proved that
// the peer holds the matching private key, so the Peer-ID is
// authenticated even when the certificate itself is self-signed.
func PeerIDFromState(cs tls.ConnectionState) (ids.PeerID, error) {
	if len(cs.PeerCertificates) == 0 {
		return ids.PeerID{}, fmt.Errorf("peer id: %w", ErrNoPeerCert)
	}
	pub, ok := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
	if !ok {
		return ids.PeerID{}, fmt.Errorf("peer id: %w: %T", errNotEd25519, cs.PeerCertificates[0].PublicKey)
	}
	return ids.PeerIDFromKey(pub), nil
}

// PeerVerifiedByCA reports (nil) whether the other side's leaf chains to
// roots, i.e. whether it is a super peer of this overlay. Host names are
// not checked (a super peer dials us from any address) and any extended
// key usage is accepted. Expiry is checked against the current time.
func PeerVerifiedByCA(cs tls.ConnectionState, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("verify peer by ca: %w", ErrNoPeerCert)
	}
	if roots == nil {
		return errors.New("verify peer by ca: no roots")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return fmt.Errorf("verify peer by ca: %w", err)
	}
	return nil
}
