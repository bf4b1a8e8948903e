package wire

import (
	"errors"
	"fmt"
	"sync"

	"github.com/fxamacker/cbor/v2"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
)

// Role is what the sender of Hello is.
type Role uint8

const (
	// RoleClient: a command-line client (record put/get, service find).
	RoleClient Role = 1
	// RoleAgent: an ordinary-peer agent; it may attach.
	RoleAgent Role = 2
	// RoleSuperPeer: another super peer opening a data-plane link.
	RoleSuperPeer Role = 3
	// RoleProbe: a super peer's dial-back test of a node that asked to be
	// promoted; the node answers HelloOK with its Peer-ID and hangs up.
	RoleProbe Role = 4
)

// MarshalText shows the role's name in JSON.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

func (r Role) String() string {
	switch r {
	case RoleClient:
		return "client"
	case RoleAgent:
		return "agent"
	case RoleSuperPeer:
		return "superpeer"
	case RoleProbe:
		return "probe"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Hello opens every connection. Clients and agents authenticate with
// credentials (TURN-REST username and password); super peers with a
// MeshProof bound to the TLS session. The sender's Peer-ID is not claimed
// here: it comes from the key in its TLS certificate.
type Hello struct {
	Role     Role   `cbor:"1,keyasint"`
	Overlay  string `cbor:"2,keyasint"`
	Username string `cbor:"3,keyasint,omitempty"`
	Password string `cbor:"4,keyasint,omitempty"`
	Proof    []byte `cbor:"5,keyasint,omitempty"`
	// PeerAddr is a super peer's advertised peer-protocol address.
	PeerAddr string `cbor:"6,keyasint,omitempty"`
}

// HelloOK admits a connection.
type HelloOK struct {
	PeerID  ids.PeerID `cbor:"1,keyasint"` // the answering super peer
	Overlay string     `cbor:"2,keyasint"`
	User    string     `cbor:"3,keyasint,omitempty"` // authenticated user
	// KeepaliveMS is the Ping interval the server expects from agents.
	KeepaliveMS uint32 `cbor:"4,keyasint,omitempty"`
}

// Ping carries the sender's load both ways.
type Ping struct {
	Load     uint32 `cbor:"1,keyasint,omitempty"`
	Capacity uint32 `cbor:"2,keyasint,omitempty"`
}

// StoreReq asks the receiving super peer to coordinate a quorum write of
// the record's entries (merged into what the replicas hold).
type StoreReq struct {
	Record record.Record `cbor:"1,keyasint"`
	// Echo asks for the record's live state as the write quorum holds it
	// after the write (StoreResp.Record): a registrar's 200 lists every
	// binding, and this saves it a quorum read.
	Echo bool `cbor:"2,keyasint,omitempty"`
}

// StoreResp reports how many replicas acknowledged.
type StoreResp struct {
	Acks     int `cbor:"1,keyasint"`
	Replicas int `cbor:"2,keyasint"`
	// Record is the live state after the write when Echo was asked (nil
	// when it has no live entry, or from a super peer that predates Echo).
	Record *record.Record `cbor:"3,keyasint,omitempty"`
}

// FetchReq names one record. One asks for a routing read: one replica's
// live copy is enough (the super peer's own when it is a replica), and a
// quorum read is made only when that copy has no live entry.
type FetchReq struct {
	Kind record.Kind `cbor:"1,keyasint"`
	Name string      `cbor:"2,keyasint"`
	One  bool        `cbor:"3,keyasint,omitempty"`
}

// FetchResp carries a record (nil: the replica holds nothing).
type FetchResp struct {
	Record *record.Record `cbor:"1,keyasint,omitempty"`
}

// RemoveReq tombstones entries of a record: those with the given keys, or
// every live one when Keys is empty.
type RemoveReq struct {
	Kind record.Kind `cbor:"1,keyasint"`
	Name string      `cbor:"2,keyasint"`
	Keys []string    `cbor:"3,keyasint,omitempty"`
}

// FindReq asks for the providers of a service.
type FindReq struct {
	Service string `cbor:"1,keyasint"`
}

// ReadReq asks a replica for its local copy of a record.
type ReadReq struct {
	Kind record.Kind `cbor:"1,keyasint"`
	Name string      `cbor:"2,keyasint"`
}

// ReplicateReq hands records to a replica, which merges them.
type ReplicateReq struct {
	Records []record.Record `cbor:"1,keyasint"`
	// Writer is the authenticated writer the coordinator admitted; the
	// replica checks the access rules again against it. Empty for
	// hand-off and repair, which carry already-admitted entries.
	Writer string `cbor:"2,keyasint,omitempty"`
	// WriterPeer is the writer session's Peer-ID (peer records).
	WriterPeer ids.PeerID `cbor:"3,keyasint,omitempty"`
	// Echo asks the replica to return its copy of each record after the
	// merge (ReplicateResp.Records), so that the coordinator can answer a
	// write with the quorum's state (StoreReq.Echo).
	Echo bool `cbor:"4,keyasint,omitempty"`
}

// ReplicateResp reports how many records changed the replica.
type ReplicateResp struct {
	Applied int `cbor:"1,keyasint"`
	// Records are the replica's copies after the merge, when Echo was asked.
	Records []record.Record `cbor:"2,keyasint,omitempty"`
}

// BucketDigest summarises the records of one bucket shared by two replicas.
type BucketDigest struct {
	Bucket uint16 `cbor:"1,keyasint"`
	Hash   uint64 `cbor:"2,keyasint"`
	Count  uint32 `cbor:"3,keyasint"`
}

// DigestReq carries the sender's bucket digests for the records both it and
// the receiver should hold.
type DigestReq struct {
	Buckets []BucketDigest `cbor:"1,keyasint"`
}

// DigestResp lists the buckets whose digests differ.
type DigestResp struct {
	Mismatch []uint16 `cbor:"1,keyasint,omitempty"`
}

// SyncReq asks for the receiver's records, in the given buckets, that the
// sender should also hold. The answer is a ReplicateReq body.
type SyncReq struct {
	Buckets []uint16 `cbor:"1,keyasint"`
}

// Leave announces a graceful departure. Sent by a super peer to its
// agents, it asks them to attach elsewhere (Alternates first).
type Leave struct {
	Reason     string          `cbor:"1,keyasint,omitempty"`
	Alternates []SuperPeerInfo `cbor:"2,keyasint,omitempty"`
}

// MembersChange tells an agent of changes among the super peers it may
// use. Gone ones left the mesh, were declared dead, or are draining: the
// agent drops them from its alternates and moves a TURN allocation it
// holds on one of them, which would otherwise die unnoticed until its
// next self-probe. Joined ones (a restarted super peer back) may be
// alternates again.
type MembersChange struct {
	Gone   []SuperPeerInfo `cbor:"1,keyasint,omitempty"`
	Joined []SuperPeerInfo `cbor:"2,keyasint,omitempty"`
}

// Code classifies an Error. The values follow SIP's status codes so the
// SIP side can map them one to one.
type Code uint16

// Error codes.
const (
	CodeBadRequest   Code = 400
	CodeUnauthorized Code = 401
	CodeForbidden    Code = 403
	CodeNotFound     Code = 404
	CodeTimeout      Code = 408
	CodeTooLarge     Code = 413
	CodeUnknownType  Code = 415
	CodeUnknownPeer  Code = 480
	CodeHopLimit     Code = 483
	CodeInternal     Code = 500
	CodeUnavailable  Code = 503
	CodeNoQuorum     Code = 504
	CodeVersion      Code = 505
)

// Error is the body of a FlagError response: a reason the peer can show.
type Error struct {
	Code   Code   `cbor:"1,keyasint"`
	Reason string `cbor:"2,keyasint,omitempty"`
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s", e.Code, e.Reason) }

// Is lets errors.Is match on the code alone: errors.Is(err, &wire.Error{Code: CodeNotFound}).
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Code == e.Code
}

// Errorf builds an *Error.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Reason: fmt.Sprintf(format, args...)}
}

// CodeOf returns err's code, or CodeInternal for errors that are not *Error.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// Body limits: a message body may hold a hand-off batch, so arrays are
// generous; nesting and map sizes are tight (our messages are shallow).
const (
	maxNesting  = 12
	maxArray    = 1 << 14
	maxMapPairs = 64
	// MaxReason bounds Error.Reason as we send it.
	MaxReason = 512
)

var (
	modesOnce sync.Once
	encMode   cbor.EncMode
	decMode   cbor.DecMode
)

func modes() (cbor.EncMode, cbor.DecMode) {
	modesOnce.Do(func() {
		var err error
		encMode, err = cbor.CoreDetEncOptions().EncMode()
		if err != nil {
			panic(err) // static options: cannot fail
		}
		decMode, err = cbor.DecOptions{
			MaxNestedLevels:  maxNesting,
			MaxArrayElements: maxArray,
			MaxMapPairs:      maxMapPairs,
			IndefLength:      cbor.IndefLengthForbidden,
			DupMapKey:        cbor.DupMapKeyEnforcedAPF,
			TagsMd:           cbor.TagsForbidden,
		}.DecMode()
		if err != nil {
			panic(err)
		}
	})
	return encMode, decMode
}

// Marshal encodes a message body.
func Marshal(v any) ([]byte, error) {
	em, _ := modes()
	b, err := em.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", v, err)
	}
	return b, nil
}

// Unmarshal decodes a message body with the protocol's limits.
func Unmarshal(b []byte, v any) error {
	if len(b) > MaxFrameSize {
		return fmt.Errorf("decode %T: %w", v, ErrTooLarge)
	}
	_, dm := modes()
	if err := dm.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %T: %w: %w", v, ErrMalformed, err)
	}
	return nil
}
