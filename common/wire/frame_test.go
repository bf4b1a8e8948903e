package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
)

func TestFrameRoundTrip(t *testing.T) {
	tests := map[string]Frame{
		"plain":        {Header: Header{Type: TypeFetch, TxID: 7}, Body: []byte{1, 2, 3}},
		"empty body":   {Header: Header{Type: TypePing, TxID: 1 << 60}},
		"response":     {Header: Header{Type: TypeStore, Flags: FlagResponse | FlagError, TxID: 9}, Body: []byte("x")},
		"routed":       {Header: Header{Type: TypeTunnel, Flags: FlagRouted, Hops: 2, Src: ids.PeerID{1}, Dst: ids.PeerID{2}, Via: ids.PeerID{3}}, Body: []byte("INVITE sip:bob@example.net SIP/2.0\r\n\r\n")},
		"routed empty": {Header: Header{Type: TypeTunnel, Flags: FlagRouted, Hops: 3}},
	}
	for name, f := range tests {
		t.Run(name, func(t *testing.T) {
			f.Version = Version
			b, err := Encode(&f)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != HeaderLen(f.Flags)+len(f.Body) {
				t.Fatalf("encoded %d bytes, want %d", len(b), HeaderLen(f.Flags)+len(f.Body))
			}
			got, err := ReadFrame(bufio.NewReader(bytes.NewReader(b)), 0)
			if err != nil {
				t.Fatal(err)
			}
			if got.Header != f.Header || !bytes.Equal(got.Body, f.Body) {
				t.Fatalf("round trip: got %+v, want %+v", got, f)
			}
			got2, err := Decode(b)
			if err != nil || got2.Header != f.Header {
				t.Fatalf("Decode: %v %+v", err, got2)
			}
		})
	}
}

func TestReadFrameRejects(t *testing.T) {
	good, _ := Encode(&Frame{Header: Header{Type: TypePing, TxID: 1}})
	withLen := func(n uint32) []byte {
		b := binary.BigEndian.AppendUint32(nil, n)
		return append(b, make([]byte, 16)...)
	}
	mutate := func(i int, v byte) []byte {
		b := append([]byte(nil), good...)
		b[i] = v
		return b
	}
	tests := map[string]struct {
		in   []byte
		want error
	}{
		"oversized":      {withLen(MaxFrameSize + 1), ErrTooLarge},
		"huge":           {withLen(0xffffffff), ErrTooLarge},
		"short header":   {withLen(3), ErrMalformed},
		"bad version":    {mutate(4, 9), ErrVersion},
		"unknown flags":  {mutate(6, 0x80), ErrMalformed},
		"too many hops":  {mutate(7, MaxHops+1), ErrHopLimit},
		"truncated body": {good[:len(good)-2], io.ErrUnexpectedEOF},
		"routed short":   {append(binary.BigEndian.AppendUint32(nil, 12), Version, byte(TypeTunnel), byte(FlagRouted), 0, 0, 0, 0, 0, 0, 0, 0, 1), ErrMalformed},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ReadFrame(bufio.NewReader(bytes.NewReader(tc.in)), 0)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestForwardCapsHops(t *testing.T) {
	h := Header{}
	for i := 1; i <= MaxHops; i++ {
		if err := h.Forward(); err != nil || int(h.Hops) != i {
			t.Fatalf("hop %d: %v (hops %d)", i, err, h.Hops)
		}
	}
	if err := h.Forward(); !errors.Is(err, ErrHopLimit) {
		t.Fatalf("fourth hop: %v, want ErrHopLimit", err)
	}
	if h.Hops != MaxHops {
		t.Fatalf("a refused hop changed the counter to %d", h.Hops)
	}
}

func TestBodyLimits(t *testing.T) {
	// Deep nesting is refused before it costs stack.
	deep := bytes.Repeat([]byte{0x81}, 100) // array of array of ...
	deep = append(deep, 0x00)
	var v any
	if err := Unmarshal(deep, &v); !errors.Is(err, ErrMalformed) {
		t.Fatalf("deep nesting: %v", err)
	}
	// Indefinite lengths are refused.
	if err := Unmarshal([]byte{0x9f, 0x01, 0xff}, &v); !errors.Is(err, ErrMalformed) {
		t.Fatalf("indefinite length: %v", err)
	}
	// A message round-trips.
	in := StoreReq{Record: record.Record{Kind: record.KindLocation, Name: "sip:a@example.net"}}
	b, err := Marshal(&in)
	if err != nil {
		t.Fatal(err)
	}
	var out StoreReq
	if err := Unmarshal(b, &out); err != nil || out.Record.Name != in.Record.Name {
		t.Fatalf("round trip: %v %+v", err, out)
	}
}

func TestErrorIs(t *testing.T) {
	err := error(Errorf(CodeForbidden, "no"))
	if !errors.Is(err, &Error{Code: CodeForbidden}) || errors.Is(err, &Error{Code: CodeNotFound}) {
		t.Fatal("errors.Is must match on the code")
	}
	if CodeOf(errors.New("x")) != CodeInternal || CodeOf(err) != CodeForbidden {
		t.Fatal("CodeOf")
	}
}

func FuzzReadFrame(f *testing.F) {
	for _, fr := range []Frame{
		{Header: Header{Type: TypePing, TxID: 1}},
		{Header: Header{Type: TypeTunnel, Flags: FlagRouted, Hops: 1}, Body: []byte("SIP/2.0 200 OK\r\n\r\n")},
		{Header: Header{Type: TypeStore, Flags: FlagResponse | FlagError}, Body: []byte{0xa2, 0x01, 0x19, 0x01, 0x93, 0x02, 0x61, 0x78}},
	} {
		b, _ := Encode(&fr)
		f.Add(b)
	}
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		// DecodeBody (the link's reader) takes any body without panicking
		// and agrees with ReadFrame on a whole frame.
		var direct *Frame
		if len(b) >= 4 {
			direct, _ = DecodeBody(bytes.Clone(b[4:]))
		}
		fr, err := ReadFrame(bufio.NewReader(bytes.NewReader(b)), 64<<10)
		if err != nil {
			return
		}
		if int(binary.BigEndian.Uint32(b)) == len(b)-4 && (direct == nil || direct.Header != fr.Header || !bytes.Equal(direct.Body, fr.Body)) {
			t.Fatal("DecodeBody and ReadFrame disagree on a whole frame")
		}
		enc, err := Encode(fr)
		if err != nil {
			t.Fatalf("decoded frame does not re-encode: %v", err)
		}
		fr2, err := Decode(enc)
		if err != nil || fr2.Header != fr.Header || !bytes.Equal(fr2.Body, fr.Body) {
			t.Fatalf("re-decode mismatch: %v", err)
		}
		// Bodies of every message type decode without panicking.
		for _, v := range []any{&Hello{}, &StoreReq{}, &FetchResp{}, &ReplicateReq{}, &DigestReq{}, &Error{}, &PromoteReq{}, &PromoteResp{}, &DialBackReq{}, &Leave{}, &MembersChange{}} {
			_ = Unmarshal(fr.Body, v)
		}
	})
}

func BenchmarkEncodeTunnel(b *testing.B) {
	f := &Frame{Header: Header{Type: TypeTunnel, Flags: FlagRouted, Hops: 1}, Body: make([]byte, 800)}
	buf := make([]byte, 0, 1024)
	b.SetBytes(int64(len(f.Body)))
	for b.Loop() {
		buf = AppendFrame(buf[:0], f)
	}
}

func BenchmarkReadTunnel(b *testing.B) {
	enc, _ := Encode(&Frame{Header: Header{Type: TypeTunnel, Flags: FlagRouted, Hops: 1}, Body: make([]byte, 800)})
	r := bytes.NewReader(enc)
	br := bufio.NewReader(r)
	b.SetBytes(int64(len(enc)))
	for b.Loop() {
		r.Reset(enc)
		br.Reset(r)
		if _, err := ReadFrame(br, 0); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshalStoreReq(b *testing.B) {
	req := &StoreReq{Record: record.Record{Kind: record.KindLocation, Name: "sip:alice@example.net", Entries: []record.Entry{{
		Key: "sip:alice@192.0.2.1:5060", CallID: "abc@192.0.2.1", CSeq: 7, Version: 1, Expires: 1 << 31, Writer: "alice",
		Contact: &record.Contact{URI: "sip:alice@192.0.2.1:5060", Q: 1000},
	}}}}
	for b.Loop() {
		body, err := Marshal(req)
		if err != nil {
			b.Fatal(err)
		}
		var out StoreReq
		if err := Unmarshal(body, &out); err != nil {
			b.Fatal(err)
		}
	}
}
