package wire

import "github.com/p2psip/p2psip/common/ids"

// Attach asks a super peer to admit an agent (after HelloOK).
type Attach struct {
	// Promotable: the agent would become a super peer if found reachable.
	Promotable bool `cbor:"1,keyasint,omitempty"`
	// NoRedirect: the agent was redirected here; admit or refuse, don't
	// send it on again (no redirect loops).
	NoRedirect bool   `cbor:"2,keyasint,omitempty"`
	LocalAddr  string `cbor:"3,keyasint,omitempty"`
	Reflexive  string `cbor:"4,keyasint,omitempty"`
}

// AttachStatus is the outcome of an Attach.
type AttachStatus uint8

const (
	// AttachOK: admitted; the session is the agent's attachment.
	AttachOK AttachStatus = 1
	// AttachRedirect: go to the super peer in Redirect.
	AttachRedirect AttachStatus = 2
)

// SuperPeerInfo names a super peer an agent may attach to.
type SuperPeerInfo struct {
	PeerID   ids.PeerID `cbor:"1,keyasint" json:"peer_id"`
	PeerAddr string     `cbor:"2,keyasint" json:"peer_addr"`
	Load     uint32     `cbor:"3,keyasint,omitempty" json:"load"`
	Capacity uint32     `cbor:"4,keyasint,omitempty" json:"capacity"`
	// TURNAddr is its STUN/TURN address (UDP and TCP), if it runs one.
	TURNAddr string `cbor:"5,keyasint,omitempty" json:"turn_addr,omitempty"`
}

// AttachResult answers Attach. A full super peer answers an Error
// (CodeUnavailable) instead.
type AttachResult struct {
	Status   AttachStatus   `cbor:"1,keyasint"`
	Redirect *SuperPeerInfo `cbor:"2,keyasint,omitempty"`
	// KeepaliveMS is the Ping interval the agent must keep.
	KeepaliveMS uint32 `cbor:"3,keyasint,omitempty"`
	// Alternates are other super peers to fail over to, least loaded first.
	Alternates []SuperPeerInfo `cbor:"4,keyasint,omitempty"`
	// Self describes the admitting super peer.
	Self SuperPeerInfo `cbor:"5,keyasint"`
}

// Tunnel frames are routed (FlagRouted): Src is the sending node, Dst the
// destination node, and Via names a super peer. An agent sends with Hops
// 1 and Via = its hint of Dst's super peer (zero if unknown); the first
// super peer rewrites Via to itself before forwarding, so the receiving
// agent learns the sender's super peer and can answer through it. Every
// forwarder calls Header.Forward, so no frame takes a fourth hop.
//
// A frame that cannot be delivered comes back as a Tunnel frame with
// FlagError and an Error body, with Src = the unreachable destination,
// Dst = the original sender, and the original TxID. Error frames are
// never answered with errors.
