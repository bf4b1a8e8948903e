package fallback

import (
	"bytes"
	"testing"

	"github.com/p2psip/p2psip/common/ids"
)

func TestHeader(t *testing.T) {
	var src ids.PeerID
	for i := range src {
		src[i] = byte(i + 1)
	}
	payload := []byte("INVITE sip:bob@example.net SIP/2.0\r\n\r\n")
	b := Encode(src, payload)
	if len(b) != HeaderLen+len(payload) || string(b[:4]) != "P2R1" {
		t.Fatalf("encoded % x", b[:HeaderLen])
	}
	got, p, err := Decode(b)
	if err != nil || got != src || !bytes.Equal(p, payload) {
		t.Fatalf("Decode = %v, %q, %v", got, p, err)
	}
	bad := map[string][]byte{
		"empty":         nil,
		"magic only":    []byte("P2R1"),
		"short id":      append([]byte("P2R1"), src[:10]...),
		"no payload":    b[:HeaderLen],
		"bad magic":     append([]byte("P2R2"), b[4:]...),
		"lower magic":   append([]byte("p2r1"), b[4:]...),
		"raw SIP":       payload,
		"stun-ish junk": {0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13},
	}
	for name, b := range bad {
		if _, _, err := Decode(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
