package record

import (
	"errors"
	"strings"
	"testing"
)

func TestEntryKey(t *testing.T) {
	withInstance := contact(uriA, "c", 1, v0)
	withInstance.Contact.Instance = instA
	tests := map[string]struct {
		kind Kind
		e    Entry
		want string
	}{
		"location uri":        {KindLocation, contact(uriA, "c", 1, v0), uriA},
		"location instance":   {KindLocation, withInstance, instA},
		"location no payload": {KindLocation, Entry{Removed: true}, ""},
		"service":             {KindService, provider(7, v0), pid(7).String()},
		"service no payload":  {KindService, Entry{}, ""},
		"peer":                {KindPeer, Entry{}, PeerKey},
		"unknown kind":        {Kind(0), contact(uriA, "c", 1, v0), ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := EntryKey(tc.kind, &tc.e); got != tc.want {
				t.Fatalf("EntryKey = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	loc := func(f func(r *Record)) *Record {
		e := contact(uriA, "call-1@ua", 1, v0)
		e.Contact.Instance = instA
		e.Key = instA
		r := locRecord(e, contact(uriB, "call-2@ua", 1, v0))
		if f != nil {
			f(r)
		}
		return r
	}
	svc := func(f func(r *Record)) *Record {
		r := svcRecord(provider(3, v0), provider(4, v0))
		if f != nil {
			f(r)
		}
		return r
	}
	peer := func(f func(r *Record)) *Record {
		r := peerRecord(5, attachment(5, v0))
		if f != nil {
			f(r)
		}
		return r
	}
	long := strings.Repeat("x", MaxFieldLen+1)
	tests := map[string]struct {
		r         *Record
		wantField string // "" means valid
	}{
		"valid location": {r: loc(nil)},
		"valid service":  {r: svc(nil)},
		"valid peer":     {r: peer(nil)},
		"valid empty":    {r: locRecord()},
		"valid location tombstone without payload": {r: loc(func(r *Record) {
			r.Entries[1].Contact = nil
			r.Entries[1].Removed = true
		})},
		"valid service tombstone without payload": {r: svc(func(r *Record) {
			r.Entries[0].Provider = nil
			r.Entries[0].Removed = true
		})},
		"valid peer tombstone without payload": {r: peer(func(r *Record) {
			r.Entries[0].Peer = nil
			r.Entries[0].Removed = true
		})},
		"valid tombstone with payload": {r: loc(func(r *Record) { r.Entries[0].Removed = true })},
		"valid unsorted entries":       {r: loc(func(r *Record) { r.Entries[0], r.Entries[1] = r.Entries[1], r.Entries[0] })},
		"valid max entries": {r: svc(func(r *Record) {
			r.Entries = nil
			for i := range MaxEntries {
				r.Entries = append(r.Entries, provider(byte(i+1), v0))
			}
		})},
		"valid long uri": {r: loc(func(r *Record) {
			u := "sip:" + strings.Repeat("a", MaxURILen-len("sip:@h")) + "@h"
			r.Entries[1].Contact.URI, r.Entries[1].Key = u, u
		})},

		"nil record":                {r: nil, wantField: "record"},
		"zero kind":                 {r: &Record{Name: aliceAOR}, wantField: "kind"},
		"unknown kind":              {r: &Record{Kind: 4, Name: aliceAOR}, wantField: "kind"},
		"location name not normal":  {r: loc(func(r *Record) { r.Name = "sip:alice@EXAMPLE.net" }), wantField: "name"},
		"location name with params": {r: loc(func(r *Record) { r.Name = "sip:alice@example.net;transport=tcp" }), wantField: "name"},
		"location name bare":        {r: loc(func(r *Record) { r.Name = "alice@example.net" }), wantField: "name"},
		"location name empty":       {r: loc(func(r *Record) { r.Name = "" }), wantField: "name"},
		"service name empty":        {r: svc(func(r *Record) { r.Name = "" }), wantField: "name"},
		"service name upper":        {r: svc(func(r *Record) { r.Name = "TURN" }), wantField: "name"},
		"service name space":        {r: svc(func(r *Record) { r.Name = "turn server" }), wantField: "name"},
		"service name too long":     {r: svc(func(r *Record) { r.Name = strings.Repeat("a", 65) }), wantField: "name"},
		"peer name not hex":         {r: peer(func(r *Record) { r.Name = "bob" }), wantField: "name"},
		"peer name upper hex":       {r: peer(func(r *Record) { r.Name = strings.ToUpper(r.Name) }), wantField: "name"},
		"too many entries": {r: svc(func(r *Record) {
			r.Entries = nil
			for i := range MaxEntries + 1 {
				r.Entries = append(r.Entries, provider(byte(i+1), v0))
			}
		}), wantField: "entries"},
		"empty key":             {r: loc(func(r *Record) { r.Entries[1].Key = "" }), wantField: "entries[1].key"},
		"location key mismatch": {r: loc(func(r *Record) { r.Entries[1].Key = uriA }), wantField: "entries[1].key"},
		"location key uri when instance set": {r: loc(func(r *Record) { r.Entries[0].Key = uriA }),
			wantField: "entries[0].key"},
		"location missing contact": {r: loc(func(r *Record) { r.Entries[1].Contact = nil }), wantField: "entries[1].contact"},
		"location with provider": {r: loc(func(r *Record) { r.Entries[1].Provider = &Provider{PeerID: pid(1)} }),
			wantField: "entries[1].provider"},
		"location tombstone with peer payload": {r: loc(func(r *Record) {
			r.Entries[1].Contact, r.Entries[1].Removed, r.Entries[1].Peer = nil, true, &PeerInfo{PeerID: pid(1)}
		}), wantField: "entries[1].peer"},
		"empty contact uri": {r: loc(func(r *Record) { r.Entries[1].Contact.URI = "" }), wantField: "entries[1].contact.uri"},
		"CRLF injection in uri": {r: loc(func(r *Record) {
			u := uriB + "\r\nVia: SIP/2.0/UDP evil"
			r.Entries[1].Contact.URI, r.Entries[1].Key = u, u
		}), wantField: "entries[1].key"}, // the key is checked first; it carries the same URI
		"LF injection in uri only": {r: loc(func(r *Record) {
			r.Entries[0].Contact.URI = uriA + "\nX: y"
		}), wantField: "entries[0].contact.uri"},
		"NUL in uri": {r: loc(func(r *Record) { r.Entries[0].Contact.URI = "sip:a\x00@b" }),
			wantField: "entries[0].contact.uri"},
		"angle bracket in uri": {r: loc(func(r *Record) { r.Entries[0].Contact.URI = "sip:a@b>;evil=1" }),
			wantField: "entries[0].contact.uri"},
		"space in uri": {r: loc(func(r *Record) { r.Entries[0].Contact.URI = "sip:a@b c" }),
			wantField: "entries[0].contact.uri"},
		"uri too long": {r: loc(func(r *Record) {
			r.Entries[0].Contact.URI = "sip:" + strings.Repeat("a", MaxURILen) + "@h"
		}), wantField: "entries[0].contact.uri"},
		"CR in call-id":       {r: loc(func(r *Record) { r.Entries[0].CallID = "a\rb" }), wantField: "entries[0].call_id"},
		"LF in writer":        {r: loc(func(r *Record) { r.Entries[0].Writer = "alice\n" }), wantField: "entries[0].writer"},
		"CRLF in instance":    {r: loc(func(r *Record) { r.Entries[0].Contact.Instance = "x\r\n"; r.Entries[0].Key = "x\r\n" }), wantField: "entries[0].key"},
		"CR in sp addr":       {r: loc(func(r *Record) { r.Entries[0].Contact.SPAddr = "h:1\r" }), wantField: "entries[0].contact.sp_addr"},
		"relay too long":      {r: loc(func(r *Record) { r.Entries[0].Contact.Relay = long }), wantField: "entries[0].contact.relay"},
		"flow with NUL":       {r: loc(func(r *Record) { r.Entries[0].Contact.Flow = "tcp \x00" }), wantField: "entries[0].contact.flow"},
		"call-id too long":    {r: loc(func(r *Record) { r.Entries[0].CallID = long }), wantField: "entries[0].call_id"},
		"writer invalid utf8": {r: loc(func(r *Record) { r.Entries[0].Writer = "\xff" }), wantField: "entries[0].writer"},
		"q above 1000":        {r: loc(func(r *Record) { r.Entries[0].Contact.Q = 1001 }), wantField: "entries[0].contact.q"},
		"service key mismatch": {r: svc(func(r *Record) { r.Entries[0].Key = pid(9).String() }),
			wantField: "entries[0].key"},
		"service missing provider": {r: svc(func(r *Record) { r.Entries[0].Provider = nil }),
			wantField: "entries[0].provider"},
		"service with contact": {r: svc(func(r *Record) { r.Entries[0].Contact = &Contact{URI: uriA} }),
			wantField: "entries[0].contact"},
		"service zero provider id": {r: svc(func(r *Record) {
			r.Entries[0].Provider.PeerID = [16]byte{}
			r.Entries[0].Key = r.Entries[0].Provider.PeerID.String()
		}), wantField: "entries[0].provider.peer_id"},
		"service tombstone key not peer id": {r: svc(func(r *Record) {
			r.Entries[0].Provider, r.Entries[0].Removed, r.Entries[0].Key = nil, true, "turn-1"
		}), wantField: "entries[0].key"},
		"service empty addr": {r: svc(func(r *Record) { r.Entries[0].Provider.Addrs = []string{""} }),
			wantField: "entries[0].provider.addrs[0]"},
		"service addr with LF": {r: svc(func(r *Record) { r.Entries[0].Provider.Addrs = []string{"a:1", "b\n:2"} }),
			wantField: "entries[0].provider.addrs[1]"},
		"service too many addrs": {r: svc(func(r *Record) {
			r.Entries[0].Provider.Addrs = make([]string, maxAddrs+1)
		}), wantField: "entries[0].provider.addrs"},
		"peer key wrong": {r: peer(func(r *Record) { r.Entries[0].Key = "x" }), wantField: "entries[0].key"},
		"peer missing payload": {r: peer(func(r *Record) { r.Entries[0].Peer = nil }),
			wantField: "entries[0].peer"},
		"peer with contact": {r: peer(func(r *Record) { r.Entries[0].Contact = &Contact{URI: uriA} }),
			wantField: "entries[0].contact"},
		"peer id differs from name": {r: peer(func(r *Record) { r.Entries[0].Peer.PeerID = pid(6) }),
			wantField: "entries[0].peer.peer_id"},
		"peer nat with CR": {r: peer(func(r *Record) { r.Entries[0].Peer.NAT = "full\rcone" }),
			wantField: "entries[0].peer.nat"},
		"peer reflexive too long": {r: peer(func(r *Record) { r.Entries[0].Peer.Reflexive = long }),
			wantField: "entries[0].peer.reflexive"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := tc.r.Validate()
			if tc.wantField == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate() = %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), "validate record: "+tc.wantField+": ") {
				t.Fatalf("Validate() = %q, want field %q named", err, tc.wantField)
			}
		})
	}
}

func TestValidateClipsHostileValues(t *testing.T) {
	r := &Record{Kind: KindLocation, Name: strings.Repeat("x", 10_000)}
	err := r.Validate()
	if err == nil || len(err.Error()) > 300 {
		t.Fatalf("error not clipped (%d bytes)", len(err.Error()))
	}
}
