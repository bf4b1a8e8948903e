// Package record holds the soft-state records of the overlay's distributed
// database (ARCHITECTURE.md §3): location records (AoR → contacts), service
// records (service name → providers) and peer records (Peer-ID → where that
// peer is attached), together with the rules that every holder of a record
// applies — merge, expiry, validation and the CBOR encoding.
//
// superpeer/store (replicas, read-repair, hand-off, anti-entropy),
// superpeer/edge (the SIP registrar) and the ordinary-peer agent all call the
// same pure functions here, so a record merges the same way wherever it is
// merged. Nothing here does I/O or keeps state between calls.
//
// # Model
//
// A Record is everything stored under one Resource-ID. It holds entries, each
// with a Key, and entries with different keys never interact: merging two
// copies of a record keeps, per key, the entry that Newer says supersedes the
// other. Because Newer is a total order (see its doc for the one condition
// writers keep), Merge is commutative, associative and idempotent, so replicas
// that have seen the same writes hold byte-identical records whatever order
// the writes and merges arrived in, and Digest can compare them cheaply.
//
// A de-registration is not a deletion but a tombstone (Entry.Removed) that
// lives until its Expires, so a copy of the older registration that arrives
// late — from a slow replica or a hand-off — loses to the tombstone instead of
// resurrecting the contact. Sweep finally drops expired entries and
// tombstones; Live is the view handed to readers.
//
// # Encoding
//
// Records travel and are hashed as CBOR (RFC 8949) in Core Deterministic
// Encoding, every struct as a map with small integer keys:
//
//	Record   {1: kind uint, 2: name text, 3: [* Entry] / null}
//	Entry    {1: key, 2: call-id, 3: cseq, 4: version, 5: expires (int),
//	          6: removed (bool), 7: writer, 8: Contact, 9: Provider, 10: PeerInfo}
//	Contact  {1: uri, 2: peer-id (16-byte bstr), 3: sp (bstr), 4: sp-addr,
//	          5: relay, 6: instance, 7: reg-id, 8: q, 9: flow}
//	Provider {1: peer-id, 2: [* addr], 3: capacity, 4: load}
//	PeerInfo {1: peer-id, 2: sp, 3: sp-addr, 4: relay, 5: reflexive, 6: nat}
//
// Entry, Contact, Provider and PeerInfo fields whose value is empty are left
// out. Unknown map keys are ignored on decode so a later version can add
// fields; Decode bounds size, nesting and counts before it allocates, then
// validates and normalizes.
package record
