package record

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

// history is what the writers of one record did, in real-time order, and
// what each key must end up holding: the last write.
type history struct {
	kind   Kind
	name   string
	writes []Entry
	last   map[string]Entry
}

// genHistory makes a realistic write history for a record with 1..4 keys.
//
// Location: per contact, one or more "boots" of the UA, each a new Call-ID
// whose first write carries a Version later than anything written before
// (the UA was offline for a while); within a boot the UA refreshes with
// increasing CSeq, each refresh accepted by whichever super peer it reached,
// so within a Call-ID the versions are skewed and not monotone — the CSeq
// rule has to order them. Any write may be a de-registration (tombstone,
// sometimes without payload); the UA may register again afterwards.
//
// Service and peer: writers without Call-IDs, so versions increase along
// the history (these writers stamp with NextVersion).
func genHistory(rng *rand.Rand) history {
	h := history{last: map[string]Entry{}}
	switch rng.IntN(5) {
	case 0:
		h.kind, h.name = KindService, "turn"
	case 1:
		h.kind, h.name = KindPeer, pid(9).String()
	default:
		h.kind, h.name = KindLocation, aliceAOR
	}
	nkeys := 1 + rng.IntN(4)
	if h.kind == KindPeer {
		nkeys = 1
	}
	var perKey [][]Entry
	for k := range nkeys {
		perKey = append(perKey, genKeyHistory(rng, h.kind, k))
	}
	// Interleave the keys' histories; keys are independent, but a replica
	// sees them mixed.
	for {
		var open []int
		for k, es := range perKey {
			if len(es) > 0 {
				open = append(open, k)
			}
		}
		if len(open) == 0 {
			break
		}
		k := open[rng.IntN(len(open))]
		e := perKey[k][0]
		perKey[k] = perKey[k][1:]
		h.writes = append(h.writes, e)
		h.last[e.Key] = e
	}
	return h
}

// genKeyHistory makes the writes of key number k.
func genKeyHistory(rng *rand.Rand, kind Kind, k int) []Entry {
	var out []Entry
	floor := v0 + uint64(rng.IntN(1e9)) // every Version so far is below floor
	boots := 1 + rng.IntN(3)
	for boot := range boots {
		callID := fmt.Sprintf("%08x-%d-%d@ua", rng.Uint32(), k, boot)
		cseq := uint32(1 + rng.IntN(1000))
		const span = 30e9 // clock skew among the super peers a boot reaches
		writes := 1 + rng.IntN(5)
		for range writes {
			var e Entry
			switch kind {
			case KindLocation:
				e = contact(fmt.Sprintf("sip:alice@192.0.2.%d:5060", k+1), callID, cseq, floor+uint64(rng.Int64N(span)))
				if k%2 == 1 { // some UAs do RFC 5626 and are keyed by instance
					e.Contact.Instance = fmt.Sprintf("<urn:uuid:%d>", k)
					e.Key = e.Contact.Instance
				}
				e.Contact.Q = uint16(rng.IntN(1001))
				cseq += uint32(1 + rng.IntN(3))
			case KindService:
				e = provider(byte(k+1), floor)
				e.Provider.Load = uint32(rng.IntN(100))
				floor += uint64(1 + rng.IntN(1e9))
			case KindPeer:
				e = attachment(9, floor)
				e.Peer.SP = pid(byte(20 + rng.IntN(3)))
				floor += uint64(1 + rng.IntN(1e9))
			}
			e.Expires = t0 + int64(rng.IntN(7200))
			if rng.IntN(5) == 0 {
				e.Removed = true
				if rng.IntN(2) == 0 {
					e.Contact, e.Provider, e.Peer = nil, nil, nil
				}
			}
			out = append(out, e)
		}
		if kind == KindLocation {
			floor += span + uint64(1+rng.IntN(1e12)) // the next boot is later than all of this one
		}
		if kind != KindLocation {
			break // no Call-IDs, no boots
		}
	}
	return out
}

// TestReplicasConverge checks the property the store depends on: however
// the writes of a history are spread over replicas and in whatever order
// they and the replica-to-replica merges happen, all replicas end up with
// identical records holding, per key, the last write.
func TestReplicasConverge(t *testing.T) {
	const iterations = 500
	seed := uint64(20260801)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for it := range iterations {
		h := genHistory(rng)
		if err := (&Record{Kind: h.kind, Name: h.name, Entries: h.writes}).Validate(); err != nil {
			t.Fatalf("iteration %d: generated invalid history: %v", it, err)
		}
		replicas := deliver(t, rng, h)
		gossip(t, rng, replicas)
		checkConverged(t, it, h, replicas)
	}
}

// deliver gives every write to a random non-empty subset of three replicas
// (so together they have everything), each replica getting its writes in
// its own random order and in random batches: single entries the way a
// coordinator writes them, unsorted multi-entry records with repeated keys
// the way a hand-off might.
func deliver(t *testing.T, rng *rand.Rand, h history) []*Record {
	t.Helper()
	inbox := make([][]Entry, 3)
	for _, e := range h.writes {
		mask := 1 + rng.IntN(7)
		for i := range inbox {
			if mask&(1<<i) != 0 {
				inbox[i] = append(inbox[i], e.clone())
				if rng.IntN(10) == 0 { // a retransmission
					inbox[i] = append(inbox[i], e.clone())
				}
			}
		}
	}
	replicas := make([]*Record, 3)
	for i := range replicas {
		replicas[i] = &Record{Kind: h.kind, Name: h.name}
		in := inbox[i]
		rng.Shuffle(len(in), func(a, b int) { in[a], in[b] = in[b], in[a] })
		for len(in) > 0 {
			n := 1
			if rng.IntN(3) == 0 {
				n = 1 + rng.IntN(len(in))
			}
			batch := &Record{Kind: h.kind, Name: h.name, Entries: in[:n]}
			in = in[n:]
			if _, err := Merge(replicas[i], batch); err != nil {
				t.Fatal(err)
			}
		}
	}
	return replicas
}

// gossip runs a few random pairwise merges and then one round over all six
// ordered pairs in random order. Merges only grow a replica's state, and in
// that round every replica merges every other one's (grown) state, so after
// it they must agree.
func gossip(t *testing.T, rng *rand.Rand, replicas []*Record) {
	t.Helper()
	for range rng.IntN(6) {
		a, b := rng.IntN(3), rng.IntN(3)
		if _, err := Merge(replicas[a], replicas[b]); err != nil {
			t.Fatal(err)
		}
	}
	pairs := [][2]int{{0, 1}, {0, 2}, {1, 0}, {1, 2}, {2, 0}, {2, 1}}
	rng.Shuffle(len(pairs), func(a, b int) { pairs[a], pairs[b] = pairs[b], pairs[a] })
	for _, p := range pairs {
		src := replicas[p[1]]
		if rng.IntN(2) == 0 { // over the wire
			b, err := Encode(src)
			if err != nil {
				t.Fatal(err)
			}
			if src, err = Decode(b); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := Merge(replicas[p[0]], src); err != nil {
			t.Fatal(err)
		}
	}
}

func checkConverged(t *testing.T, it int, h history, replicas []*Record) {
	t.Helper()
	d := replicas[0].Digest()
	for i, r := range replicas {
		if r.Digest() != d || !reflect.DeepEqual(r, replicas[0]) {
			t.Fatalf("iteration %d: replica %d differs from replica 0:\n%+v\n%+v", it, i, r, replicas[0])
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("iteration %d: replica %d invalid: %v", it, i, err)
		}
		if !sortedUnique(r.Entries) {
			t.Fatalf("iteration %d: replica %d entries not sorted/unique", it, i)
		}
	}
	got := replicas[0]
	if len(got.Entries) != len(h.last) {
		t.Fatalf("iteration %d: %d keys, want %d", it, len(got.Entries), len(h.last))
	}
	for _, e := range got.Entries {
		if want := h.last[e.Key]; !reflect.DeepEqual(e, want) {
			t.Fatalf("iteration %d: key %q holds\n%+v\nwant the last write\n%+v", it, e.Key, e, want)
		}
	}
	if changed, _ := Merge(replicas[1], replicas[2]); changed {
		t.Fatalf("iteration %d: merging converged replicas reported a change", it)
	}
}
