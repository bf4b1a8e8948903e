package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/p2psip/p2psip/common/ids"
)

const (
	// pemPrivateKey is the PEM type of PKCS#8 keys, what `openssl pkey`
	// reads and writes.
	pemPrivateKey = "PRIVATE KEY"
	// maxIdentityFile bounds the read; an Ed25519 PKCS#8 PEM is ~120 bytes.
	maxIdentityFile = 16 << 10
)

// LoadOrCreateIdentity returns the node's Ed25519 identity key stored at
// path (PEM "PRIVATE KEY", PKCS#8), generating and writing it (mode 0600,
// parent directory created 0700) on first start. The key's hash is the
// node's Peer-ID, so an existing file is never replaced: a file that
// cannot be parsed is an error for the operator to resolve.
func LoadOrCreateIdentity(path string) (ed25519.PrivateKey, error) {
	key, err := loadIdentity(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	_, key, err = ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create identity %s: %w", path, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("create identity %s: %w", path, err)
	}
	err = writeExclusive(path, pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}))
	if errors.Is(err, fs.ErrExist) {
		// Another process won the race; its key is the identity.
		return loadIdentity(path)
	}
	if err != nil {
		return nil, fmt.Errorf("create identity %s: %w", path, err)
	}
	return key, nil
}

func loadIdentity(path string) (ed25519.PrivateKey, error) {
	b, err := readBounded(path, maxIdentityFile)
	if err != nil {
		return nil, fmt.Errorf("load identity %s: %w", path, err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != pemPrivateKey {
		return nil, fmt.Errorf("load identity %s: %w: want a PEM %q block", path, ErrMalformed, pemPrivateKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load identity %s: %w: %v", path, ErrMalformed, err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("load identity %s: %w: %T is not an Ed25519 key", path, ErrMalformed, k)
	}
	return key, nil
}

// IdentityFile is the identity key's file name in a node's data directory.
const IdentityFile = "identity.pem"

// LoadNodeIdentity loads (or creates on first start) the identity key in
// dir, creating dir, and returns the key with its Peer-ID.
func LoadNodeIdentity(dir string) (ed25519.PrivateKey, ids.PeerID, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, ids.PeerID{}, fmt.Errorf("data dir: %w", err)
	}
	key, err := LoadOrCreateIdentity(filepath.Join(dir, IdentityFile))
	if err != nil {
		return nil, ids.PeerID{}, fmt.Errorf("identity: %w", err)
	}
	return key, ids.PeerIDFromKey(key.Public().(ed25519.PublicKey)), nil
}
