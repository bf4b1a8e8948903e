package record

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/p2psip/p2psip/common/ids"
)

func TestKindString(t *testing.T) {
	tests := map[string]struct {
		kind Kind
		want string
	}{
		"location": {KindLocation, "location"},
		"service":  {KindService, "service"},
		"peer":     {KindPeer, "peer"},
		"unknown":  {Kind(9), "kind(9)"},
		"zero":     {Kind(0), "kind(0)"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tc.kind.String(); got != tc.want {
				t.Fatalf("String() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseKind(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    Kind
		wantErr bool
	}{
		"location":   {in: "location", want: KindLocation},
		"service":    {in: "service", want: KindService},
		"peer":       {in: "peer", want: KindPeer},
		"upper case": {in: "Peer", want: KindPeer},
		"unknown":    {in: "user", wantErr: true},
		"empty":      {in: "", wantErr: true},
		"numeric":    {in: "1", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseKind(tc.in)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("ParseKind(%q) error = %v, want ErrInvalid", tc.in, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseKind(%q) = %v, %v, want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestCanonicalAndOwner(t *testing.T) {
	tests := map[string]struct {
		r         *Record
		canonical string
		owner     string
	}{
		"location": {locRecord(), ids.LocationName(aliceAOR), "alice"},
		"service":  {svcRecord(), ids.ServiceName("turn"), ""},
		"peer":     {peerRecord(5), ids.PeerName(pid(5)), ""},
		"unknown":  {&Record{Kind: 7, Name: "x"}, "", ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tc.r.Canonical(); got != tc.canonical {
				t.Errorf("Canonical() = %q, want %q", got, tc.canonical)
			}
			if got, want := tc.r.ResourceID(), ids.ResourceIDFor(tc.canonical); got != want {
				t.Errorf("ResourceID() = %s, want %s", got, want)
			}
			if got := tc.r.Owner(); got != tc.owner {
				t.Errorf("Owner() = %q, want %q", got, tc.owner)
			}
		})
	}
}

func TestCloneIsDeep(t *testing.T) {
	orig := locRecord(contact(uriA, "c1", 1, v0))
	orig.Entries = append(orig.Entries, provider(3, v0)) // payload kinds don't matter to Clone
	orig.Entries = append(orig.Entries, attachment(4, v0))
	c := orig.Clone()
	if !reflect.DeepEqual(orig, c) {
		t.Fatalf("clone differs:\n%+v\n%+v", orig, c)
	}
	c.Entries[0].Contact.URI = "sip:changed@x"
	c.Entries[1].Provider.Addrs[0] = "changed"
	c.Entries[2].Peer.NAT = "changed"
	c.Entries[0].Key = "changed"
	if orig.Entries[0].Contact.URI != uriA || orig.Entries[1].Provider.Addrs[0] == "changed" ||
		orig.Entries[2].Peer.NAT == "changed" || orig.Entries[0].Key != uriA {
		t.Fatal("mutating the clone changed the original")
	}
	if (*Record)(nil).Clone() != nil {
		t.Fatal("Clone(nil) != nil")
	}
}

func TestJSONKindIsName(t *testing.T) {
	r := locRecord(contact(uriA, "c1", 1, v0))
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m["kind"] != "location" {
		t.Fatalf("json kind = %v, want \"location\" (%s)", m["kind"], b)
	}
	var back Record
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r, &back) {
		t.Fatalf("json round trip:\n%+v\n%+v", r, &back)
	}
}
