package auth

import (
	"reflect"
	"testing"

	"github.com/icholy/digest"
)

// sipAuthorization is what SIPp sends in the register benchmark.
const sipAuthorization = `Digest username="1795640000:load0",realm="example.net",cnonce="6b8b4567",nc=00000001,` +
	`qop=auth,uri="sip:example.net",nonce="AAABgK3x8bYAAAAAAAAAAcUxO2m1hNn0f1vPvx1yYzQ",response="1f0a3e7d2d5c5b1b0e7a4c0c2b1a9f8e",algorithm=MD5`

var credentialCases = []string{
	sipAuthorization,
	`Digest username="alice", realm="r", nonce="n", uri="sip:r", response="abc", qop=auth, nc=0000000a, cnonce="c", opaque="o", userhash=TRUE`,
	`digest   username = "a" ,realm="b"`,
	`Digest `,
	`Digest username="caf\u00e9"`,
	`Digest username="a\"b"`,
	`Digest username="unterminated`,
	`Digest username=`,
	`Digest =x`,
	`Digest username="a" realm="b"`,
	`Digest nc=zz`,
	`Digest nc=100000000`,
	"Digest username=\"a\",\trealm=\"b\"",
	`Basic dXNlcjpwYXNz`,
	`Digest username="a",`,
	`Digest username=a-b-c, x-y="z"`,
	``,
}

// TestParseDigestCredentials: the same result as the library, error or not.
func TestParseDigestCredentials(t *testing.T) {
	for _, s := range credentialCases {
		compareCredentials(t, s)
	}
	c, err := ParseDigestCredentials(sipAuthorization)
	if err != nil || c.Username != "1795640000:load0" || c.Nc != 1 || c.QOP != "auth" || c.Algorithm != "MD5" || c.URI != "sip:example.net" {
		t.Errorf("parsed %+v, %v", c, err)
	}
}

func compareCredentials(t *testing.T, s string) {
	t.Helper()
	want, werr := digest.ParseCredentials(s)
	got, gerr := ParseDigestCredentials(s)
	if (werr == nil) != (gerr == nil) || !reflect.DeepEqual(want, got) {
		t.Errorf("%q: got %+v, %v; the library: %+v, %v", s, got, gerr, want, werr)
	}
}

func FuzzParseDigestCredentials(f *testing.F) {
	for _, s := range credentialCases {
		f.Add(s)
	}
	f.Fuzz(compareCredentials)
}

var challengeCases = []digest.Challenge{
	{Realm: "example.net", Nonce: "AAABgK3x8bYAAAAAAAAAAcUxO2m1hNn0f1vPvx1yYzQ", Algorithm: "MD5", QOP: []string{"auth"}},
	{Realm: "example.net", Nonce: "n", Algorithm: "MD5", QOP: []string{"auth"}, Stale: true},
	{Realm: "r", Domain: []string{"sip:a", "sip:b"}, Nonce: "n", Opaque: "o", QOP: []string{"auth", "auth-int"}, Charset: "UTF-8", Userhash: true},
	{Realm: `quo"te`, Nonce: "n"},
	{Realm: "caf\u00e9", Nonce: "n"},
	{Realm: "tab\there", Nonce: `back\slash`},
	{},
}

// TestFormatDigestChallenge: the same text as the library.
func TestFormatDigestChallenge(t *testing.T) {
	for _, c := range challengeCases {
		if got, want := FormatDigestChallenge(&c), c.String(); got != want {
			t.Errorf("%+v: %q, the library %q", c, got, want)
		}
	}
}

func FuzzFormatDigestChallenge(f *testing.F) {
	for _, c := range challengeCases {
		f.Add(c.Realm, c.Nonce, c.Opaque, c.Algorithm, c.Charset, "auth", c.Stale, c.Userhash)
	}
	f.Fuzz(func(t *testing.T, realm, nonce, opaque, algorithm, charset, qop string, stale, userhash bool) {
		c := digest.Challenge{Realm: realm, Nonce: nonce, Opaque: opaque, Algorithm: algorithm, Charset: charset, Stale: stale, Userhash: userhash}
		if qop != "" {
			c.QOP = []string{qop, qop}
			c.Domain = []string{qop}
		}
		if got, want := FormatDigestChallenge(&c), c.String(); got != want {
			t.Errorf("%+v: %q, the library %q", c, got, want)
		}
	})
}

func BenchmarkParseDigestCredentials(b *testing.B) {
	b.Run("library", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := digest.ParseCredentials(sipAuthorization); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("auth", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ParseDigestCredentials(sipAuthorization); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkFormatDigestChallenge(b *testing.B) {
	c := challengeCases[0]
	b.Run("library", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = c.String()
		}
	})
	b.Run("auth", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = FormatDigestChallenge(&c)
		}
	})
}
