// Package ids holds the overlay's identifiers (ARCHITECTURE.md §2): Peer-IDs
// derived from Ed25519 identity keys, Resource-IDs derived from canonical
// resource names, and the canonical form of SIP addresses-of-record.
package ids

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Len is the size in bytes of Peer-IDs and Resource-IDs (128 bits).
const Len = 16

// MaxAORLen bounds an AoR so a hostile client cannot make us hash or store
// megabytes of "name".
const MaxAORLen = 256

// PeerID names a node: the first 16 bytes of SHA-256 of its Ed25519 public
// key. The TLS certificate of the peer protocol carries that key, so a
// Peer-ID cannot be claimed without holding the key.
type PeerID [Len]byte

// ResourceID names a record: the first 16 bytes of SHA-256 of the canonical
// resource name (see LocationName, ServiceName, PeerName).
type ResourceID [Len]byte

// PeerIDFromKey derives the Peer-ID of an Ed25519 public key.
func PeerIDFromKey(pub ed25519.PublicKey) PeerID {
	sum := sha256.Sum256(pub)
	var p PeerID
	copy(p[:], sum[:Len])
	return p
}

// ParsePeerID parses the 32-hex-digit form produced by String.
func ParsePeerID(s string) (PeerID, error) {
	var p PeerID
	if len(s) != 2*Len {
		return p, fmt.Errorf("parse peer id %q: want %d hex digits", s, 2*Len)
	}
	if _, err := hex.Decode(p[:], []byte(s)); err != nil {
		return p, fmt.Errorf("parse peer id %q: %w", s, err)
	}
	return p, nil
}

// String returns the full lower-case hex form.
func (p PeerID) String() string { return hex.EncodeToString(p[:]) }

// Short returns the first 8 hex digits, for logs.
func (p PeerID) Short() string { return hex.EncodeToString(p[:4]) }

// IsZero reports whether p is the zero (unset) Peer-ID.
func (p PeerID) IsZero() bool { return p == PeerID{} }

// MarshalText encodes the hex form (JSON, YAML).
func (p PeerID) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText decodes the hex form.
func (p *PeerID) UnmarshalText(b []byte) error {
	v, err := ParsePeerID(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// ResourceIDFor hashes a canonical resource name.
func ResourceIDFor(canonical string) ResourceID {
	sum := sha256.Sum256([]byte(canonical))
	var r ResourceID
	copy(r[:], sum[:Len])
	return r
}

// String returns the full lower-case hex form.
func (r ResourceID) String() string { return hex.EncodeToString(r[:]) }

// Short returns the first 8 hex digits, for logs.
func (r ResourceID) Short() string { return hex.EncodeToString(r[:4]) }

// MarshalText encodes the hex form.
func (r ResourceID) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// Canonical resource-name prefixes (ARCHITECTURE.md §2).
const (
	prefixUser    = "user:"
	prefixService = "service:"
	prefixPeer    = "peer:"
)

// LocationName is the canonical resource name of an AoR's location record;
// aor must already be normalized.
func LocationName(aor string) string { return prefixUser + aor }

// ServiceName is the canonical resource name of a service record.
func ServiceName(service string) string { return prefixService + service }

// PeerName is the canonical resource name of a peer record.
func PeerName(p PeerID) string { return prefixPeer + p.String() }

// ErrBadAOR is returned for an address-of-record that cannot be normalized.
var ErrBadAOR = errors.New("bad address-of-record")

// NormalizeAOR returns the canonical form of a SIP address-of-record:
// "sip:user@host" with the scheme and host lower-cased, the user part kept
// as given (SIP user parts are case-sensitive), and every parameter, header
// and port dropped. A bare "user@host" gets the sip scheme; "sips:" is kept
// apart from "sip:" only in that both map to "sip:" — one AoR, one record.
func NormalizeAOR(s string) (string, error) {
	orig := s
	s = strings.TrimSpace(s)
	if len(s) > MaxAORLen {
		return "", fmt.Errorf("%w: longer than %d bytes", ErrBadAOR, MaxAORLen)
	}
	if i := strings.IndexByte(s, '<'); i >= 0 { // name-addr form
		j := strings.IndexByte(s[i:], '>')
		if j < 0 {
			return "", fmt.Errorf("%w %q: unbalanced <", ErrBadAOR, orig)
		}
		s = s[i+1 : i+j]
	}
	lower := strings.ToLower(s)
	switch {
	case strings.HasPrefix(lower, "sip:"):
		s = s[4:]
	case strings.HasPrefix(lower, "sips:"):
		s = s[5:]
	case strings.Contains(lower, ":") && !strings.Contains(lower, "@"):
		return "", fmt.Errorf("%w %q: not a sip URI", ErrBadAOR, orig)
	}
	if i := strings.IndexAny(s, ";?"); i >= 0 {
		s = s[:i]
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return "", fmt.Errorf("%w %q: want user@host", ErrBadAOR, orig)
	}
	user, host := s[:at], strings.ToLower(s[at+1:])
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	if err := checkPart(user, true); err != nil {
		return "", fmt.Errorf("%w %q: user: %v", ErrBadAOR, orig, err)
	}
	if err := checkPart(host, false); err != nil {
		return "", fmt.Errorf("%w %q: host: %v", ErrBadAOR, orig, err)
	}
	return "sip:" + user + "@" + host, nil
}

// checkPart rejects empty parts, control characters, whitespace and the
// delimiters that would let a name smuggle SIP syntax into a header.
func checkPart(p string, user bool) error {
	if p == "" {
		return errors.New("empty")
	}
	if !utf8.ValidString(p) {
		// Records carry the AoR as a CBOR text string, which must be UTF-8:
		// a replica would refuse the record.
		return errors.New("not valid UTF-8")
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c <= ' ' || c == 0x7f || c == '<' || c == '>' || c == '"' || c == '@' || c == ',' {
			return fmt.Errorf("invalid character %q", c)
		}
		if !user && (c == ':' || c == ';') {
			return fmt.Errorf("invalid character %q", c)
		}
	}
	return nil
}

// AORUser returns the user part of a normalized AoR ("" if there is none).
func AORUser(aor string) string {
	s := strings.TrimPrefix(aor, "sip:")
	if i := strings.LastIndexByte(s, '@'); i > 0 {
		return s[:i]
	}
	return ""
}

// AORHost returns the host part of a normalized AoR ("" if there is none).
func AORHost(aor string) string {
	if i := strings.LastIndexByte(aor, '@'); i >= 0 {
		return aor[i+1:]
	}
	return ""
}
