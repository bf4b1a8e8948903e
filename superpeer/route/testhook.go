package route

import "github.com/p2psip/p2psip/common/ids"

// BlockForTest makes the router treat super peer sp as unreachable:
// tunnel frames it would forward there are answered with an error frame
// (as when the link cannot be dialled). Tests only (TURN fallback).
func (r *Router) BlockForTest(sp ids.PeerID) { r.blocked.Store(sp, struct{}{}) }

// UnblockForTest undoes BlockForTest.
func (r *Router) UnblockForTest(sp ids.PeerID) { r.blocked.Delete(sp) }
