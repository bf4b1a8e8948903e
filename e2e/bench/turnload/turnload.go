// Package turnload is the project's own TURN load client (issue 7): it
// opens many allocations with TURN-REST credentials through pion/turn/v2's
// client, which measures allocations/s, then sends UDP through them at
// offered rates to a sink and counts what arrives, which measures the
// relayed packets/s a server sustains with no loss. coturn's
// turnutils_uclient connects about ten clients a second and cannot measure
// either. The same client drives our super peer's TURN and coturn
// (StartCoturn) in one run.
package turnload

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/turn/v2"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/logx"
)

// Config of a load run against one server.
type Config struct {
	// Server is the TURN server's UDP host:port.
	Server string
	// Realm is the server's realm; Secret its TURN-REST shared secret
	// (password = base64(HMAC-SHA1(secret, "EXPIRY:USER"))).
	Realm  string
	Secret []byte
	// Allocations is how many allocations Open makes, Workers how many at
	// once (default 16). Each gets its own user, so per-user quotas do
	// not interfere.
	Allocations, Workers int
	// PacketSize is the payload of a relayed packet (default 172 bytes,
	// an RTP voice packet).
	PacketSize int
	// Log receives pion's warnings (default: discarded).
	Log zerolog.Logger
}

// Load is a set of open allocations and a sink their relayed packets go to.
type Load struct {
	cfg    Config
	allocs []*allocation
	sink   *net.UDPConn
	recv   atomic.Int64
	done   chan struct{}
}

type allocation struct {
	conn   net.PacketConn
	client *turn.Client
	relay  net.PacketConn
}

func (a *allocation) close() {
	if a.relay != nil {
		_ = a.relay.Close() // Refresh with lifetime 0: frees the server's side
	}
	a.client.Close()
	_ = a.conn.Close()
}

// AllocStats is what Open measured.
type AllocStats struct {
	N       int
	Elapsed time.Duration
	// PerSec is N/Elapsed: full allocations (Allocate, 401, Allocate with
	// integrity, success) per second, Workers at a time.
	PerSec float64
}

func (s AllocStats) String() string {
	return fmt.Sprintf("%d allocations in %v: %.0f/s", s.N, s.Elapsed.Round(time.Millisecond), s.PerSec)
}

// Open makes cfg.Allocations allocations and a sink on 127.0.0.1. The
// allocations are closed by Close, also when Open fails.
func Open(ctx context.Context, cfg Config) (*Load, AllocStats, error) {
	if cfg.Allocations <= 0 {
		return nil, AllocStats{}, errors.New("turnload: Allocations must be positive")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 16
	}
	if cfg.PacketSize <= 0 {
		cfg.PacketSize = 172
	}
	server, err := net.ResolveUDPAddr("udp4", cfg.Server)
	if err != nil {
		return nil, AllocStats{}, fmt.Errorf("turnload: server %q: %w", cfg.Server, err)
	}
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, AllocStats{}, fmt.Errorf("turnload: sink: %w", err)
	}
	// The default 208 KB buffer would drop bursts at the sink and blame
	// the server.
	_ = sink.SetReadBuffer(8 << 20)
	l := &Load{cfg: cfg, sink: sink, done: make(chan struct{}), allocs: make([]*allocation, cfg.Allocations)}
	go l.count()

	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cfg.Workers)
	for i := range l.allocs {
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			a, err := allocate(server, cfg, fmt.Sprintf("load%d", i))
			if err != nil {
				return fmt.Errorf("turnload: allocation %d: %w", i, err)
			}
			l.allocs[i] = a
			return nil
		})
	}
	err = g.Wait()
	st := AllocStats{N: cfg.Allocations, Elapsed: time.Since(start)}
	st.PerSec = float64(st.N) / st.Elapsed.Seconds()
	if err != nil {
		l.Close()
		return nil, st, err
	}
	return l, st, nil
}

func allocate(server *net.UDPAddr, cfg Config, user string) (*allocation, error) {
	cred, err := auth.Issue(cfg.Secret, user, time.Hour, time.Now())
	if err != nil {
		return nil, err
	}
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: server.String(), TURNServerAddr: server.String(), Conn: conn,
		Username: cred.Username, Password: cred.Password, Realm: cfg.Realm,
		LoggerFactory: logx.Pion(cfg.Log),
	})
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	a := &allocation{conn: conn, client: c}
	if err := c.Listen(); err != nil {
		a.close()
		return nil, err
	}
	if a.relay, err = c.Allocate(); err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

// count counts the datagrams reaching the sink until it is closed.
func (l *Load) count() {
	defer close(l.done)
	buf := make([]byte, 2048)
	for {
		if _, err := l.sink.Read(buf); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		l.recv.Add(1)
	}
}

// Close deallocates everything (in parallel: a deallocation is a
// transaction) and closes the sink.
func (l *Load) Close() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, a := range l.allocs {
		if a == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			a.close()
		}()
	}
	wg.Wait()
	_ = l.sink.Close()
	<-l.done
}

// Warm creates the permission and channel binding of the first n
// allocations towards the sink and waits until packets sent through each
// of them arrive, so that a Step measures the ChannelData steady state.
func (l *Load) Warm(ctx context.Context, n int) error {
	n = min(n, len(l.allocs))
	sink := l.sink.LocalAddr()
	payload := make([]byte, l.cfg.PacketSize)
	for ctx.Err() == nil {
		before := l.recv.Load()
		for _, a := range l.allocs[:n] {
			if _, err := a.relay.WriteTo(payload, sink); err != nil {
				return fmt.Errorf("turnload: warm-up send: %w", err)
			}
		}
		// pion binds the channel in the background after the first send;
		// give the bindings time, then check that all of a round arrived.
		deadline := time.Now().Add(300 * time.Millisecond)
		for l.recv.Load()-before < int64(n) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if l.recv.Load()-before >= int64(n) {
			time.Sleep(100 * time.Millisecond) // the binding transactions end
			return nil
		}
	}
	return fmt.Errorf("turnload: warm-up: %w", ctx.Err())
}

// Step is one run at an offered rate.
type Step struct {
	Rate     int // offered packets/s in all
	Duration time.Duration
	Sent     int64
	Received int64
	// Achieved is packets received per second of sending.
	Achieved float64
	Err      error
}

// Lost is how many packets sent did not reach the sink.
func (s Step) Lost() int64 { return s.Sent - s.Received }

// OK: no loss, and the sender kept up with the offered rate.
func (s Step) OK() bool {
	return s.Err == nil && s.Lost() == 0 && s.Sent >= int64(0.95*float64(s.Rate)*s.Duration.Seconds())
}

func (s Step) String() string {
	status := "ok"
	if !s.OK() {
		status = "FAILED"
		if s.Err != nil {
			status += " (" + s.Err.Error() + ")"
		}
	}
	return fmt.Sprintf("%7d pkts/s offered for %v: sent %d, received %d (%.0f/s), lost %d: %s",
		s.Rate, s.Duration, s.Sent, s.Received, s.Achieved, s.Lost(), status)
}

// Send offers rate packets/s in all through the first n allocations for
// d, paced by a few senders, then waits for the stragglers.
func (l *Load) Send(n, rate int, d time.Duration) Step {
	n = min(n, len(l.allocs))
	st := Step{Rate: rate, Duration: d}
	sink := l.sink.LocalAddr()
	before := l.recv.Load()
	senders := min(n, 2)
	var sent atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, l.cfg.PacketSize)
			var mine []*allocation
			for i := s; i < n; i += senders {
				mine = append(mine, l.allocs[i])
			}
			share := float64(rate) / float64(senders)
			k := 0
			defer func() { sent.Add(int64(k)) }()
			for {
				elapsed := time.Since(start)
				if elapsed >= d {
					return
				}
				// Send what is due by now; sleep briefly when caught up.
				due := int64(share*elapsed.Seconds()) - int64(k)
				if due <= 0 {
					time.Sleep(200 * time.Microsecond)
					continue
				}
				for ; due > 0; due-- {
					if _, err := mine[k%len(mine)].relay.WriteTo(payload, sink); err != nil {
						firstErr.CompareAndSwap(nil, err)
						return
					}
					k++
				}
			}
		}()
	}
	wg.Wait()
	sendTime := time.Since(start)
	st.Sent = sent.Load()
	// Stragglers: wait until nothing has arrived for 200 ms (at most 2 s).
	last, since := l.recv.Load(), time.Now()
	for deadline := time.Now().Add(2 * time.Second); time.Since(since) < 200*time.Millisecond && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		if r := l.recv.Load(); r != last {
			last, since = r, time.Now()
		}
	}
	st.Received = l.recv.Load() - before
	st.Achieved = float64(st.Received) / sendTime.Seconds()
	if v := firstErr.Load(); v != nil {
		st.Err = v.(error)
	}
	return st
}
