// Package registrar is the RFC 3261 §10.3 registrar shared by the
// ordinary-peer agent and the super peer's SIP edge (ARCHITECTURE.md §6):
// REGISTER from a phone becomes location contacts of the user's AoR in the
// overlay, and the phone's flow (transport and source address) is kept so
// common/siproute can reach it (the Registrar is its siproute.Local).
//
// Two modes:
//
//   - Fixed user (the agent): Config.User is the one user, already
//     authenticated by the agent's session; only sip:User@Overlay is
//     accepted and contacts carry the agent's Peer-ID and attachment.
//   - Many users (the SIP edge): Config.Authorize authenticates each
//     REGISTER (digest) and names its user; the AoR's user must be that
//     user. Contacts carry no Peer-ID, the edge's super peer as SP, and the
//     phone's flow in Contact.Flow; DropFlow removes every binding of a
//     TCP/TLS connection that closed.
//
// The in-memory binding table is the source of truth for this node's
// bindings: Restore re-stores it (after an agent's failover), and Run drops
// bindings as they expire (their overlay entries expire on their own).
// Writes for one AoR are serialized; different AoRs proceed in parallel.
// REGISTERs of one AoR that arrive while its write is in flight are
// checked in order and written together in the next write (batch.go).
package registrar
