package record

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/p2psip/p2psip/common/ids"
)

// Limits. They bound what one writer can make every replica store and what a
// decoder allocates for one message from the network.
const (
	// MaxEntries bounds contacts per AoR, providers per service and entries
	// per record in general (tombstones count).
	MaxEntries = 64
	// MaxURILen bounds contact URIs and entry keys (a location key may be a
	// contact URI).
	MaxURILen = 1024
	// MaxFieldLen bounds every other string.
	MaxFieldLen = 256
	// MaxEncodedLen bounds one encoded record; Decode refuses longer input
	// before parsing and Encode refuses to produce it.
	MaxEncodedLen = 128 << 10
)

// Limits not in the published API: they are checked by Validate and named
// here so the reason for each number sits beside it.
const (
	// maxServiceNameLen keeps service names short labels ("turn",
	// "pstn-gw.eu") rather than free text.
	maxServiceNameLen = 64
	// maxAddrs bounds a provider's advertised transport addresses; a node
	// has a handful of interfaces and transports, not hundreds.
	maxAddrs = 16
	// maxQ is q=1.0 in thousandths (RFC 3261 §20.10 qvalue).
	maxQ = 1000
)

// PeerKey is the Key of the single entry of a peer record.
const PeerKey = "attachment"

// Kind says which of the three record families a Record belongs to.
type Kind uint8

// The record kinds (ARCHITECTURE.md §3). Zero is deliberately not a kind so
// an unset field fails validation.
const (
	KindLocation Kind = 1
	KindService  Kind = 2
	KindPeer     Kind = 3
)

// String returns "location", "service" or "peer", and "kind(N)" otherwise.
func (k Kind) String() string {
	switch k {
	case KindLocation:
		return "location"
	case KindService:
		return "service"
	case KindPeer:
		return "peer"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// ParseKind is the inverse of String (case-insensitive).
func ParseKind(s string) (Kind, error) {
	switch strings.ToLower(s) {
	case "location":
		return KindLocation, nil
	case "service":
		return KindService, nil
	case "peer":
		return KindPeer, nil
	}
	return 0, fmt.Errorf("parse kind %q: %w", s, ErrInvalid)
}

// MarshalText makes JSON (admin API, logs) show the kind's name. The CBOR
// encoding ignores it and keeps the integer (TextMarshalerNone).
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText accepts the names produced by MarshalText.
func (k *Kind) UnmarshalText(b []byte) error {
	v, err := ParseKind(string(b))
	if err != nil {
		return err
	}
	*k = v
	return nil
}

// Record is one resource: all entries stored under one Resource-ID.
type Record struct {
	Kind Kind `cbor:"1,keyasint" json:"kind"`
	// Name identifies the resource within its kind. location: normalized AoR
	// "sip:alice@example.net"; service: service name ("turn"); peer: Peer-ID
	// in lower-case hex.
	Name string `cbor:"2,keyasint" json:"name"`
	// Entries are sorted by Key with keys unique; Merge and Normalize keep
	// this invariant, and Digest relies on it.
	Entries []Entry `cbor:"3,keyasint" json:"entries"`
}

// Entry is one contact/provider/attachment, merged independently of the
// others in its record.
type Entry struct {
	// Key identifies the entry within its record; see EntryKey.
	Key string `cbor:"1,keyasint,omitempty" json:"key"`
	// CallID is the RFC 3261 Call-ID of the registration that wrote the
	// entry; empty for writers that are not SIP registrations.
	CallID string `cbor:"2,keyasint,omitempty" json:"call_id,omitempty"`
	// CSeq is the CSeq number of that registration.
	CSeq uint32 `cbor:"3,keyasint,omitempty" json:"cseq,omitempty"`
	// Version is the clock, in unix nanoseconds, of whoever accepted the
	// write (see NextVersion).
	Version uint64 `cbor:"4,keyasint,omitempty" json:"version"`
	// Expires is the absolute expiry in unix seconds.
	Expires int64 `cbor:"5,keyasint,omitempty" json:"expires"`
	// Removed marks a tombstone: a de-registration, kept until Expires so
	// that an older copy arriving late cannot resurrect the contact. Its
	// Expires must be no earlier than that of the entry it removes.
	Removed bool `cbor:"6,keyasint,omitempty" json:"removed,omitempty"`
	// Writer is the authenticated user (or "sp:<peer id hex>" for a super
	// peer) that wrote the entry; replicas check it against the record's
	// owner.
	Writer string `cbor:"7,keyasint,omitempty" json:"writer,omitempty"`

	// Exactly one payload matches the record's kind; a tombstone may have
	// none.
	Contact  *Contact  `cbor:"8,keyasint,omitempty" json:"contact,omitempty"`  // KindLocation
	Provider *Provider `cbor:"9,keyasint,omitempty" json:"provider,omitempty"` // KindService
	Peer     *PeerInfo `cbor:"10,keyasint,omitempty" json:"peer,omitempty"`    // KindPeer
}

// Contact is one registered contact of an AoR.
type Contact struct {
	// URI is the Contact URI as the UA gave it.
	URI string `cbor:"1,keyasint,omitempty" json:"uri"`
	// PeerID is the owning node (agent); zero for UAs registered at the
	// SIP edge.
	PeerID ids.PeerID `cbor:"2,keyasint,omitzero" json:"peer_id,omitzero"`
	// SP is the super peer the contact is attached to / registered at.
	SP ids.PeerID `cbor:"3,keyasint,omitzero" json:"sp,omitzero"`
	// SPAddr is that super peer's peer-protocol address, host:port.
	SPAddr string `cbor:"4,keyasint,omitempty" json:"sp_addr,omitempty"`
	// Relay is an optional TURN-relayed fallback address, host:port.
	Relay string `cbor:"5,keyasint,omitempty" json:"relay,omitempty"`
	// Instance is the +sip.instance value (RFC 5626).
	Instance string `cbor:"6,keyasint,omitempty" json:"instance,omitempty"`
	// RegID is the reg-id value (RFC 5626).
	RegID uint32 `cbor:"7,keyasint,omitempty" json:"reg_id,omitempty"`
	// Q is the q-value times 1000, 0..1000.
	Q uint16 `cbor:"8,keyasint,omitempty" json:"q,omitempty"`
	// Flow is, for edge registrations only, the transport and source of the
	// UA's flow, e.g. "tcp 198.51.100.7:40122".
	Flow string `cbor:"9,keyasint,omitempty" json:"flow,omitempty"`
}

// Provider is one node offering a service.
type Provider struct {
	PeerID   ids.PeerID `cbor:"1,keyasint,omitzero" json:"peer_id"`
	Addrs    []string   `cbor:"2,keyasint,omitempty" json:"addrs,omitempty"` // transport addresses, host:port
	Capacity uint32     `cbor:"3,keyasint,omitempty" json:"capacity,omitempty"`
	Load     uint32     `cbor:"4,keyasint,omitempty" json:"load,omitempty"`
}

// PeerInfo says where a peer is attached now.
type PeerInfo struct {
	PeerID    ids.PeerID `cbor:"1,keyasint,omitzero" json:"peer_id"`
	SP        ids.PeerID `cbor:"2,keyasint,omitzero" json:"sp,omitzero"`
	SPAddr    string     `cbor:"3,keyasint,omitempty" json:"sp_addr,omitempty"`
	Relay     string     `cbor:"4,keyasint,omitempty" json:"relay,omitempty"`
	Reflexive string     `cbor:"5,keyasint,omitempty" json:"reflexive,omitempty"`
	NAT       string     `cbor:"6,keyasint,omitempty" json:"nat,omitempty"`
}

// Canonical returns the canonical resource name (ARCHITECTURE.md §2) that
// the Resource-ID hashes, or "" for an unknown kind.
func (r *Record) Canonical() string {
	switch r.Kind {
	case KindLocation:
		return ids.LocationName(r.Name)
	case KindService:
		return ids.ServiceName(r.Name)
	case KindPeer:
		// Name is already the lower-case hex that ids.PeerName produces;
		// building the string directly avoids a parse.
		return "peer:" + r.Name
	}
	return ""
}

// ResourceID is the Resource-ID the record is stored under.
func (r *Record) ResourceID() ids.ResourceID { return ids.ResourceIDFor(r.Canonical()) }

// Owner returns the user allowed to write a location record (the AoR's user
// part), and "" for other kinds, whose writers are checked by credentials
// instead.
func (r *Record) Owner() string {
	if r.Kind == KindLocation {
		return ids.AORUser(r.Name)
	}
	return ""
}

// Clone returns a deep copy; nil for nil.
func (r *Record) Clone() *Record {
	if r == nil {
		return nil
	}
	c := &Record{Kind: r.Kind, Name: r.Name}
	if r.Entries != nil {
		c.Entries = make([]Entry, len(r.Entries))
		for i := range r.Entries {
			c.Entries[i] = r.Entries[i].clone()
		}
	}
	return c
}

// clone deep-copies an entry so records never share payloads: a store that
// merges a received record must not see it change when the sender's buffer
// is reused.
func (e *Entry) clone() Entry {
	c := *e
	if e.Contact != nil {
		v := *e.Contact
		c.Contact = &v
	}
	if e.Provider != nil {
		v := *e.Provider
		if e.Provider.Addrs != nil {
			v.Addrs = append([]string(nil), e.Provider.Addrs...)
		}
		c.Provider = &v
	}
	if e.Peer != nil {
		v := *e.Peer
		c.Peer = &v
	}
	return c
}
