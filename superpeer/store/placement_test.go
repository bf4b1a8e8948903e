package store

import (
	"crypto/rand"
	"fmt"
	"math"
	"testing"

	"github.com/p2psip/p2psip/common/ids"
)

func randomIDs(n int) []ids.PeerID {
	out := make([]ids.PeerID, n)
	for i := range out {
		rand.Read(out[i][:]) //nolint:errcheck
	}
	return out
}

func TestPlaceIsStableAndBalanced(t *testing.T) {
	members := randomIDs(6)
	counts := map[ids.PeerID]int{}
	const records = 60000
	moved := 0
	for i := range records {
		rid := ids.ResourceIDFor(fmt.Sprintf("user:sip:u%d@example.net", i))
		set := Place(rid, members, 3)
		if len(set) != 3 || set[0] == set[1] || set[1] == set[2] || set[0] == set[2] {
			t.Fatalf("bad replica set %v", set)
		}
		for _, p := range set {
			counts[p]++
		}
		// Removing a member that is not in the set changes nothing.
		var without []ids.PeerID
		for _, m := range members {
			if m != members[5] {
				without = append(without, m)
			}
		}
		after := Place(rid, without, 3)
		if !contains(set, members[5]) {
			for j := range set {
				if set[j] != after[j] {
					t.Fatalf("set changed although the removed member was not in it")
				}
			}
		} else {
			moved++
		}
	}
	want := float64(records*3) / float64(len(members))
	for p, c := range counts {
		if math.Abs(float64(c)-want)/want > 0.05 {
			t.Errorf("member %s holds %d records, want about %.0f", p.Short(), c, want)
		}
	}
	if f := float64(moved) / records; f < 0.4 || f > 0.6 {
		t.Errorf("removing one of six members moved %.2f of the records, want about 0.5", f)
	}
	if got := Place(ids.ResourceID{}, members[:2], 3); len(got) != 2 {
		t.Fatalf("fewer members than replicas: got %d", len(got))
	}
}

func BenchmarkPlace(b *testing.B) {
	for _, n := range []int{3, 10, 100} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			members := randomIDs(n)
			rid := ids.ResourceIDFor("user:sip:alice@example.net")
			for b.Loop() {
				Place(rid, members, 3)
			}
		})
	}
}
