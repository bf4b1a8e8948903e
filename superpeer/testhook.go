package superpeer

import "github.com/p2psip/p2psip/superpeer/route"

// RouterForTest exposes the tunnel router (tests only: route.BlockForTest).
func (n *Node) RouterForTest() *route.Router { return n.router }
