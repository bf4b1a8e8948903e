package link

import "syscall"

// canPark: this platform can watch a socket without a reader (see watch).
const canPark = true

// readable is the watcher's test for syscall.RawConn.Read: false (wait
// for the poller) while the socket has nothing to read, true once it has
// data, an end of stream or an error, which the next reader then meets.
// MSG_PEEK leaves the bytes for crypto/tls.
func readable(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN && err != syscall.EINTR
}
