//go:build e2e

// Package netns is the real-network end-to-end suite (ARCHITECTURE.md §12,
// issue 6): real `p2psip` processes and SIPp phones in Linux network
// namespaces, behind real iptables NATs, with faults injected (kill -9,
// packet loss).
//
// It runs as root, behind the e2e build tag:
//
//	go test -tags e2e -count=1 -v ./e2e/netns/...   (or: make e2e)
//
// Each test builds its own topology (NewTopology) and tears it down at
// cleanup, also when it fails; SIGINT and SIGTERM tear down every live
// topology; a run starts by deleting the namespaces that an interrupted
// run left behind (their names carry the creating process's pid).
//
// The topology, in documentation address ranges only (RFC 5737):
//
//	public segment 203.0.113.0/24: a bridge in a namespace of its own
//	  sp1 .11, sp2 .12, sp3 .13   super peers
//	  pub .20                     a public host that may be promoted
//	  phone .30                   a plain SIP phone
//	  nat1 .101 ── 192.0.2.1/25   ── lan1 192.0.2.10   MASQUERADE (port-preserving)
//	  nat2 .102 ── 192.0.2.129/25 ── lan2 192.0.2.130  MASQUERADE --random-fully
//
// The NAT routers forward only what their LAN host started (conntrack);
// the LAN hosts run the agents and SIPp phones.
//
// Nothing outside the namespaces and loopback is ever addressed, and the
// root namespace's interfaces, routes and firewall are never touched: every
// link is created inside a namespace (`ip -n NS link add ... peer ... netns
// NS2`), and forwarding is enabled only inside the NAT routers.
//
// Tests: TestTopology (the network itself, no agent), TestCallsAcrossNATs
// (scenario 1 of issue 6), TestSuperPeerKilledDuringCalls (2),
// TestTURNFallback (3), TestEdgePhone (4), TestPromotion (5),
// TestPacketLoss (6), TestSuperPeerSilentlyUnreachable (alice's super
// peer drops her traffic silently while she calls: she fails over within
// seconds, not keepalive intervals), TestRollingRestart (issue 8: every super peer in
// turn drained with SIGTERM and restarted, with records checked, no TURN
// allocation left on the draining one, and calls placed between
// restarts), TestEdgeFlood (a stranger on the public segment floods a
// super peer's SIP edge with hostile and malformed SIP while calls cross
// it) and TestEdgeConnFlood (the stranger opens silent TCP and TLS
// connections past the per-address limit while a phone on another host
// registers over TCP). Packet loss uses tc netem where the kernel has
// sch_netem, and otherwise an iptables statistic match on the same link
// (this machine's kernel has no netem).
//
// The p2psip binary is built once per run from this checkout;
// P2PSIP_E2E_BINARY=PATH tests a prebuilt one instead.
//
// P2PSIP_E2E_LOGS=DIR keeps every process's log under DIR/TEST/ (by
// default they live in the test's temporary directory, and the tail of
// each is printed when a test fails). Each scenario logs one SUMMARY line
// (calls attempted/succeeded/failed, reattach time, relayed share); run
// with -v to see it on success.
package netns
