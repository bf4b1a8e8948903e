package route

import "github.com/p2psip/p2psip/common/ids"

// BlockForTest makes the router treat super peer sp as unreachable:
// tunnel frames it would forward there are answered with an error frame
// (as when the link cannot be dialled). Tests only (TURN fallback).
func (r *Router) BlockForTest(sp ids.PeerID) { r.blocked.Store(sp, false) }

// DropForTest makes the router silently drop the tunnel frames it would
// forward to super peer sp, with no error frame back: a link cut without
// a reset, where the TLS write just buffers and memberlist's indirect
// probes keep both ends alive. Tests only (TURN fallback on a timeout).
func (r *Router) DropForTest(sp ids.PeerID) { r.blocked.Store(sp, true) }

// UnblockForTest undoes BlockForTest and DropForTest.
func (r *Router) UnblockForTest(sp ids.PeerID) { r.blocked.Delete(sp) }
