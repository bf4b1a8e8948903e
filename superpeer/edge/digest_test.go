package edge

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/icholy/digest"

	"github.com/p2psip/p2psip/common/auth"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// answer computes the Authorization value a phone sends for chal.
func answer(t *testing.T, chal, method, username, password string, nc int) string {
	t.Helper()
	c, err := digest.ParseChallenge(chal)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := digest.Digest(c, digest.Options{Method: method, URI: "sip:example.net", Username: username, Password: password, Count: nc})
	if err != nil {
		t.Fatal(err)
	}
	return cred.String()
}

func TestDigest(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	d := newDigestAuth("example.net", testSecret, time.Minute, clock)
	cred, err := auth.Issue(testSecret, "alice", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	old, err := auth.Issue(testSecret, "alice", time.Second, now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	other := newDigestAuth("other.net", testSecret, time.Minute, clock)

	for name, tc := range map[string]struct {
		header func() string
		track  bool
		user   string
		err    error
	}{
		"valid":        {header: func() string { return answer(t, d.challenge(false), "REGISTER", cred.Username, cred.Password, 1) }, track: true, user: "alice"},
		"none":         {header: func() string { return "" }, err: errNoAuth},
		"wrong pass":   {header: func() string { return answer(t, d.challenge(false), "REGISTER", cred.Username, "nope", 1) }, err: errBadDigest},
		"wrong method": {header: func() string { return answer(t, d.challenge(false), "INVITE", cred.Username, cred.Password, 1) }, err: errBadDigest},
		"expired":      {header: func() string { return answer(t, d.challenge(false), "REGISTER", old.Username, old.Password, 1) }, err: errExpired},
		"other realm":  {header: func() string { return answer(t, other.challenge(false), "REGISTER", cred.Username, cred.Password, 1) }, err: errRealm},
		"foreign nonce": {header: func() string {
			h := answer(t, other.challenge(false), "REGISTER", cred.Username, cred.Password, 1)
			return strings.Replace(h, `realm="other.net"`, `realm="example.net"`, 1)
		}, err: errStale},
		"not ephemeral": {header: func() string {
			return answer(t, d.challenge(false), "REGISTER", "alice", auth.Password(testSecret, "alice"), 1)
		}, err: errBadDigest},
		"garbage": {header: func() string { return "Digest nc=zz" }, err: errBadDigest},
		"basic":   {header: func() string { return "Basic YWxpY2U6cHc=" }, err: errBadDigest},
	} {
		t.Run(name, func(t *testing.T) {
			user, err := d.check("REGISTER", tc.header(), tc.track)
			if !errors.Is(err, tc.err) || user != tc.user {
				t.Fatalf("check = %q, %v; want %q, %v", user, err, tc.user, tc.err)
			}
		})
	}

	t.Run("replay", func(t *testing.T) {
		chal := d.challenge(false)
		h1 := answer(t, chal, "REGISTER", cred.Username, cred.Password, 1)
		if _, err := d.check("REGISTER", h1, true); err != nil {
			t.Fatal(err)
		}
		if _, err := d.check("REGISTER", h1, true); !errors.Is(err, errReplay) {
			t.Fatalf("same nc again: %v", err)
		}
		// An ACK repeats credentials without counting them.
		if _, err := d.check("REGISTER", h1, false); err != nil {
			t.Fatalf("untracked: %v", err)
		}
		h2 := answer(t, chal, "REGISTER", cred.Username, cred.Password, 2)
		if _, err := d.check("REGISTER", h2, true); err != nil {
			t.Fatalf("nc 2: %v", err)
		}
		if _, err := d.check("REGISTER", h1, true); !errors.Is(err, errReplay) {
			t.Fatalf("nc 1 after 2: %v", err)
		}
	})

	t.Run("stale", func(t *testing.T) {
		h := answer(t, d.challenge(false), "REGISTER", cred.Username, cred.Password, 1)
		now = now.Add(2 * time.Minute)
		defer func() { now = now.Add(-2 * time.Minute) }()
		if _, err := d.check("REGISTER", h, true); !errors.Is(err, errStale) {
			t.Fatalf("old nonce: %v", err)
		}
		if !strings.Contains(d.challenge(true), "stale=true") {
			t.Error("stale challenge without stale=true")
		}
	})

	t.Run("unique nonces", func(t *testing.T) {
		seen := map[string]bool{}
		for range 1000 {
			n := d.nonce(now)
			if seen[n] {
				t.Fatal("nonce issued twice at one instant")
			}
			seen[n] = true
		}
	})
}

// TestDigestTrackingBounded: nonce counts are forgotten with their
// lifetime, so replay tracking does not grow without bound.
func TestDigestTrackingBounded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	d := newDigestAuth("example.net", testSecret, time.Minute, func() time.Time { return now })
	cred, _ := auth.Issue(testSecret, "alice", 24*time.Hour, now)
	for i := range 100 {
		h := answer(t, d.challenge(false), "REGISTER", cred.Username, cred.Password, 1)
		if _, err := d.check("REGISTER", h, true); err != nil {
			t.Fatal(i, err)
		}
		now = now.Add(time.Second)
	}
	if n := d.trackedForTest(); n > 70 {
		t.Errorf("%d nonces tracked for a 1-minute lifetime at 1/s", n)
	}
}

func TestChallenged(t *testing.T) {
	for err, want := range map[error]bool{
		errNoAuth: true, errStale: true, errBadDigest: true, errRealm: true,
		errReplay: false, errExpired: false,
	} {
		if challenged(err) != want {
			t.Errorf("challenged(%v) = %v", err, !want)
		}
	}
}

// BenchmarkNonce issues and verifies a nonce, the per-REGISTER cost of
// the stateless nonces, beside the same with a fresh hmac.New per MAC (how
// it was done before the pooled keyed states).
func BenchmarkNonce(b *testing.B) {
	d := newDigestAuth("example.net", []byte("secret"), 0, time.Now)
	b.Run("pooled", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, ok := d.parseNonce(d.nonce(time.Now())); !ok {
				b.Fatal("nonce refused")
			}
		}
	})
	b.Run("reference-hmac-new", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			raw := make([]byte, 16, nonceRaw)
			binary.BigEndian.PutUint64(raw, uint64(time.Now().UnixNano()))
			m := hmac.New(sha256.New, d.key)
			m.Write(raw)
			n := base64.RawURLEncoding.EncodeToString(m.Sum(raw)[:nonceRaw])
			back, _ := base64.RawURLEncoding.DecodeString(n)
			m = hmac.New(sha256.New, d.key)
			m.Write(back[:16])
			if subtle.ConstantTimeCompare(m.Sum(nil)[:nonceMAC], back[16:]) != 1 {
				b.Fatal("nonce refused")
			}
		}
	})
}
