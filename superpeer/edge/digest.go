package edge

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/icholy/digest"

	"github.com/p2psip/p2psip/common/auth"
)

// Digest authentication errors. authStatus maps them to SIP statuses.
var (
	errNoAuth    = errors.New("no credentials")
	errStale     = errors.New("stale nonce")
	errBadDigest = errors.New("wrong digest response")
	errReplay    = errors.New("replayed nonce count")
	errRealm     = errors.New("wrong realm")
	errExpired   = errors.New("credentials expired")
)

// challenged reports errors answered with a fresh challenge (401/407);
// the others (replay, expired credentials) get 403: retrying the same
// credentials cannot help, and a challenge would only invite a loop.
//
// A wrong password is challenged again, as RFC 2617 §3.2.2 and common
// practice (Kamailio's www_challenge after a failed www_authorize) do: the
// user may have mistyped it. Credentials for another realm count as none
// for ours.
func challenged(err error) bool {
	return errors.Is(err, errNoAuth) || errors.Is(err, errStale) || errors.Is(err, errBadDigest) || errors.Is(err, errRealm)
}

// Nonce layout (base64url, unpadded): 8 bytes issue time (unix ns), 8
// bytes sequence number (two nonces issued in the same nanosecond differ),
// 16 bytes HMAC-SHA256 of the first 16 under a per-process key.
const (
	nonceRaw = 32
	nonceMAC = 16
)

// Replay tracking bounds.
const (
	// defaultNonceLifetime is how long a nonce is accepted (Kamailio's
	// nonce_expire default).
	defaultNonceLifetime = 5 * time.Minute
	// maxTrackedNonces bounds the nonce counts kept for replay checks;
	// past it the oldest nonces are forgotten and answered as stale (the
	// phone retries with a fresh challenge), never accepted again.
	maxTrackedNonces = 1 << 18
	// nonceBuckets divides the lifetime into buckets by issue time; whole
	// buckets are forgotten at once.
	nonceBuckets = 16
)

// digestAuth checks SIP digest credentials the way Kamailio's auth_ephemeral
// does: the digest username is the credential's "EXPIRY:USER" and the
// password its HMAC, both derived from the overlay secret, so no password
// is stored anywhere. Nonces are stateless (issue time + HMAC); replay is
// stopped by requiring each nonce's count (qop=auth) to grow, or a nonce
// without qop to be used once. Memory for that is bounded (see
// maxTrackedNonces). Safe for concurrent use.
type digestAuth struct {
	realm    string
	secret   []byte
	key      []byte // nonce HMAC key, per process
	lifetime time.Duration
	span     int64 // bucket width in ns
	now      func() time.Time
	seq      atomic.Uint64
	// macs holds HMAC-SHA256 states keyed with key: Reset restores the
	// keyed state, where hmac.New would hash the key anew per nonce.
	macs sync.Pool

	mu      sync.Mutex // guards the fields below
	buckets map[int64]map[[nonceMAC]byte]int
	tracked int
	// floor: nonces of buckets below it were forgotten and are stale.
	floor int64
}

func newDigestAuth(realm string, secret []byte, lifetime time.Duration, now func() time.Time) *digestAuth {
	if lifetime <= 0 {
		lifetime = defaultNonceLifetime
	}
	key := make([]byte, 32)
	rand.Read(key) //nolint:errcheck // never fails
	d := &digestAuth{
		realm: realm, secret: secret, key: key, lifetime: lifetime, now: now,
		span:    max(int64(lifetime)/nonceBuckets, 1),
		buckets: make(map[int64]map[[nonceMAC]byte]int),
	}
	d.macs.New = func() any { return hmac.New(sha256.New, d.key) }
	return d
}

// mac appends the HMAC of the nonce's first 16 bytes to dst.
func (d *digestAuth) mac(dst, data []byte) []byte {
	m := d.macs.Get().(hash.Hash)
	m.Reset()
	m.Write(data)
	dst = m.Sum(dst)
	d.macs.Put(m)
	return dst
}

// challenge is a WWW-Authenticate (or Proxy-Authenticate) value with a
// fresh nonce.
func (d *digestAuth) challenge(stale bool) string {
	c := digest.Challenge{Realm: d.realm, Nonce: d.nonce(d.now()), Algorithm: "MD5", QOP: []string{"auth"}, Stale: stale}
	return auth.FormatDigestChallenge(&c)
}

func (d *digestAuth) nonce(at time.Time) string {
	b := make([]byte, 16, nonceRaw)
	binary.BigEndian.PutUint64(b, uint64(at.UnixNano()))
	binary.BigEndian.PutUint64(b[8:], d.seq.Add(1))
	return base64.RawURLEncoding.EncodeToString(d.mac(b, b)[:nonceRaw])
}

// parseNonce validates a nonce we issued and returns its issue time and
// MAC (its identity for replay tracking).
func (d *digestAuth) parseNonce(n string) (time.Time, [nonceMAC]byte, bool) {
	var mac [nonceMAC]byte
	if len(n) != base64.RawURLEncoding.EncodedLen(nonceRaw) {
		return time.Time{}, mac, false
	}
	var raw [nonceRaw]byte
	if k, err := base64.RawURLEncoding.Decode(raw[:], []byte(n)); err != nil || k != nonceRaw {
		return time.Time{}, mac, false
	}
	var sum [sha256.Size]byte
	if subtle.ConstantTimeCompare(d.mac(sum[:0], raw[:16])[:nonceMAC], raw[16:]) != 1 {
		return time.Time{}, mac, false
	}
	copy(mac[:], raw[16:])
	return time.Unix(0, int64(binary.BigEndian.Uint64(raw[:8]))), mac, true
}

// check verifies an Authorization (or Proxy-Authorization) header value
// for method and returns the authenticated user (the USER of EXPIRY:USER).
// With track unset the nonce count is not checked or recorded (an ACK
// repeats its INVITE's credentials).
func (d *digestAuth) check(method, header string, track bool) (string, error) {
	if header == "" {
		return "", errNoAuth
	}
	cred, err := auth.ParseDigestCredentials(header)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errBadDigest, err)
	}
	if cred.Realm != d.realm {
		return "", errRealm
	}
	now := d.now()
	issued, mac, ok := d.parseNonce(cred.Nonce)
	if !ok || now.Sub(issued) > d.lifetime || issued.After(now.Add(time.Minute)) {
		return "", errStale
	}
	if a := strings.ToUpper(cred.Algorithm); a != "" && a != "MD5" {
		return "", fmt.Errorf("%w: algorithm %q", errBadDigest, cred.Algorithm)
	}
	expires, user, err := auth.ParseUsername(cred.Username)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errBadDigest, err)
	}
	chal := &digest.Challenge{Realm: d.realm, Nonce: cred.Nonce, Algorithm: cred.Algorithm}
	if cred.QOP != "" {
		if cred.QOP != "auth" || cred.Nc <= 0 {
			return "", fmt.Errorf("%w: qop %q nc %d", errBadDigest, cred.QOP, cred.Nc)
		}
		chal.QOP = []string{"auth"}
	}
	want, err := digest.Digest(chal, digest.Options{
		Method: method, URI: cred.URI, Username: cred.Username,
		Password: auth.Password(d.secret, cred.Username), Cnonce: cred.Cnonce, Count: cred.Nc,
	})
	if err != nil {
		return "", fmt.Errorf("%w: %v", errBadDigest, err)
	}
	if subtle.ConstantTimeCompare([]byte(want.Response), []byte(strings.ToLower(cred.Response))) != 1 {
		return "", errBadDigest
	}
	// Expiry only after the password matched: without it nobody learns
	// anything about a credential.
	if !expires.After(now) {
		return "", errExpired
	}
	if track {
		if err := d.use(mac, issued, cred.QOP, cred.Nc, now); err != nil {
			return "", err
		}
	}
	return user, nil
}

// use records a nonce count; a count that does not grow is a replay.
func (d *digestAuth) use(mac [nonceMAC]byte, issued time.Time, qop string, nc int, now time.Time) error {
	b := issued.UnixNano() / d.span
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pruneLocked(now)
	if b < d.floor {
		return errStale
	}
	m := d.buckets[b]
	if m == nil {
		m = make(map[[nonceMAC]byte]int)
		d.buckets[b] = m
	}
	prev, ok := m[mac]
	if ok && (qop == "" || nc <= prev) {
		return errReplay
	}
	if !ok {
		d.tracked++
	}
	m[mac] = nc
	return nil
}

// pruneLocked forgets buckets whose nonces have all expired, then the
// oldest ones while over maxTrackedNonces.
func (d *digestAuth) pruneLocked(now time.Time) {
	expired := (now.UnixNano() - int64(d.lifetime)) / d.span // buckets below are past their lifetime
	for b, m := range d.buckets {
		if b < expired {
			d.tracked -= len(m)
			delete(d.buckets, b)
		}
	}
	d.floor = max(d.floor, expired)
	current := now.UnixNano() / d.span
	for d.tracked > maxTrackedNonces {
		oldest := int64(-1)
		for b := range d.buckets {
			if oldest < 0 || b < oldest {
				oldest = b
			}
		}
		if oldest >= current {
			// Never forget the nonces being issued now: that would answer
			// every fresh challenge as stale until the bucket ends.
			return
		}
		d.tracked -= len(d.buckets[oldest])
		delete(d.buckets, oldest)
		d.floor = oldest + 1
	}
}

// trackedForTest is the number of nonces held for replay checks.
func (d *digestAuth) trackedForTest() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.tracked
}
