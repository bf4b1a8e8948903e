package promoted

import (
	"net"
	"sync"
)

// chanListener is the super peer's peer-protocol listener after
// promotion: Run keeps accepting on the real socket (which answered the
// dial-back tests) and pushes each connection here, so the port never
// closes between the test and the super peer.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// push hands nc to Accept, or closes it once the listener is closed.
func (l *chanListener) push(nc net.Conn) {
	select {
	case l.conns <- nc:
	case <-l.done:
		nc.Close()
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case nc := <-l.conns:
		return nc, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
