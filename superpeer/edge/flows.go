package edge

import (
	"context"
	"net"
	"sync"
)

// flowWatch learns when phones' TCP and TLS connections close. sipgo has
// no public close hook, but it serves the listeners we give it and closes
// every connection it accepted when it is done with it (the phone hung up,
// a read failed, a framing error): the wrapped connection's Close reports
// the flow, and the edge's watcher drops its bindings.
type flowWatch struct {
	wake chan struct{} // capacity 1: "closed has entries"

	mu     sync.Mutex // guards closed
	closed []flow
}

// flow is one phone connection as sipgo's pool names it.
type flow struct{ transport, source string }

func newFlowWatch() *flowWatch { return &flowWatch{wake: make(chan struct{}, 1)} }

// wrap returns l with connections that report their close and stay
// within limits. refuse, if set, is asked about each accepted
// connection's remote address; refused connections, and those past the
// limits, are closed at once.
func (w *flowWatch) wrap(l net.Listener, transport string, limits *connLimits, refuse func(net.Addr) bool) net.Listener {
	return &flowListener{Listener: l, w: w, transport: transport, limits: limits, refuse: refuse}
}

// add queues a closed flow; it never blocks (sipgo's reader calls it).
func (w *flowWatch) add(f flow) {
	w.mu.Lock()
	w.closed = append(w.closed, f)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *flowWatch) take() []flow {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.closed
	w.closed = nil
	return out
}

type flowListener struct {
	net.Listener
	w         *flowWatch
	transport string
	limits    *connLimits
	refuse    func(net.Addr) bool
}

func (l *flowListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.refuse != nil && l.refuse(c.RemoteAddr()) {
			c.Close()
			continue
		}
		ip, why := l.limits.admit(c.RemoteAddr())
		if why != "" {
			c.Close()
			l.limits.log.Warn().Str("remote_addr", c.RemoteAddr().String()).Str("transport", l.transport).
				Str("reason", why).Msg("phone connection refused")
			continue
		}
		// The limits' wrapper is inside: flowConn's Close reaches it.
		return &flowConn{Conn: l.limits.wrap(c, ip), w: l.w, f: flow{transport: l.transport, source: c.RemoteAddr().String()}}, nil
	}
}

// flowConn reports its first Close.
type flowConn struct {
	net.Conn
	w    *flowWatch
	f    flow
	once sync.Once
}

func (c *flowConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.w.add(c.f) })
	return err
}

// watchFlows drops the bindings of closed flows until ctx ends.
func (e *Edge) watchFlows(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-e.flows.wake:
		}
		for _, f := range e.flows.take() {
			if ctx.Err() != nil {
				// Shutting down: every connection closes now; the bindings
				// expire on their own.
				return nil
			}
			e.stats.flowsClosed.Add(1)
			if n := e.reg.DropFlow(f.transport, f.source); n > 0 {
				e.stats.bindingsDropped.Add(uint64(n))
			}
		}
	}
}
