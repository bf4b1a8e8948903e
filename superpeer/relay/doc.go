// Package relay is a super peer's STUN and TURN service (ARCHITECTURE.md
// §7), built on pion/turn v2 on the --turn-port sockets (UDP, and TCP when
// a listener is given).
//
//   - STUN Binding is answered without credentials (pion does it).
//   - TURN takes the overlay's TURN-REST credentials (common/auth): username
//     "EXPIRY:USER", password base64(HMAC-SHA1(overlay secret, username)),
//     the same credential that attach and SIP digest take. Missing, wrong,
//     malformed or expired credentials get 401.
//   - Allocations are capped per user and in total; past a cap an Allocate
//     gets 486 Allocation Quota Reached.
//   - Relaying to loopback (unless Config.AllowLoopback), link-local,
//     unspecified, multicast and non-IPv4 peers, and to the super peer's
//     own service ports, is refused: CreatePermission and ChannelBind get
//     403 (443 for IPv6), datagrams are dropped. No SSRF through the relay.
//
// The UDP port is read by several sockets in one SO_REUSEPORT group
// (Config.UDPSockets, one per core up to 4), each with its own pion read
// loop: pion handles a datagram start to finish on the loop that read
// it, so one socket would cap relaying near one core.
//
// pion/turn v2 has no hooks for the 401, the 486, the 403 or allocation
// lifetime events; gate.go explains how they are produced around it.
//
// Metrics: p2psip_turn_allocations (gauge), p2psip_turn_allocations_total,
// p2psip_turn_refused_total{reason="auth|quota|permission"}.
package relay
