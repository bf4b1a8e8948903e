package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/p2psip/p2psip/common/ids"
)

// meshExporterLabel is the RFC 8446 §7.5 exporter label of the mesh proof.
// Binding the proof to exported keying material ties it to one TLS
// session: a proof captured or relayed from another session is useless.
const meshExporterLabel = "EXPORTER-p2psip-mesh"

// MeshProofLen is the length of a mesh proof (an HMAC-SHA256).
const MeshProofLen = sha256.Size

// MeshProof is what super peer from sends to super peer to on a mesh
// data-plane link to show that it knows the overlay secret:
// HMAC-SHA256(DeriveKey(secret, "mesh", 32), exporter || from || to) with
// exporter = cs.ExportKeyingMaterial("EXPORTER-p2psip-mesh", nil, 32).
// Both ends of one TLS session compute the same exporter; the Peer-IDs
// fix the direction, so a proof cannot be reflected back to its sender.
func MeshProof(secret []byte, cs tls.ConnectionState, from, to ids.PeerID) ([]byte, error) {
	if len(secret) == 0 {
		return nil, fmt.Errorf("mesh proof: %w: empty", ErrShortSecret)
	}
	// A zero ConnectionState has no exporter and calling it would panic.
	if !cs.HandshakeComplete {
		return nil, errors.New("mesh proof: handshake not complete")
	}
	ekm, err := cs.ExportKeyingMaterial(meshExporterLabel, nil, 32)
	if err != nil {
		return nil, fmt.Errorf("mesh proof: export keying material: %w", err)
	}
	m := hmac.New(sha256.New, DeriveKey(secret, "mesh", 32))
	m.Write(ekm)
	m.Write(from[:])
	m.Write(to[:])
	return m.Sum(nil), nil
}

// CheckMeshProof checks, in constant time, a proof received on the session
// cs from super peer from, addressed to this node to. A mismatch is
// ErrBadProof; other errors mean the proof could not be computed at all.
func CheckMeshProof(secret []byte, cs tls.ConnectionState, from, to ids.PeerID, proof []byte) error {
	want, err := MeshProof(secret, cs, from, to)
	if err != nil {
		return fmt.Errorf("check mesh proof from %s: %w", from.Short(), err)
	}
	if !hmac.Equal(want, proof) {
		return fmt.Errorf("check mesh proof from %s: %w", from.Short(), ErrBadProof)
	}
	return nil
}
