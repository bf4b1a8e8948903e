package record

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Decoder limits. They are looser than what Validate allows, and are there so
// a hostile message is refused while parsing, before it can allocate: the
// deepest valid value is Record → entries → Entry → Provider → addrs (5
// levels); MaxMapPairs covers the widest struct (10 fields) with room for
// fields added later; MaxArrayElements covers MaxEntries and lets the wire
// package carry lists of records with the same modes. Byte and text string
// lengths have no option of their own in fxamacker/cbor v2.10; Decode bounds
// them by refusing input longer than MaxEncodedLen.
const (
	decMaxNestedLevels  = 8
	decMaxArrayElements = 1024
	decMaxMapPairs      = 64
)

var (
	encMode = mustEncMode()
	decMode = mustDecMode()
)

// mustEncMode builds the encoder once. Core Deterministic Encoding (RFC 8949
// §4.2.1) makes equal records encode to equal bytes, which Digest and the
// last tie-break of Newer rely on. Tags are refused: nothing we send needs
// one.
func mustEncMode() cbor.EncMode {
	opts := cbor.CoreDetEncOptions()
	opts.IndefLength = cbor.IndefLengthForbidden
	opts.TagsMd = cbor.TagsForbidden
	em, err := opts.EncMode()
	if err != nil {
		panic(fmt.Sprintf("record: cbor encoder options: %v", err)) // constant options: a bug, not input
	}
	return em
}

// mustDecMode builds the decoder once, with the limits above, duplicate map
// keys and indefinite lengths rejected (both would let two encodings of one
// record decode differently from what the sender hashed), tags refused and
// invalid UTF-8 rejected.
func mustDecMode() cbor.DecMode {
	dm, err := cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:  decMaxNestedLevels,
		MaxArrayElements: decMaxArrayElements,
		MaxMapPairs:      decMaxMapPairs,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		UTF8:             cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(fmt.Sprintf("record: cbor decoder options: %v", err)) // constant options: a bug, not input
	}
	return dm
}

// EncMode is the deterministic encoder records use, for the wire package to
// encode message bodies the same way. It is safe for concurrent use.
func EncMode() cbor.EncMode { return encMode }

// DecMode is the bounded decoder records use, for the wire package's message
// bodies. It does not bound the input length: callers check that first, as
// Decode does. It is safe for concurrent use.
func DecMode() cbor.DecMode { return decMode }

// Encode returns the deterministic CBOR encoding of r. It does not validate
// r, but refuses (ErrTooLarge) an encoding that Decode would refuse. r should
// be normalized (Merge and Decode leave it so) for the bytes to be the
// canonical ones.
func Encode(r *Record) ([]byte, error) {
	if r == nil {
		return nil, fmt.Errorf("encode record: nil: %w", ErrInvalid)
	}
	b, err := marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode record %s %q: %w", r.Kind, clip(r.Name), err)
	}
	if len(b) > MaxEncodedLen {
		return nil, fmt.Errorf("encode record %s %q: %d bytes, limit %d: %w",
			r.Kind, clip(r.Name), len(b), MaxEncodedLen, ErrTooLarge)
	}
	return b, nil
}

// marshal encodes r with an empty entry list written as nil, so that a
// record emptied by Sweep and one that never had entries encode, and hash,
// the same.
func marshal(r *Record) ([]byte, error) {
	if r.Entries != nil && len(r.Entries) == 0 {
		c := *r
		c.Entries = nil
		r = &c
	}
	return encMode.Marshal(r)
}

// Decode parses a record received from the network: it refuses input longer
// than MaxEncodedLen (ErrTooLarge) before parsing, decodes with DecMode's
// limits, validates and normalizes. Errors wrap ErrInvalid or ErrTooLarge.
func Decode(b []byte) (*Record, error) {
	if len(b) > MaxEncodedLen {
		return nil, fmt.Errorf("decode record: %d bytes, limit %d: %w", len(b), MaxEncodedLen, ErrTooLarge)
	}
	var r Record
	if err := decMode.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode record: %w: %w", ErrInvalid, err)
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("decode record: %w", err)
	}
	r.Normalize()
	canonicalEmpties(&r)
	return &r, nil
}

// canonicalEmpties turns empty slices into nil, as the encoder omits or
// nulls them, so that decode(encode(r)) == r holds field for field.
func canonicalEmpties(r *Record) {
	if len(r.Entries) == 0 {
		r.Entries = nil
	}
	for i := range r.Entries {
		if p := r.Entries[i].Provider; p != nil && len(p.Addrs) == 0 {
			p.Addrs = nil
		}
	}
}

// Digest is a 64-bit hash of r's deterministic encoding, used by
// anti-entropy to compare replicas cheaply. It is truncated SHA-256 rather
// than a faster non-cryptographic hash because writers choose the content:
// with a hash whose collisions are easy to find, a hostile writer could
// craft two versions of its record with one digest, and anti-entropy would
// never repair a replica holding the other version. Equal normalized
// records have equal digests. Digest of nil is 0.
func (r *Record) Digest() uint64 {
	if r == nil {
		return 0
	}
	b, err := marshal(r)
	if err != nil {
		return 0
	}
	sum := sha256.Sum256(b)
	return binary.BigEndian.Uint64(sum[:8])
}
