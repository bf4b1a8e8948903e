// Package edge is the super peer's SIP edge (ARCHITECTURE.md §6, concept
// doc 5.6): a standard SIP registrar and proxy for phones, softphones and
// gateways that run no agent and speak only RFC 3261 over UDP, TCP or TLS.
//
// It is glue around two shared pieces, so that agent and edge route SIP
// the same way:
//
//   - common/registrar in its many-user edge mode: digest-authenticated
//     REGISTER (realm = overlay name; credentials as Kamailio's
//     auth_ephemeral: username EXPIRY:USER, password HMAC of it under the
//     overlay secret; see digest.go), contacts stored in the overlay with
//     this super peer as SP and the phone's flow, the AoR's user equal to
//     the credential's user;
//   - common/siproute: lookup, parallel forking, Record-Route, and the
//     tunnel. Tunnel payloads leave through the super peer's route.Router
//     (Send: one hop to an agent attached here, two through the callee's
//     super peer) and arrive at Deliver (route.Config.Local).
//
// # Flows and NAT
//
// A phone is reached over the flow it registered from: a UDP phone at the
// source ip:port of its REGISTER (RFC 3581: with rport, responses go back
// to that port and sipgo adds rport and received; without, the REGISTER's
// 200 still gets received= when the Via's sent-by is not the source, so a
// phone behind NAT learns its public address), a TCP or TLS phone over its
// existing connection (sipgo pools accepted connections by remote address;
// the edge never needs to dial a phone). sipgo answers
// CRLFCRLF keepalives on TCP and TLS with CRLF. When a TCP or TLS
// connection closes, its bindings are tombstoned (the listener wrappers in
// flows.go see the close; a phone that lost its connection must register
// again from a new one).
//
// # Authentication policy for requests other than REGISTER
//
// Routing in from outside is allowed (concept doc 5.6, second example): any
// SIP host may send a request to an overlay AoR, to a phone registered here
// (a dialog's Request-URI) or to an overlay node named by our p2p
// Record-Route (the rest of such a dialog), without credentials; that
// reaches overlay users only, as a call to their AoR would. A request the
// edge would send out of the overlay — to a plain SIP host named by a Route
// header, where a gateway may turn it into a paid call — must come over
// the flow of a registered phone or carry digest credentials
// (Proxy-Authorization, answered 407 with a challenge otherwise): without
// that rule the edge is an open relay for toll fraud and reflection.
// Requests for other domains get 403 or 404 (ForeignDomain), without a
// challenge. A registered flow is trusted as its phone's user (it proved
// its credentials when it registered); that is weaker than a challenge on
// every call, since a UDP source address can be forged by someone who
// does not need the responses, and is the trade-off most phones expect.
//
// # Bad input and overload
//
// Above MaxInFlight requests in progress siproute answers 503 with
// Retry-After. A message sipgo cannot parse is dropped (UDP) or closes the
// connection (TCP/TLS), logged by sipgo. Requests missing mandatory
// headers get 400; any header value with a control character (a CR or LF
// that survived parsing, NUL, ...) gets 400 before anything is stored or
// forwarded.
//
// # TLS
//
// SIPS is served on its own listener with the node's certificate or an
// operator's. sipgo's TLS transport also carries the tunnel's virtual
// connections, whose fake addresses lie in 100.64.0.0/10 and which
// siproute recognises by address; TLS phones connecting from that prefix
// are refused so that none can pass for an overlay peer. Gap: siproute's
// single Record-Route names the UDP/TCP port without a transport
// parameter, so a phone that follows RFC 3263 sends its in-dialog requests
// over UDP even when it registered over TCP or TLS (requests to the phone
// still use its flow); RFC 5658 double Record-Route would fix that. Another
// gap: without RFC 5626 flow tokens, two phones behind different NATs that
// register the same contact URI collide; Flow then delivers to neither.
package edge
