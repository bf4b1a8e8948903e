// Package auth holds the overlay's shared-secret and identity machinery
// (ARCHITECTURE.md §2, §7, §8):
//
//   - the overlay secret an operator holds (LoadSecret, CreateSecretFile)
//     and the keys derived from it with HKDF (DeriveKey, MemberlistKey);
//   - TURN-REST credentials, the scheme coturn and Kamailio's
//     auth_ephemeral use: username "EXPIRY:USER", password
//     base64(HMAC-SHA1(secret, username)). One credential from
//     `p2psip credentials issue` serves attach, SIP digest and TURN, and a
//     super peer checks it with nothing but the secret (Issue, Verify);
//   - each node's Ed25519 identity key, whose hash is its Peer-ID
//     (LoadOrCreateIdentity);
//   - the overlay CA, derived deterministically from the secret so every
//     super peer of one overlay holds the same CA without copying files,
//     and the TLS 1.3 configurations of the peer protocol (OverlayCA,
//     ServerTLSConfig, ClientTLSConfig);
//   - the mesh proof, by which a super peer shows the other end of a
//     data-plane link that it knows the secret, bound to that TLS session
//     (MeshProof, CheckMeshProof).
//
// Everything here is a pure function of its arguments plus, for the file
// helpers, the file system; there is no package state. Callers pass `now`
// so expiry logic is testable without clocks.
package auth
