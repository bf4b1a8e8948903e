package relay

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// siblings opens n further UDP sockets on pc's exact local address, all
// in one SO_REUSEPORT group with pc. The kernel hashes each datagram's
// 4-tuple to one socket of the group, so a client always lands on the
// same socket (and pion's allocation for its 5-tuple stays with that
// socket's read loop), while different clients spread over the sockets.
//
// SO_REUSEPORT is set on pc after its bind, not before: pc may have been
// bound on port 0, and an ephemeral bind with SO_REUSEPORT may be handed
// a port another reuseport group of this user already holds. Only a
// process of the same user can join the group afterwards, and such a
// process could read our memory anyway.
func siblings(pc net.PacketConn, n int) ([]net.PacketConn, error) {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return nil, fmt.Errorf("%w: %T is not a *net.UDPConn", errReusePort, pc)
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errReusePort, err)
	}
	if err := setReusePort(rc); err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error { return setReusePort(c) }}
	addr := uc.LocalAddr().String()
	var out []net.PacketConn
	for range n {
		s, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			for _, o := range out {
				_ = o.Close()
			}
			return nil, fmt.Errorf("%w: bind %s: %v", errReusePort, addr, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func setReusePort(c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return fmt.Errorf("%w: %v", errReusePort, err)
	}
	if serr != nil {
		return fmt.Errorf("%w: SO_REUSEPORT: %v", errReusePort, serr)
	}
	return nil
}
