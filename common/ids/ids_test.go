package ids

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
)

func TestNormalizeAOR(t *testing.T) {
	tests := map[string]struct {
		in, want string
		bad      bool
	}{
		"plain":            {in: "sip:alice@example.net", want: "sip:alice@example.net"},
		"scheme and host":  {in: "SIP:alice@Example.NET", want: "sip:alice@example.net"},
		"user case kept":   {in: "sip:Alice@example.net", want: "sip:Alice@example.net"},
		"sips folds":       {in: "sips:alice@example.net", want: "sip:alice@example.net"},
		"bare":             {in: "alice@example.net", want: "sip:alice@example.net"},
		"params dropped":   {in: "sip:alice@example.net;transport=tcp?subject=x", want: "sip:alice@example.net"},
		"port dropped":     {in: "sip:alice@example.net:5070", want: "sip:alice@example.net"},
		"name-addr":        {in: `"Alice" <sip:alice@example.net>;tag=1`, want: "sip:alice@example.net"},
		"spaces trimmed":   {in: "  sip:alice@example.net ", want: "sip:alice@example.net"},
		"no user":          {in: "sip:example.net", bad: true},
		"empty host":       {in: "sip:alice@", bad: true},
		"other scheme":     {in: "tel:+15551234", bad: true},
		"crlf in user":     {in: "sip:ali\r\nce@example.net", bad: true},
		"space in user":    {in: "sip:al ice@example.net", bad: true},
		"angle in host":    {in: "sip:alice@exa<mple.net", bad: true},
		"unbalanced angle": {in: "<sip:alice@example.net", bad: true},
		"too long":         {in: "sip:" + strings.Repeat("a", MaxAORLen) + "@example.net", bad: true},
		"utf-8 user":       {in: "sip:zoë@example.net", want: "sip:zoë@example.net"},
		"invalid utf-8":    {in: "sip:\xffalice@example.net", bad: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := NormalizeAOR(tc.in)
			if tc.bad {
				if !errors.Is(err, ErrBadAOR) {
					t.Fatalf("NormalizeAOR(%q) = %q, %v; want ErrBadAOR", tc.in, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("NormalizeAOR(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
			if again, _ := NormalizeAOR(got); again != got {
				t.Fatalf("not idempotent: %q → %q", got, again)
			}
		})
	}
	if AORUser("sip:alice@example.net") != "alice" || AORHost("sip:alice@example.net") != "example.net" {
		t.Fatal("AORUser/AORHost")
	}
}

func TestPeerIDs(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(nil)
	id := PeerIDFromKey(pub)
	sum := sha256.Sum256(pub)
	if string(id[:]) != string(sum[:Len]) {
		t.Fatal("Peer-ID is not the first 16 bytes of SHA-256 of the key")
	}
	back, err := ParsePeerID(id.String())
	if err != nil || back != id {
		t.Fatalf("round trip: %v %v", back, err)
	}
	for _, bad := range []string{"", "00", strings.Repeat("zz", Len), id.String() + "00"} {
		if _, err := ParsePeerID(bad); err == nil {
			t.Errorf("ParsePeerID(%q) accepted", bad)
		}
	}
	var p PeerID
	if err := p.UnmarshalText([]byte(id.String())); err != nil || p != id || !(PeerID{}).IsZero() || id.IsZero() {
		t.Fatal("text form")
	}
	if ResourceIDFor(LocationName("sip:a@b")) == ResourceIDFor(ServiceName("sip:a@b")) {
		t.Fatal("resource kinds must not collide")
	}
}
