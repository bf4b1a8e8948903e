package record

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestNewer(t *testing.T) {
	base := contact(uriA, "call-1", 10, v0)
	with := func(f func(e *Entry)) Entry {
		e := base.clone()
		f(&e)
		return e
	}
	tests := map[string]struct {
		a, b Entry
		want bool // Newer(a, b); Newer(b, a) must then be false
		tied bool // neither is newer
	}{
		"same call-id higher cseq wins despite lower version": {
			a:    with(func(e *Entry) { e.CSeq = 11; e.Version = v0 - 5e9 }),
			b:    base,
			want: true,
		},
		"same call-id lower cseq loses despite higher version": {
			a: with(func(e *Entry) { e.CSeq = 9; e.Version = v0 + 5e9 }),
			b: base,
		},
		"different call-id higher version wins despite lower cseq": {
			a:    with(func(e *Entry) { e.CallID = "call-2"; e.CSeq = 1; e.Version = v0 + 1 }),
			b:    base,
			want: true,
		},
		"different call-id lower version loses despite higher cseq": {
			a: with(func(e *Entry) { e.CallID = "call-2"; e.CSeq = 500; e.Version = v0 - 1 }),
			b: base,
		},
		"empty call-ids compare by version": {
			a:    with(func(e *Entry) { e.CallID = ""; e.CSeq = 1; e.Version = v0 + 1 }),
			b:    with(func(e *Entry) { e.CallID = ""; e.CSeq = 2 }),
			want: true,
		},
		"equal version higher cseq wins": {
			a:    with(func(e *Entry) { e.CallID = "call-2"; e.CSeq = 11 }),
			b:    base,
			want: true,
		},
		"tombstone with next cseq beats the registration": {
			a:    tombstone(base, v0+1),
			b:    base,
			want: true,
		},
		"tombstone beats late copy with skewed higher version": {
			a:    tombstone(base, v0-10e9),
			b:    base,
			want: true,
		},
		"re-registration after tombstone beats it": {
			a:    with(func(e *Entry) { e.CSeq = 12; e.Version = v0 + 2 }),
			b:    tombstone(base, v0+1),
			want: true,
		},
		"reboot after tombstone beats it": {
			a:    with(func(e *Entry) { e.CallID = "call-2"; e.CSeq = 1; e.Version = v0 + 2 }),
			b:    tombstone(base, v0+1),
			want: true,
		},
		"tie except removed: tombstone wins": {
			a:    with(func(e *Entry) { e.Removed = true }),
			b:    base,
			want: true,
		},
		"tie except expires: later wins": {
			a:    with(func(e *Entry) { e.Expires++ }),
			b:    base,
			want: true,
		},
		"tie except writer: encoding decides": {
			a:    with(func(e *Entry) { e.Writer = "zzzzz" }),
			b:    base,
			want: true, // same length, "zzzzz" > "alice" bytewise
		},
		"tie except contact: one of them wins": {
			a:    with(func(e *Entry) { e.Contact.Relay = "192.0.2.9:1" }),
			b:    base,
			want: true, // extra map pair => larger map header byte
		},
		"identical entries are tied": {
			a:    base,
			b:    base.clone(),
			tied: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ab, ba := Newer(&tc.a, &tc.b), Newer(&tc.b, &tc.a)
			if tc.tied {
				if ab || ba {
					t.Fatalf("Newer(a,b)=%v Newer(b,a)=%v, want both false", ab, ba)
				}
				return
			}
			if ab != tc.want {
				t.Fatalf("Newer(a, b) = %v, want %v", ab, tc.want)
			}
			if ab == ba {
				t.Fatalf("Newer(a,b) == Newer(b,a) == %v: order not total/antisymmetric", ab)
			}
		})
	}
}

func TestNewerTiesOnlyEqualEncodings(t *testing.T) {
	a, b := provider(3, v0), provider(3, v0)
	b.Provider.Addrs = []string{}
	a.Provider.Addrs = nil
	if Newer(&a, &b) || Newer(&b, &a) {
		t.Fatal("nil and empty Addrs encode alike and must tie")
	}
	b.Provider.Addrs = []string{"192.0.2.3:3479"}
	if Newer(&a, &b) == Newer(&b, &a) {
		t.Fatal("entries differing only in Addrs must be ordered")
	}
}

func TestNewerNil(t *testing.T) {
	e := contact(uriA, "c", 1, v0)
	if !Newer(&e, nil) || Newer(nil, &e) || Newer(nil, nil) {
		t.Fatal("a nil entry must be older than any entry")
	}
}

func TestNextVersion(t *testing.T) {
	now := time.Unix(t0, 0)
	tests := map[string]struct {
		prev *Entry
		want uint64
	}{
		"no previous":         {nil, v0},
		"previous older":      {&Entry{Version: v0 - 1}, v0},
		"previous same":       {&Entry{Version: v0}, v0 + 1},
		"previous from ahead": {&Entry{Version: v0 + 5e9}, v0 + 5e9 + 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := NextVersion(tc.prev, now); got != tc.want {
				t.Fatalf("NextVersion = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestMerge(t *testing.T) {
	a1 := contact(uriA, "ca", 1, v0)
	a2 := contact(uriA, "ca", 2, v0+1)
	b1 := contact(uriB, "cb", 1, v0)
	tests := map[string]struct {
		dst, src    *Record
		want        *Record
		wantChanged bool
		wantErr     error
	}{
		"new key is added": {
			dst: locRecord(a1), src: locRecord(b1),
			want: locRecord(a1, b1), wantChanged: true,
		},
		"new key sorts first": {
			dst: locRecord(b1), src: locRecord(a1),
			want: locRecord(a1, b1), wantChanged: true,
		},
		"newer replaces older": {
			dst: locRecord(a1, b1), src: locRecord(a2),
			want: locRecord(a2, b1), wantChanged: true,
		},
		"older never replaces newer": {
			dst: locRecord(a2, b1), src: locRecord(a1),
			want: locRecord(a2, b1),
		},
		"same entry changes nothing": {
			dst: locRecord(a1, b1), src: locRecord(a1, b1),
			want: locRecord(a1, b1),
		},
		"tombstone replaces contact": {
			dst: locRecord(a2), src: locRecord(tombstone(a2, v0+2)),
			want: locRecord(tombstone(a2, v0+2)), wantChanged: true,
		},
		"late contact does not resurrect over tombstone": {
			dst: locRecord(tombstone(a2, v0+2)), src: locRecord(a1, a2),
			want: locRecord(tombstone(a2, v0+2)),
		},
		"unsorted source with duplicate keys": {
			dst: locRecord(), src: locRecord(b1, a2, a1),
			want: locRecord(a2, b1), wantChanged: true,
		},
		"unsorted destination is normalized": {
			dst: locRecord(b1, a1), src: locRecord(),
			want: locRecord(a1, b1), wantChanged: true,
		},
		"nil source": {
			dst: locRecord(a1), src: nil,
			want: locRecord(a1),
		},
		"into empty": {
			dst: locRecord(), src: locRecord(a1, b1),
			want: locRecord(a1, b1), wantChanged: true,
		},
		"kind mismatch": {
			dst: locRecord(a1), src: &Record{Kind: KindService, Name: aliceAOR},
			want: locRecord(a1), wantErr: ErrMismatch,
		},
		"name mismatch": {
			dst: locRecord(a1), src: &Record{Kind: KindLocation, Name: "sip:bob@example.net"},
			want: locRecord(a1), wantErr: ErrMismatch,
		},
		"nil destination": {
			dst: nil, src: locRecord(a1), wantErr: ErrInvalid,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var srcBefore *Record
			if tc.src != nil {
				srcBefore = tc.src.Clone()
			}
			changed, err := Merge(tc.dst, tc.src)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Merge error = %v, want %v", err, tc.wantErr)
			}
			if changed != tc.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tc.wantChanged)
			}
			if tc.dst != nil && !reflect.DeepEqual(tc.dst.Entries, tc.want.Entries) {
				t.Errorf("entries:\n got %+v\nwant %+v", tc.dst.Entries, tc.want.Entries)
			}
			if !reflect.DeepEqual(tc.src, srcBefore) {
				t.Errorf("Merge modified src")
			}
		})
	}
}

func TestMergeDoesNotAlias(t *testing.T) {
	src := locRecord(contact(uriA, "c", 1, v0))
	dst := locRecord()
	if _, err := Merge(dst, src); err != nil {
		t.Fatal(err)
	}
	src.Entries[0].Contact.URI = "sip:mallory@evil"
	src.Entries[0].Key = "x"
	if dst.Entries[0].Contact.URI != uriA || dst.Entries[0].Key != uriA {
		t.Fatal("dst shares memory with src")
	}
	// In-place replacement path too.
	src = locRecord(contact(uriA, "c", 2, v0+1))
	if _, err := Merge(dst, src); err != nil {
		t.Fatal(err)
	}
	src.Entries[0].Contact.Q = 1
	if dst.Entries[0].Contact.Q != 1000 {
		t.Fatal("dst shares memory with src after replacement")
	}
}

func TestMergeIsIdempotentAndCommutative(t *testing.T) {
	x := locRecord(contact(uriA, "ca", 3, v0), contact(uriB, "cb", 1, v0+9))
	y := locRecord(contact(uriA, "ca", 4, v0-9), tombstone(contact(uriB, "cb", 1, v0+9), v0+10))
	xy, yx := x.Clone(), y.Clone()
	if _, err := Merge(xy, y); err != nil {
		t.Fatal(err)
	}
	if _, err := Merge(yx, x); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(xy, yx) || xy.Digest() != yx.Digest() {
		t.Fatalf("merge not commutative:\n%+v\n%+v", xy, yx)
	}
	if changed, _ := Merge(xy, yx); changed {
		t.Fatal("merging an equal record reported a change")
	}
	if xy.Entries[0].CSeq != 4 || !xy.Entries[1].Removed {
		t.Fatalf("wrong winners: %+v", xy.Entries)
	}
}

func TestNormalize(t *testing.T) {
	a1 := contact(uriA, "ca", 1, v0)
	a2 := contact(uriA, "ca", 2, v0-1) // newer by CSeq despite clock
	b1 := contact(uriB, "cb", 1, v0)
	tests := map[string]struct {
		in, want []Entry
	}{
		"empty":           {nil, nil},
		"sorted":          {[]Entry{a1, b1}, []Entry{a1, b1}},
		"reversed":        {[]Entry{b1, a1}, []Entry{a1, b1}},
		"dup newer last":  {[]Entry{a1, b1, a2}, []Entry{a2, b1}},
		"dup newer first": {[]Entry{a2, b1, a1}, []Entry{a2, b1}},
		"exact dup":       {[]Entry{b1, b1.clone()}, []Entry{b1}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := locRecord(tc.in...)
			r.Normalize()
			if !reflect.DeepEqual(r.Entries, tc.want) {
				t.Fatalf("got %+v\nwant %+v", r.Entries, tc.want)
			}
		})
	}
}

func TestLiveAndSweep(t *testing.T) {
	now := time.Unix(t0, 500_000_000) // mid-second: Expires == t0 is past
	at := func(uri string, expires int64, removed bool) Entry {
		e := contact(uri, "c-"+uri, 1, v0)
		e.Expires = expires
		e.Removed = removed
		return e
	}
	tests := map[string]struct {
		in        []Entry
		wantLive  []Entry
		wantSwept []Entry
		dropped   int
	}{
		"future live kept": {
			in:        []Entry{at(uriA, t0+1, false)},
			wantLive:  []Entry{at(uriA, t0+1, false)},
			wantSwept: []Entry{at(uriA, t0+1, false)},
		},
		"expiry equal to now is expired": {
			in:      []Entry{at(uriA, t0, false)},
			dropped: 1,
		},
		"past expired": {
			in:      []Entry{at(uriA, t0-100, false)},
			dropped: 1,
		},
		"tombstone hidden from readers but kept until expiry": {
			in:        []Entry{at(uriA, t0+1, true)},
			wantSwept: []Entry{at(uriA, t0+1, true)},
		},
		"expired tombstone swept": {
			in:      []Entry{at(uriA, t0, true)},
			dropped: 1,
		},
		"mixed": {
			in:        []Entry{at(uriA, t0-1, false), at(uriB, t0+60, false), at("sip:c@x", t0+60, true)},
			wantLive:  []Entry{at(uriB, t0+60, false)},
			wantSwept: []Entry{at(uriB, t0+60, false), at("sip:c@x", t0+60, true)},
			dropped:   1,
		},
		"empty": {},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := locRecord(tc.in...)
			orig := r.Clone()
			live := r.Live(now)
			if !reflect.DeepEqual(live.Entries, tc.wantLive) {
				t.Errorf("Live entries = %+v, want %+v", live.Entries, tc.wantLive)
			}
			if live.Kind != r.Kind || live.Name != r.Name {
				t.Errorf("Live lost kind/name")
			}
			if !reflect.DeepEqual(r, orig) {
				t.Fatalf("Live modified the record")
			}
			if n := r.Sweep(now); n != tc.dropped {
				t.Errorf("Sweep dropped %d, want %d", n, tc.dropped)
			}
			if !reflect.DeepEqual(r.Entries, tc.wantSwept) {
				t.Errorf("after Sweep = %+v, want %+v", r.Entries, tc.wantSwept)
			}
		})
	}
	if (*Record)(nil).Live(now) != nil || (*Record)(nil).Sweep(now) != 0 {
		t.Fatal("nil record")
	}
}

func TestLiveDoesNotAlias(t *testing.T) {
	r := locRecord(contact(uriA, "c", 1, v0))
	live := r.Live(time.Unix(t0, 0))
	live.Entries[0].Contact.URI = "sip:x@y"
	if r.Entries[0].Contact.URI != uriA {
		t.Fatal("Live shares payloads with the record")
	}
}
