package record

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

// sampleRecords holds one realistic valid record of each kind, normalized.
func sampleRecords() map[string]*Record {
	inst := contact(uriB, "c2@ua", 7, v0+3)
	inst.Contact.Instance = instA
	inst.Contact.RegID = 1
	inst.Contact.Flow = "tcp 198.51.100.7:40122"
	inst.Key = instA
	loc := locRecord(contact(uriA, "c1@ua", 3, v0), inst, tombstone(contact("sip:alice@192.0.2.50", "c3@ua", 1, v0), v0+9))
	loc.Entries[2].Contact = nil
	loc.Normalize()
	svc := svcRecord(provider(3, v0), provider(4, v0+1))
	svc.Entries[1].Provider.Addrs = append(svc.Entries[1].Provider.Addrs, "[2001:db8::1]:3478")
	svc.Normalize()
	return map[string]*Record{
		"location": loc,
		"service":  svc,
		"peer":     peerRecord(5, attachment(5, v0)),
		"empty":    locRecord(),
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for name, r := range sampleRecords() {
		t.Run(name, func(t *testing.T) {
			if err := r.Validate(); err != nil {
				t.Fatalf("sample invalid: %v", err)
			}
			b, err := Encode(r)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, r) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, r)
			}
			b2, err := Encode(got)
			if err != nil || !bytes.Equal(b, b2) {
				t.Fatalf("re-encoding differs (%v)", err)
			}
			if got.Digest() != r.Digest() {
				t.Fatal("digest changed across round trip")
			}
		})
	}
}

func TestEncodingShape(t *testing.T) {
	r := peerRecord(5, attachment(5, v0))
	b, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[uint64]any
	if err := cbor.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if k, ok := m[1].(uint64); !ok || k != uint64(KindPeer) {
		t.Fatalf("kind encoded as %T %v, want unsigned integer 3", m[1], m[1])
	}
	entries := m[3].([]any)
	e := entries[0].(map[any]any)
	p := e[uint64(10)].(map[any]any)
	if id, ok := p[uint64(1)].([]byte); !ok || len(id) != 16 {
		t.Fatalf("peer id encoded as %T %v, want 16-byte string", p[uint64(1)], p[uint64(1)])
	}
	if _, ok := e[uint64(6)]; ok {
		t.Fatal("false Removed was not omitted")
	}
}

func TestDigest(t *testing.T) {
	a := locRecord(contact(uriA, "c", 1, v0))
	if a.Digest() != a.Clone().Digest() {
		t.Fatal("equal records, different digests")
	}
	b := a.Clone()
	b.Entries[0].Contact.Q = 500
	if a.Digest() == b.Digest() {
		t.Fatal("different records, same digest")
	}
	empty, emptied := locRecord(), locRecord(contact(uriA, "c", 1, v0))
	emptied.Entries = emptied.Entries[:0]
	if empty.Digest() != emptied.Digest() {
		t.Fatal("nil and empty entry lists hash differently")
	}
	if (*Record)(nil).Digest() != 0 {
		t.Fatal("Digest(nil) != 0")
	}
}

func TestDecodeNormalizes(t *testing.T) {
	a1, a2, b1 := contact(uriA, "ca", 1, v0), contact(uriA, "ca", 2, v0), contact(uriB, "cb", 1, v0)
	b, err := EncMode().Marshal(locRecord(b1, a1, a2))
	if err != nil {
		t.Fatal(err)
	}
	r, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Entry{a2, b1}; !reflect.DeepEqual(r.Entries, want) {
		t.Fatalf("entries = %+v, want %+v", r.Entries, want)
	}
}

func TestDecodeRejects(t *testing.T) {
	valid, err := Encode(sampleRecords()["location"])
	if err != nil {
		t.Fatal(err)
	}
	mustMarshal := func(v any) []byte {
		b, err := EncMode().Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	deep := bytes.Repeat([]byte{0x81}, 20) // [[[[...
	deep = append(deep, 0x01)
	tests := map[string]struct {
		in   []byte
		want error
	}{
		"empty":          {in: nil, want: ErrInvalid},
		"truncated":      {in: valid[:len(valid)/2], want: ErrInvalid},
		"trailing bytes": {in: append(append([]byte{}, valid...), 0x00), want: ErrInvalid},
		"garbage":        {in: []byte("REGISTER sip:example.net SIP/2.0\r\n"), want: ErrInvalid},
		"array not map":  {in: []byte{0x83, 0x01, 0x60, 0x80}, want: ErrInvalid},
		"too large": {in: append([]byte{0x5a, 0, 2, 0, 0}, make([]byte, MaxEncodedLen)...),
			want: ErrTooLarge},
		"duplicate map key": {in: []byte{0xa2, 0x01, 0x01, 0x01, 0x02}, want: ErrInvalid},
		"indefinite map": {in: []byte{0xbf, 0x01, 0x03, 0x02, 0x61, 'x', 0xff},
			want: ErrInvalid},
		"indefinite string": {in: []byte{0xa2, 0x01, 0x02, 0x02, 0x7f, 0x61, 't', 0xff}, want: ErrInvalid},
		"tag":               {in: []byte{0xc1, 0xa0}, want: ErrInvalid},
		"too deep":          {in: deep, want: ErrInvalid},
		"kind overflow":     {in: []byte{0xa1, 0x01, 0x19, 0x01, 0x00}, want: ErrInvalid},
		"invalid utf8 name": {in: []byte{0xa2, 0x01, 0x02, 0x02, 0x61, 0xff}, want: ErrInvalid},
		"fails validation": {in: mustMarshal(&Record{Kind: KindLocation, Name: "sip:a@b",
			Entries: []Entry{{Key: "k", Contact: &Contact{URI: "sip:x\r\n@y"}}}}), want: ErrInvalid},
		"too many entries for the array limit": {in: append([]byte{0xa3, 0x01, 0x02, 0x02, 0x64, 't', 'u', 'r', 'n', 0x03,
			0x99, 0x04, 0x01}, bytes.Repeat([]byte{0xa0}, 1025)...), want: ErrInvalid},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := Decode(tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Decode = %+v, %v; want %v", r, err, tc.want)
			}
		})
	}
}

func TestEncodeRejectsOversize(t *testing.T) {
	r := svcRecord()
	for i := range MaxEntries {
		e := provider(byte(i+1), v0)
		e.Provider.Addrs = nil
		for j := range maxAddrs {
			e.Provider.Addrs = append(e.Provider.Addrs, fmt.Sprintf("%s:%d", strings.Repeat("h", MaxFieldLen-6), j))
		}
		r.Entries = append(r.Entries, e)
	}
	if err := r.Validate(); err != nil {
		t.Fatalf("record should be valid, only too large: %v", err)
	}
	if _, err := Encode(r); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Encode error = %v, want ErrTooLarge", err)
	}
	if _, err := Encode(nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Encode(nil) error = %v, want ErrInvalid", err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, r := range sampleRecords() {
		b, err := Encode(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
		f.Add(b[:len(b)-1])
	}
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Add([]byte("garbage that is not cbor"))
	f.Add([]byte{0xa2, 0x01, 0x01, 0x01, 0x02})
	f.Add([]byte{0xbf, 0x01, 0x03, 0x02, 0x61, 'x', 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err != nil {
			if r != nil {
				t.Fatal("Decode returned a record with an error")
			}
			return
		}
		b2, err := Encode(r)
		if errors.Is(err, ErrTooLarge) {
			// Lenient input forms (a short byte string for a Peer-ID)
			// can grow on re-encoding; refusing to re-send is correct.
			return
		}
		if err != nil {
			t.Fatalf("re-encode decoded record: %v", err)
		}
		r2, err := Decode(b2)
		if err != nil {
			t.Fatalf("decode re-encoded record: %v", err)
		}
		if !reflect.DeepEqual(r, r2) {
			t.Fatalf("round trip differs:\n%+v\n%+v", r, r2)
		}
		if b3, err := Encode(r2); err != nil || !bytes.Equal(b2, b3) {
			t.Fatalf("encoding not stable (%v)", err)
		}
	})
}

func benchRecord(n int) *Record {
	r := locRecord()
	for i := range n {
		r.Entries = append(r.Entries, contact(fmt.Sprintf("sip:alice@192.0.2.%d:5060", i), fmt.Sprintf("call-%d", i), 1, v0))
	}
	r.Normalize()
	return r
}

func BenchmarkMerge(b *testing.B) {
	dst := benchRecord(16)
	src := dst.Clone()
	for i := range src.Entries { // half newer, half the same
		if i%2 == 0 {
			src.Entries[i].CSeq++
		}
	}
	b.Run("changes", func(b *testing.B) {
		for b.Loop() {
			d := dst.Clone()
			if _, err := Merge(d, src); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("no-op", func(b *testing.B) {
		d := dst.Clone()
		if _, err := Merge(d, src); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := Merge(d, src); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	r := benchRecord(8)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	enc, err := Encode(benchRecord(8))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(enc)))
	for b.Loop() {
		if _, err := Decode(enc); err != nil {
			b.Fatal(err)
		}
	}
}
