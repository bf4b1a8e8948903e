//go:build !linux

package relay

import "net"

// siblings is Linux only: SO_REUSEPORT balances datagrams over a group
// only there (on the BSDs the last socket bound gets them all).
func siblings(net.PacketConn, int) ([]net.PacketConn, error) {
	return nil, errReusePort
}
