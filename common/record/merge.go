package record

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Newer reports whether a supersedes b; both are entries for the same Key.
//
// The order, first difference deciding:
//
//  1. Same non-empty Call-ID and different CSeq: the higher CSeq wins, whatever
//     the versions say (RFC 3261 §10.3). A UA's refreshes carry increasing
//     CSeqs even when they reach super peers whose clocks disagree.
//  2. Higher Version: across Call-IDs (a rebooted UA) and for non-SIP
//     writers, the accepting node's clock is the only order there is.
//  3. Higher CSeq.
//  4. Removed: a de-registration beats a registration written at the same
//     instant.
//  5. Later Expires.
//  6. The deterministic encoding, compared bytewise, so two entries are tied
//     only when they encode identically.
//
// Without rule 1 this is a lexicographic, hence total, order. Rule 1 keeps it
// total as long as no two entries with the same Call-ID have Version and CSeq
// in opposite orders: then rule 1 only ever agrees with rule 2 or 3. Writers
// keep that by stamping Version with NextVersion. Where they cannot (the
// accepting node never saw the previous refresh and its clock is behind),
// rule 1 still puts that Call-ID's entries in CSeq order, but a third entry
// from another Call-ID whose Version falls between theirs can make the
// relation cyclic, and the merge result then depends on arrival order. No
// order can avoid that: the three pairwise rules contradict each other.
//
// A nil entry is older than any entry.
func Newer(a, b *Entry) bool { return compareEntries(a, b) > 0 }

// compareEntries is the three-way form of Newer.
func compareEntries(a, b *Entry) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return -1
	case b == nil:
		return 1
	}
	if a.CallID != "" && a.CallID == b.CallID && a.CSeq != b.CSeq {
		return cmp.Compare(a.CSeq, b.CSeq)
	}
	if c := cmp.Compare(a.Version, b.Version); c != 0 {
		return c
	}
	if c := cmp.Compare(a.CSeq, b.CSeq); c != 0 {
		return c
	}
	if a.Removed != b.Removed {
		if a.Removed {
			return 1
		}
		return -1
	}
	if c := cmp.Compare(a.Expires, b.Expires); c != 0 {
		return c
	}
	// Identical entries are the common case here: anti-entropy and
	// read-repair mostly merge a record with an equal copy of itself.
	if equalEntries(a, b) {
		return 0
	}
	// Otherwise reached only by different entries written at the same
	// nanosecond with the same CSeq, so the cost of encoding does not matter.
	return bytes.Compare(encodeEntry(a), encodeEntry(b))
}

// equalEntries reports whether a and b hold the same values.
func equalEntries(a, b *Entry) bool {
	if a.Key != b.Key || a.CallID != b.CallID || a.CSeq != b.CSeq || a.Version != b.Version ||
		a.Expires != b.Expires || a.Removed != b.Removed || a.Writer != b.Writer {
		return false
	}
	if (a.Contact == nil) != (b.Contact == nil) || a.Contact != nil && *a.Contact != *b.Contact {
		return false
	}
	if (a.Peer == nil) != (b.Peer == nil) || a.Peer != nil && *a.Peer != *b.Peer {
		return false
	}
	if (a.Provider == nil) != (b.Provider == nil) {
		return false
	}
	if p, q := a.Provider, b.Provider; p != nil &&
		(p.PeerID != q.PeerID || p.Capacity != q.Capacity || p.Load != q.Load || !slices.Equal(p.Addrs, q.Addrs)) {
		return false
	}
	return true
}

// encodeEntry is the deterministic encoding of one entry, for the last
// tie-break. Encoding a plain struct of strings and integers cannot fail.
func encodeEntry(e *Entry) []byte {
	b, err := encMode.Marshal(e)
	if err != nil {
		return nil
	}
	return b
}

// NextVersion returns the Version to stamp on a write that supersedes prev
// (the current entry for the key, nil if none) when accepted at time now:
// now in unix nanoseconds, but never at or below prev.Version. Keeping
// versions increasing along a key's history is what keeps Newer a total
// order when the accepting nodes' clocks disagree (see Newer). Call it only
// for a write that does supersede prev — a refresh with a higher CSeq, or a
// new Call-ID; a stale CSeq is rejected, not re-stamped.
func NextVersion(prev *Entry, now time.Time) uint64 {
	v := uint64(max(now.UnixNano(), 0))
	if prev != nil && v <= prev.Version {
		v = prev.Version + 1
	}
	return v
}

// Merge folds src into dst, keeping per Key the entry Newer prefers, and
// reports whether dst changed. Kind and Name must match (ErrMismatch). dst
// ends sorted by Key with unique keys even if either input was not; src is
// not modified and dst shares no memory with it afterwards.
//
// Merge does not drop expired entries (that is Sweep's job, so that merging
// stays independent of the clock) and does not enforce MaxEntries: the union
// of two valid records may hold more keys than either, so a replica that
// accepts a write validates the merged result.
func Merge(dst, src *Record) (changed bool, err error) {
	if dst == nil {
		return false, fmt.Errorf("merge record: nil destination: %w", ErrInvalid)
	}
	if src == nil {
		return false, nil
	}
	if dst.Kind != src.Kind || dst.Name != src.Name {
		return false, fmt.Errorf("merge %s %q into %s %q: %w",
			src.Kind, src.Name, dst.Kind, dst.Name, ErrMismatch)
	}
	if !sortedUnique(dst.Entries) {
		dst.Normalize()
		changed = true
	}
	s := src.Entries
	if !sortedUnique(s) {
		c := src.Clone()
		c.Normalize()
		s = c.Entries
	}
	d := dst.Entries

	// First pass: find out what changes without allocating, since most
	// merges (anti-entropy, read-repair of an up-to-date replica) change
	// nothing.
	added, replaced := 0, 0
	for i, j := 0, 0; j < len(s); {
		switch {
		case i < len(d) && d[i].Key < s[j].Key:
			i++
		case i == len(d) || s[j].Key < d[i].Key:
			added++
			j++
		default:
			if Newer(&s[j], &d[i]) {
				replaced++
			}
			i++
			j++
		}
	}
	if added == 0 && replaced == 0 {
		return changed, nil
	}
	if added == 0 {
		for i, j := 0, 0; j < len(s); i++ {
			if d[i].Key == s[j].Key {
				if Newer(&s[j], &d[i]) {
					d[i] = s[j].clone()
				}
				j++
			}
		}
		return true, nil
	}
	out := make([]Entry, 0, len(d)+added)
	i, j := 0, 0
	for i < len(d) || j < len(s) {
		switch {
		case j == len(s) || (i < len(d) && d[i].Key < s[j].Key):
			out = append(out, d[i])
			i++
		case i == len(d) || s[j].Key < d[i].Key:
			out = append(out, s[j].clone())
			j++
		default:
			if Newer(&s[j], &d[i]) {
				out = append(out, s[j].clone())
			} else {
				out = append(out, d[i])
			}
			i++
			j++
		}
	}
	dst.Entries = out
	return true, nil
}

// sortedUnique reports whether entries are strictly increasing by Key.
func sortedUnique(es []Entry) bool {
	for i := 1; i < len(es); i++ {
		if es[i-1].Key >= es[i].Key {
			return false
		}
	}
	return true
}

// Normalize sorts entries by Key and, where a key repeats, keeps the newest.
// Decode applies it to input from the network; because Newer is a total
// order the result does not depend on the input order.
func (r *Record) Normalize() {
	if r == nil || sortedUnique(r.Entries) {
		return
	}
	slices.SortStableFunc(r.Entries, func(a, b Entry) int { return strings.Compare(a.Key, b.Key) })
	out := r.Entries[:0]
	for i := range r.Entries {
		e := r.Entries[i]
		if n := len(out); n > 0 && out[n-1].Key == e.Key {
			if Newer(&e, &out[n-1]) {
				out[n-1] = e
			}
			continue
		}
		out = append(out, e)
	}
	clear(r.Entries[len(out):]) // let dropped payloads be collected
	r.Entries = out
}

// Live returns a copy holding only what a reader should see: entries that
// are neither expired (Expires <= now) nor Removed. Its Entries is nil if
// none is live. Live of nil is nil.
func (r *Record) Live(now time.Time) *Record {
	if r == nil {
		return nil
	}
	out := &Record{Kind: r.Kind, Name: r.Name}
	t := now.Unix()
	for i := range r.Entries {
		e := &r.Entries[i]
		if e.Removed || e.Expires <= t {
			continue
		}
		out.Entries = append(out.Entries, e.clone())
	}
	return out
}

// Sweep drops, in place, the entries (tombstones included) whose Expires <=
// now and returns how many it dropped. A tombstone guards against
// resurrection only while it outlives the registration it removed, so
// writers give it an Expires no earlier than that registration's; after
// that, a late copy of the registration is expired on arrival and dropped
// by the next Sweep.
func (r *Record) Sweep(now time.Time) int {
	if r == nil {
		return 0
	}
	t := now.Unix()
	n := len(r.Entries)
	r.Entries = slices.DeleteFunc(r.Entries, func(e Entry) bool { return e.Expires <= t })
	if len(r.Entries) == 0 {
		r.Entries = nil
	}
	return n - len(r.Entries)
}
