package wire

import (
	"reflect"
	"testing"

	"github.com/p2psip/p2psip/common/ids"
)

func TestPromoteRoundTrip(t *testing.T) {
	tests := map[string]struct{ in, out any }{
		"request": {&PromoteReq{PeerAddr: "192.0.2.10:6084", LocalAddr: "192.0.2.10", Reflexive: "192.0.2.10:40000", UptimeS: 600}, &PromoteReq{}},
		"grant": {&PromoteResp{Promote: true, Grant: &PromoteGrant{Secret: []byte("s3cret"), Join: []string{"203.0.113.1:7946"},
			Members: []SuperPeerInfo{{PeerID: ids.PeerID{1}, PeerAddr: "203.0.113.1:6084"}}, Replicas: 3, Promotion: "auto", MinUptimeS: 600, Ratio: 50}}, &PromoteResp{}},
		"refusal":  {&PromoteResp{Reason: "promotion off on this overlay", RetryAfterS: 3600}, &PromoteResp{}},
		"dialback": {&DialBackReq{PeerID: ids.PeerID{7}, Addr: "192.0.2.10:6084"}, &DialBackReq{}},
		"verdict":  {&DialBackResp{Reason: "connect 192.0.2.10:6084: timeout", TookMS: 10000}, &DialBackResp{}},
		// Not promotion, but the other message a super peer pushes to its
		// agents when the mesh changes.
		"members": {&MembersChange{Gone: []SuperPeerInfo{{PeerID: ids.PeerID{3}, PeerAddr: "203.0.113.3:6084", TURNAddr: "203.0.113.3:3478"}},
			Joined: []SuperPeerInfo{{PeerID: ids.PeerID{4}, PeerAddr: "203.0.113.4:6084"}}}, &MembersChange{}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b, err := Marshal(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if err := Unmarshal(b, tc.out); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(tc.in, tc.out) {
				t.Fatalf("round trip: got %+v, want %+v", tc.out, tc.in)
			}
		})
	}
	if TypePromote.String() != "promote" || TypeDialBack.String() != "dialback" || !TypeDialBack.Known() || RoleProbe.String() != "probe" ||
		TypeMembers.String() != "members" || !TypeMembers.Known() {
		t.Fatal("names of the promotion types")
	}
}
