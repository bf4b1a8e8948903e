// Package siproute is the SIP routing core shared by the ordinary-peer agent
// and the super peer's SIP edge (ARCHITECTURE.md §6): a stateful,
// Record-Routing proxy built on emiago/sipgo whose downstream is either a
// phone registered here (over its UDP/TCP flow), another overlay node (over
// the tunnel), or a plain SIP host named by a Route header.
//
// # Tunnel
//
// SIP between overlay nodes travels as opaque Tunnel payloads addressed to a
// Peer-ID (Sender.SendTunnel out, Router.Deliver in). sipgo has no way to
// inject parsed messages, so the router serves sipgo a net.Listener of its
// own (served as "TLS"; sipgo does no handshake on a listener it is given)
// whose Accept yields one virtual stream connection per remote Peer-ID. Each
// connection has a unique fake remote address in 100.64.0.0/10 (port 5061);
// inbound payloads are written into it, and every message sipgo writes on it
// becomes one SendTunnel call. To send to a peer, the router makes sure the
// peer's connection is in sipgo's pool, then sets transport "TLS" and the
// fake address as destination. A dialer guard refuses 100.64.0.0/10 so that
// sipgo never puts a packet on the wire for a fake address.
//
// # Routing
//
// Every node inserts one Record-Route, <sip:{PeerID hex}@{host}:{port};lr;p2p>:
// the local phone reaches host:port, a remote node recognises the p2p
// parameter and tunnels to the Peer-ID in the user part. Requests are
// routed by their Route set first; with none left, a request from the
// tunnel goes to the local phone owning the Request-URI, and a request from
// a local phone for an AoR of the overlay is looked up and forked in
// parallel to every contact. See route.go for the full decision list and
// proxy.go for the RFC 3261 §16 response handling.
package siproute
