package auth

import (
	"bytes"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
)

// MinSecretLen is the shortest overlay secret LoadSecret accepts, in bytes
// of the trimmed file content: 16 bytes is 128 bits if the operator uses
// random bytes, and a floor against "secret" typed by hand.
const MinSecretLen = 16

const (
	// maxSecretFile bounds LoadSecret's read; a secret is a line of text.
	maxSecretFile = 4 << 10
	// secretRandLen is how many random bytes CreateSecretFile draws (256
	// bits), written as 64 hex digits.
	secretRandLen = 32
	// hkdfInfoPrefix separates our derived keys from any other use of the
	// same secret (coturn, Kamailio) that might run HKDF over it.
	hkdfInfoPrefix = "p2psip "
)

// LoadSecret reads the overlay secret from path: the file's content with
// surrounding whitespace trimmed, used as bytes as is (hex text is not
// decoded, so a secret written by hand or by `openssl rand -hex` works the
// same as one from CreateSecretFile, and the same text configured in
// coturn's static-auth-secret gives the same passwords).
func LoadSecret(path string) ([]byte, error) {
	b, err := readBounded(path, maxSecretFile)
	if err != nil {
		return nil, fmt.Errorf("load secret %s: %w", path, err)
	}
	b = bytes.TrimSpace(b)
	if len(b) < MinSecretLen {
		return nil, fmt.Errorf("load secret %s: %w: %d bytes, want at least %d", path, ErrShortSecret, len(b), MinSecretLen)
	}
	return b, nil
}

// CreateSecretFile writes a new random secret to path (32 random bytes as
// hex plus a newline, mode 0600, parent directory created 0700) and returns
// it as LoadSecret would: the 64 hex characters. It refuses to replace an
// existing file (the error matches fs.ErrExist), since a new secret would
// invalidate every credential issued under the old one.
func CreateSecretFile(path string) ([]byte, error) {
	raw := make([]byte, secretRandLen)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("create secret %s: %w", path, err)
	}
	text := make([]byte, hex.EncodedLen(len(raw)), hex.EncodedLen(len(raw))+1)
	hex.Encode(text, raw)
	if err := writeExclusive(path, append(text, '\n')); err != nil {
		return nil, fmt.Errorf("create secret %s: %w", path, err)
	}
	return text, nil
}

// LoadOrCreateSecret loads the secret at path, creating it first if the
// file does not exist. If another process creates it between the two
// steps, its secret is loaded rather than replaced.
func LoadOrCreateSecret(path string) (secret []byte, created bool, err error) {
	secret, err = LoadSecret(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return secret, false, err
	}
	secret, err = CreateSecretFile(path)
	if errors.Is(err, fs.ErrExist) {
		secret, err = LoadSecret(path)
		return secret, false, err
	}
	return secret, err == nil, err
}

// DeriveKey derives an n-byte key for one purpose from the overlay secret
// with HKDF-SHA256 (no salt, info "p2psip "+label), so the memberlist key,
// the CA key and the mesh-proof key are independent of each other and of
// the credential HMAC, which uses the secret directly as TURN-REST demands.
//
// n must be in 1..8160 (HKDF-SHA256's limit); other values are a
// programming error and panic, as does running with GODEBUG=fips140=only
// and a secret shorter than 14 bytes (LoadSecret never returns one).
func DeriveKey(secret []byte, label string, n int) []byte {
	if n <= 0 || n > 255*sha256.Size {
		panic(fmt.Sprintf("auth.DeriveKey: key length %d out of range", n))
	}
	k, err := hkdf.Key(sha256.New, secret, nil, hkdfInfoPrefix+label, n)
	if err != nil {
		panic(fmt.Sprintf("auth.DeriveKey %q: %v", label, err))
	}
	return k
}

// MemberlistKey is the AES-256 key for memberlist's gossip encryption
// (memberlist.Config.SecretKey, 32 bytes).
func MemberlistKey(secret []byte) []byte {
	return DeriveKey(secret, "memberlist", 32)
}
