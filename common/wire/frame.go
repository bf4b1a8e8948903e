// Package wire is the peer protocol's codec (ARCHITECTURE.md §4): framing,
// the frame header, message bodies and their limits. It is pure: no
// connections, no goroutines. One codec serves agents, clients and super
// peers.
//
// Frame layout (big endian):
//
//	0      4     5     6      7     8          16
//	+------+-----+-----+------+-----+----------+
//	| len  | ver | typ | flag | hop |   txid   |   fixed header, 16 bytes
//	+------+-----+-----+------+-----+----------+
//	| src Peer-ID (16) | dst Peer-ID (16) | via Peer-ID (16) |  only if FlagRouted
//	+--------------------------------------------------------+
//	| body: CBOR for control messages, raw bytes for Tunnel  |
//	+--------------------------------------------------------+
//
// len counts the bytes after itself and never exceeds MaxFrameSize, which
// a reader checks before it allocates.
//
// Protocol flow:
//
//	client → SP   Hello{role, credentials | mesh proof}   ← HelloOK | Error
//	steady state  requests (Store, Fetch, ...) and responses with FlagResponse
//	              and the request's txid, multiplexed on one connection;
//	              Ping/Pong keepalive; routed Tunnel frames with a hop count.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/p2psip/p2psip/common/ids"
)

// Version is the protocol version this codec speaks.
const Version = 1

// Limits. MaxFrameSize bounds one frame (a hand-off batch is the largest
// legitimate frame); MaxHops is the design's hop bound for routed frames.
const (
	MaxFrameSize = 1 << 20
	MaxHops      = 3
	fixedLen     = 12 // after the 4-byte length: ver, typ, flags, hops, txid
	routedLen    = 3 * ids.Len
)

// HeaderLen is the encoded size of a header with the given flags, length
// prefix included.
func HeaderLen(f Flags) int {
	if f&FlagRouted != 0 {
		return 4 + fixedLen + routedLen
	}
	return 4 + fixedLen
}

// Type is a message type.
type Type uint8

// Message types. Each request is answered by a frame of the same type
// with FlagResponse (and FlagError with an Error body on failure).
const (
	// TypeHello: any → SP, first frame of a connection. Body Hello; reply HelloOK.
	TypeHello Type = 1
	// TypePing: either way, keepalive. Body Ping (load); reply Ping.
	TypePing Type = 2
	// TypeStore: client/agent → SP, coordinate a quorum write. Body StoreReq; reply StoreResp.
	TypeStore Type = 3
	// TypeFetch: client/agent → SP, coordinate a quorum read. Body FetchReq; reply FetchResp.
	TypeFetch Type = 4
	// TypeRemove: client/agent → SP, tombstone entries. Body RemoveReq; reply StoreResp.
	TypeRemove Type = 5
	// TypeFind: client/agent → SP, providers of a service. Body FindReq; reply FetchResp.
	TypeFind Type = 6
	// TypeReplicate: SP → SP, apply records to a replica (writes, hand-off, repair). Body ReplicateReq; reply ReplicateResp.
	TypeReplicate Type = 7
	// TypeRead: SP → SP, a replica's local copy of one record. Body ReadReq; reply FetchResp.
	TypeRead Type = 8
	// TypeDigest: SP → SP, anti-entropy bucket digests. Body DigestReq; reply DigestResp.
	TypeDigest Type = 9
	// TypeSync: SP → SP, the records of some buckets. Body SyncReq; reply ReplicateReq.
	TypeSync Type = 10
	// TypeTunnel: routed, any → any; opaque payload (a SIP message) for Dst.
	TypeTunnel Type = 11
	// TypeLeave: SP → peers, graceful departure. Body Leave; reply empty.
	TypeLeave Type = 12
	// TypeAttach: agent → SP, ask to be admitted. Body Attach; reply AttachResult.
	TypeAttach Type = 13
	// TypePromote: agent (role auto) → its SP, ask to become a super peer. Body PromoteReq; reply PromoteResp.
	TypePromote Type = 14
	// TypeDialBack: SP → SP, test that a node answers at its advertised address. Body DialBackReq; reply DialBackResp.
	TypeDialBack Type = 15
	// TypeMembers: SP → its agents, one way (no reply): super peers that
	// left the mesh, died or began draining, and ones that (re)joined.
	// Body MembersChange.
	TypeMembers Type = 16

	maxType = TypeMembers
)

var typeNames = [...]string{"", "hello", "ping", "store", "fetch", "remove", "find", "replicate", "read", "digest", "sync", "tunnel", "leave", "attach", "promote", "dialback", "members"}

func (t Type) String() string {
	if t >= 1 && t <= maxType {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Known reports whether t is a type this version defines.
func (t Type) Known() bool { return t >= 1 && t <= maxType }

// Flags qualify a frame.
type Flags uint8

const (
	// FlagResponse marks the answer to the request with the same TxID.
	FlagResponse Flags = 1 << 0
	// FlagError marks a response whose body is an Error.
	FlagError Flags = 1 << 1
	// FlagRouted marks a frame that carries Src, Dst and Via.
	FlagRouted Flags = 1 << 2

	knownFlags = FlagResponse | FlagError | FlagRouted
)

// Header is a frame's header.
type Header struct {
	Version uint8
	Type    Type
	Flags   Flags
	Hops    uint8
	TxID    uint64
	Src     ids.PeerID // routed frames only
	Dst     ids.PeerID // routed frames only
	Via     ids.PeerID // routed frames only: the super peer that last forwarded it
}

// Frame is one protocol message.
type Frame struct {
	Header
	Body []byte
}

// Codec errors.
var (
	ErrTooLarge     = errors.New("frame too large")
	ErrVersion      = errors.New("unsupported protocol version")
	ErrMalformed    = errors.New("malformed frame")
	ErrHopLimit     = errors.New("hop limit reached")
	ErrUnknownType  = errors.New("unknown message type")
	errShortRouted  = errors.New("routed frame shorter than its header")
	errUnknownFlags = errors.New("unknown flags")
)

// Forward accounts for one more overlay hop. A frame that would take a
// fourth hop is refused: the forwarder drops it and answers ErrHopLimit.
func (h *Header) Forward() error {
	if h.Hops >= MaxHops {
		return ErrHopLimit
	}
	h.Hops++
	return nil
}

// IsResponse reports whether the frame answers a request.
func (h *Header) IsResponse() bool { return h.Flags&FlagResponse != 0 }

// AppendFrame appends f's encoding to b. It does not check the size; use
// Encode or WriteFrame for that.
func AppendFrame(b []byte, f *Frame) []byte {
	n := fixedLen + len(f.Body)
	if f.Flags&FlagRouted != 0 {
		n += routedLen
	}
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	ver := f.Version
	if ver == 0 {
		ver = Version
	}
	b = append(b, ver, byte(f.Type), byte(f.Flags), f.Hops)
	b = binary.BigEndian.AppendUint64(b, f.TxID)
	if f.Flags&FlagRouted != 0 {
		b = append(b, f.Src[:]...)
		b = append(b, f.Dst[:]...)
		b = append(b, f.Via[:]...)
	}
	return append(b, f.Body...)
}

// Encode returns f's encoding, or ErrTooLarge.
func Encode(f *Frame) ([]byte, error) {
	if HeaderLen(f.Flags)-4+len(f.Body) > MaxFrameSize {
		return nil, fmt.Errorf("encode %s: %w (%d bytes)", f.Type, ErrTooLarge, len(f.Body))
	}
	return AppendFrame(make([]byte, 0, HeaderLen(f.Flags)+len(f.Body)), f), nil
}

// WriteFrame encodes f onto w.
func WriteFrame(w io.Writer, f *Frame) error {
	b, err := Encode(f)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ReadFrame reads one frame. max bounds the frame (0 means MaxFrameSize);
// the length is checked before anything is allocated. It reads exactly the
// frame's bytes, so an unbuffered r is left at the next frame; loops pass a
// *bufio.Reader.
func ReadFrame(r io.Reader, max int) (*Frame, error) {
	if max <= 0 || max > MaxFrameSize {
		max = MaxFrameSize
	}
	var lb [4]byte
	if _, err := io.ReadFull(r, lb[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(lb[:]))
	if n > max {
		return nil, fmt.Errorf("%w: %d > %d bytes", ErrTooLarge, n, max)
	}
	if n < fixedLen {
		return nil, fmt.Errorf("%w: length %d shorter than the header", ErrMalformed, n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read frame body: %w", err)
	}
	return decodeBody(buf)
}

// Decode parses one whole frame held in b (length prefix included).
func Decode(b []byte) (*Frame, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	n := int(binary.BigEndian.Uint32(b))
	if n > MaxFrameSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, n)
	}
	if n != len(b)-4 || n < fixedLen {
		return nil, fmt.Errorf("%w: length %d, have %d", ErrMalformed, n, len(b)-4)
	}
	return decodeBody(append([]byte(nil), b[4:]...))
}

// DecodeBody parses one frame whose length prefix was read already:
// len(body) is that length. The frame keeps body (no copy), so the caller
// hands it over.
func DecodeBody(body []byte) (*Frame, error) {
	if len(body) > MaxFrameSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(body))
	}
	if len(body) < fixedLen {
		return nil, fmt.Errorf("%w: length %d shorter than the header", ErrMalformed, len(body))
	}
	return decodeBody(body)
}

// decodeBody parses a frame after its length prefix; it keeps buf.
func decodeBody(buf []byte) (*Frame, error) {
	f := &Frame{}
	f.Version = buf[0]
	if f.Version != Version {
		return nil, fmt.Errorf("%w %d (want %d)", ErrVersion, f.Version, Version)
	}
	f.Type = Type(buf[1])
	f.Flags = Flags(buf[2])
	f.Hops = buf[3]
	f.TxID = binary.BigEndian.Uint64(buf[4:12])
	if f.Flags&^knownFlags != 0 {
		return nil, fmt.Errorf("%w: %w %#x", ErrMalformed, errUnknownFlags, uint8(f.Flags))
	}
	if f.Hops > MaxHops {
		return nil, fmt.Errorf("%w: %d hops", ErrHopLimit, f.Hops)
	}
	rest := buf[fixedLen:]
	if f.Flags&FlagRouted != 0 {
		if len(rest) < routedLen {
			return nil, fmt.Errorf("%w: %w", ErrMalformed, errShortRouted)
		}
		copy(f.Src[:], rest[0:16])
		copy(f.Dst[:], rest[16:32])
		copy(f.Via[:], rest[32:48])
		rest = rest[routedLen:]
	}
	if len(rest) > 0 {
		f.Body = rest
	}
	return f, nil
}
