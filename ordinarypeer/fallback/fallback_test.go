package fallback

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/ids"
)

func TestHeader(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	src := ids.PeerIDFromKey(key.Public().(ed25519.PublicKey))
	dst := ids.PeerID{9, 9, 9}
	now := time.Now()
	const from = "203.0.113.12:50000" // the sender's relayed address
	payload := []byte("INVITE sip:bob@example.net SIP/2.0\r\n\r\n")
	b := Encode(key, dst, from, now, payload)
	if len(b) != HeaderLen+len(payload) || string(b[:4]) != "P2R2" {
		t.Fatalf("encoded % x", b[:HeaderLen])
	}
	got, p, err := Decode(b, dst, from, now)
	if err != nil || got != src || !bytes.Equal(p, payload) {
		t.Fatalf("Decode = %v, %q, %v", got, p, err)
	}
	// Within the skew either way.
	for _, d := range []time.Duration{MaxSkew - time.Second, -MaxSkew + time.Second} {
		if _, _, err := Decode(b, dst, from, now.Add(d)); err != nil {
			t.Errorf("received %v after sending: %v", d, err)
		}
	}

	_, other, _ := ed25519.GenerateKey(rand.Reader)
	flip := func(i int) []byte {
		c := bytes.Clone(b)
		c[i] ^= 1
		return c
	}
	// Another key's header over the same payload: valid for its own
	// Peer-ID only, so swapping in a victim's public key breaks it.
	forged := Encode(other, dst, from, now, payload)
	copy(forged[len(Magic):], key.Public().(ed25519.PublicKey))
	bad := map[string][]byte{
		"empty":             nil,
		"magic only":        []byte("P2R2"),
		"no payload":        b[:HeaderLen],
		"unsigned v1":       append(append([]byte("P2R1"), src[:]...), payload...),
		"lower magic":       append([]byte("p2r2"), b[4:]...),
		"raw SIP":           payload,
		"payload changed":   flip(len(b) - 1),
		"time changed":      flip(len(Magic) + ed25519.PublicKeySize + 7),
		"signature changed": flip(HeaderLen - 1),
		"key changed":       flip(len(Magic)),
		"victim's key":      forged,
		"stun-ish junk":     {0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13},
	}
	for name, b := range bad {
		if _, _, err := Decode(b, dst, from, now); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, _, err := Decode(b, ids.PeerID{1}, from, now); err == nil {
		t.Error("a datagram for another peer was accepted (a receiver could replay what it got to others)")
	}
	if _, _, err := Decode(b, dst, "203.0.113.13:50000", now); err == nil {
		t.Error("a datagram replayed from another relayed address was accepted (the receiver would answer there)")
	}
	for _, d := range []time.Duration{MaxSkew + time.Second, -MaxSkew - time.Second} {
		if _, _, err := Decode(b, dst, from, now.Add(d)); err == nil {
			t.Errorf("received %v after sending: accepted (a replay)", d)
		}
	}
}

func BenchmarkSign(b *testing.B) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	payload := bytes.Repeat([]byte{'x'}, 900) // an INVITE with SDP
	dst := ids.PeerID{1}
	now := time.Now()
	const from = "203.0.113.12:50000"
	// The reference: version 1's unsigned framing (a header copy).
	b.Run("unsigned-reference", func(b *testing.B) {
		for b.Loop() {
			out := make([]byte, 0, 20+len(payload))
			out = append(append(append(out, "P2R1"...), dst[:]...), payload...)
			_ = out
		}
	})
	b.Run("encode", func(b *testing.B) {
		for b.Loop() {
			Encode(key, dst, from, now, payload)
		}
	})
	enc := Encode(key, dst, from, now, payload)
	b.Run("decode", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := Decode(enc, dst, from, now); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// FuzzDecode: whatever arrives at a relayed address (anyone with TURN
// credentials can send there) is refused or decoded without a panic, and
// only a datagram signed for us by the key it carries is accepted, its
// sender being that key's Peer-ID.
func FuzzDecode(f *testing.F) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	self := ids.PeerID{9, 9, 9}
	now := time.Unix(1_800_000_000, 0)
	const from = "203.0.113.12:50000"
	f.Add(Encode(key, self, from, now, []byte("INVITE sip:bob@example.net SIP/2.0\r\n\r\n")))
	f.Add(Encode(key, ids.PeerID{1}, from, now, []byte("x")))
	f.Add([]byte("P2R1" + string(make([]byte, 16)) + "SIP/2.0 200 OK\r\n\r\n"))
	f.Add([]byte("P2R2"))
	f.Fuzz(func(t *testing.T, b []byte) {
		src, payload, err := Decode(b, self, from, now)
		if err != nil {
			return
		}
		if len(payload) == 0 || len(b) != HeaderLen+len(payload) {
			t.Fatalf("accepted %d bytes with a %d-byte payload", len(b), len(payload))
		}
		pub := ed25519.PublicKey(b[len(Magic) : len(Magic)+ed25519.PublicKeySize])
		if src != ids.PeerIDFromKey(pub) {
			t.Fatalf("sender %s is not the carried key's", src.Short())
		}
	})
}
