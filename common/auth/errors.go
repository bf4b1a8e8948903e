package auth

import "errors"

// Exported sentinels: callers branch on these (errors.Is) and map them to
// peer-protocol or SIP error codes.
var (
	// ErrMalformed: a credential username or file does not have the
	// expected form.
	ErrMalformed = errors.New("malformed credentials")
	// ErrExpired: the credential's expiry is not after now.
	ErrExpired = errors.New("credentials expired")
	// ErrBadPassword: the password is not the HMAC of the username.
	ErrBadPassword = errors.New("bad password")
	// ErrBadUser: a user name that ValidUser rejects.
	ErrBadUser = errors.New("bad user name")
	// ErrShortSecret: an overlay secret shorter than MinSecretLen (or, where
	// a secret is used directly as a key, an empty one).
	ErrShortSecret = errors.New("overlay secret too short")
	// ErrNoPeerCert: the TLS peer presented no certificate.
	ErrNoPeerCert = errors.New("no peer certificate")
	// ErrBadProof: a mesh proof that does not match this session, these
	// Peer-IDs and the overlay secret.
	ErrBadProof = errors.New("bad mesh proof")
)

// Unexported sentinels: nobody branches on these, but tests may.
var (
	errBadTTL     = errors.New("ttl out of range")
	errNotEd25519 = errors.New("certificate key is not Ed25519")
	errTooLarge   = errors.New("file too large")
	errNoOverlay  = errors.New("empty overlay name")
	errNoKey      = errors.New("no key")
)
