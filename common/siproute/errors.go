package siproute

import "errors"

// ErrNotFound is what a Locator wraps when the AoR has no location record;
// the router answers 404 for it. Any other Lookup error is answered 480
// (and an empty contact list as well).
var ErrNotFound = errors.New("siproute: not found")

// Sentinels for internal paths; callers see them only in logs and in the
// error returned by Serve.
var (
	errNotServing  = errors.New("siproute: not serving")
	errPeerTimeout = errors.New("siproute: tunnel connection not ready")
	errTooLarge    = errors.New("siproute: message too large")
	errFraming     = errors.New("siproute: bad message framing")
	errFakeAddr    = errors.New("siproute: refusing to dial a tunnel address")
)
