package wire

import "github.com/p2psip/p2psip/common/ids"

// Promotion (ARCHITECTURE.md §5.6):
//
//	agent → SP(X)   Promote{advertised peer address, local, reflexive, uptime}
//	SP(X) → SP(T)   DialBack{the agent's Peer-ID, its advertised address}
//	SP(T) → node    TCP + TLS + Hello{RoleProbe} at that address; the node must
//	                prove, with the key its attach session used, that it answers there
//	SP(T) → SP(X)   DialBackResp{ok | reason}
//	SP(X) → agent   PromoteResp{grant: secret and mesh members | reason}
//
// T is another super peer than X when there is one, so the test does not
// pass merely because X and the node share a network path.

// PromoteReq asks the agent's super peer to promote it.
type PromoteReq struct {
	// PeerAddr is the peer-protocol address (IP:port) the would-be super
	// peer listens at; the dial-back test connects there.
	PeerAddr string `cbor:"1,keyasint"`
	// LocalAddr is the IP of the agent's own end of its uplink.
	LocalAddr string `cbor:"2,keyasint,omitempty"`
	// Reflexive is the agent's STUN reflexive address ("" if unknown).
	Reflexive string `cbor:"3,keyasint,omitempty"`
	// UptimeS is how long the agent has been running, in seconds.
	UptimeS uint32 `cbor:"4,keyasint,omitempty"`
}

// PromoteResp answers PromoteReq: a grant, or the reason there is none.
type PromoteResp struct {
	Promote bool `cbor:"1,keyasint,omitempty"`
	// Reason says why not (shown in the agent's status and log).
	Reason string `cbor:"2,keyasint,omitempty"`
	// RetryAfterS, if non-zero, is when asking again may succeed.
	RetryAfterS uint32        `cbor:"3,keyasint,omitempty"`
	Grant       *PromoteGrant `cbor:"4,keyasint,omitempty"`
}

// PromoteGrant is what a promoted node needs to join the mesh.
type PromoteGrant struct {
	// Secret is the overlay secret: a super peer needs it to verify
	// credentials, sign its node certificate with the overlay CA, prove
	// itself to the mesh and key the gossip. Handing it to a node is why
	// carrier deployments keep promotion off.
	Secret []byte `cbor:"1,keyasint"`
	// Join lists the members' gossip addresses.
	Join []string `cbor:"2,keyasint"`
	// Members are the current super peers.
	Members []SuperPeerInfo `cbor:"3,keyasint,omitempty"`
	// Replicas and WriteQuorum must match the mesh's: placement is
	// computed by every member alike.
	Replicas    int `cbor:"4,keyasint,omitempty"`
	WriteQuorum int `cbor:"5,keyasint,omitempty"`
	// The overlay's promotion policy, which the new super peer applies too.
	Promotion  string `cbor:"6,keyasint,omitempty"`
	MinUptimeS uint32 `cbor:"7,keyasint,omitempty"`
	Ratio      int    `cbor:"8,keyasint,omitempty"`
}

// DialBackReq asks another super peer to test that PeerID answers at Addr.
type DialBackReq struct {
	PeerID ids.PeerID `cbor:"1,keyasint"`
	Addr   string     `cbor:"2,keyasint"`
}

// DialBackResp is the tester's verdict.
type DialBackResp struct {
	OK     bool   `cbor:"1,keyasint,omitempty"`
	Reason string `cbor:"2,keyasint,omitempty"`
	// TookMS is how long the test took.
	TookMS uint32 `cbor:"3,keyasint,omitempty"`
}
