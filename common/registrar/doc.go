// Package localsip is the ordinary-peer agent's registrar for the phone(s)
// it serves on loopback (ARCHITECTURE.md §6, "Coupling"): REGISTER from the
// phone becomes location contacts of the agent's user in the overlay,
// stamped with this agent's Peer-ID and attachment, and the phone's flow
// (transport and source address) is kept so common/siproute can reach it.
//
// The in-memory binding table is the source of truth: Restore re-stores it
// after the agent fails over to another super peer, and Run drops bindings
// as they expire. The overlay record is written through Store, the agent's
// authenticated session, so the record's owner is always the agent's user.
package localsip
