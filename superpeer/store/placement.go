package store

import (
	"encoding/binary"
	"sort"

	"github.com/p2psip/p2psip/common/ids"
)

// Place returns the replica set of rid among members: the n members with
// the highest rendezvous (highest-random-weight) score, best first. Every
// super peer computes the same answer from the same membership, so a
// lookup is one hop from whichever super peer receives it, and a
// membership change moves only the records whose top n changed.
func Place(rid ids.ResourceID, members []ids.PeerID, n int) []ids.PeerID {
	if n > len(members) {
		n = len(members)
	}
	if n <= 0 {
		return nil
	}
	type scored struct {
		id ids.PeerID
		s  uint64
	}
	// Insertion into a small sorted top-n array: n is 3 in practice, so
	// this beats sorting all members.
	top := make([]scored, 0, n+1)
	for _, m := range members {
		s := score(m, rid)
		if len(top) == n && s <= top[n-1].s {
			continue
		}
		i := sort.Search(len(top), func(i int) bool { return top[i].s < s })
		top = append(top, scored{})
		copy(top[i+1:], top[i:])
		top[i] = scored{m, s}
		if len(top) > n {
			top = top[:n]
		}
	}
	out := make([]ids.PeerID, len(top))
	for i, t := range top {
		out[i] = t.id
	}
	return out
}

// score is the weight of node for rid: a strong 64-bit mix of both ids.
func score(node ids.PeerID, rid ids.ResourceID) uint64 {
	a := binary.LittleEndian.Uint64(node[:8]) ^ binary.LittleEndian.Uint64(rid[:8])
	b := binary.LittleEndian.Uint64(node[8:]) ^ binary.LittleEndian.Uint64(rid[8:])
	return mix(a ^ mix(b^0x9e3779b97f4a7c15))
}

// mix is the splitmix64 finalizer: a bijection with full avalanche.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func contains(set []ids.PeerID, id ids.PeerID) bool {
	for _, p := range set {
		if p == id {
			return true
		}
	}
	return false
}
