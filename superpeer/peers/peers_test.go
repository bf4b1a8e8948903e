package peers

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/link"
	"github.com/p2psip/p2psip/common/wire"
)

// TestProbe: a link whose other end answers Pings stays; links whose
// other end went silent (the packets vanish: nothing reads them) are
// closed within Probe+ProbeTimeout, whether anything was sent on them or
// not.
func TestProbe(t *testing.T) {
	log := zerolog.Nop()
	ctx, cancel := context.WithCancel(context.Background())
	p := New(Config{Self: ids.PeerID{1}, Probe: 50 * time.Millisecond, ProbeTimeout: 200 * time.Millisecond}, log)
	var runs []chan error
	run := func(c *link.Conn) {
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		runs = append(runs, done)
	}
	var silentEnds []net.Conn
	t.Cleanup(func() {
		cancel()
		for _, d := range runs {
			<-d
		}
		for _, c := range silentEnds {
			c.Close()
		}
		p.wg.Wait()
	})
	pong := func(c *link.Conn, f *wire.Frame) {
		if f.Type == wire.TypePing {
			c.Reply(f, &wire.Ping{}) //nolint:errcheck
		}
	}
	// A live link: both ends run, the far one answers Pings.
	live, liveFar := net.Pipe()
	liveConn := link.New(live, link.Config{}, log)
	run(liveConn)
	run(link.New(liveFar, link.Config{Handler: pong}, log))
	// Silent links: nothing reads the far end.
	silentConn := func() *link.Conn {
		a, b := net.Pipe()
		silentEnds = append(silentEnds, b)
		c := link.New(a, link.Config{}, log)
		run(c)
		return c
	}
	used, idle := silentConn(), silentConn()
	livePeer, usedPeer, idlePeer := ids.PeerID{2}, ids.PeerID{3}, ids.PeerID{4}
	p.Adopt(livePeer, liveConn)
	p.Adopt(usedPeer, used)
	p.Adopt(idlePeer, idle)
	if c, err := p.Conn(ctx, usedPeer); err != nil || c != used {
		t.Fatalf("Conn = %p, %v; want the adopted link", c, err)
	}
	if err := used.Send(&wire.Frame{Header: wire.Header{Type: wire.TypeTunnel}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*link.Conn{used, idle} {
		select {
		case <-c.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("a silent link was not closed within 10 s")
		}
	}
	if n := p.SilentCloses(); n != 2 {
		t.Errorf("SilentCloses = %d, want 2", n)
	}
	// The live one keeps answering through many probes.
	for range 10 {
		time.Sleep(p.cfg.Probe)
		select {
		case <-liveConn.Done():
			t.Fatalf("the live link was closed: %v", liveConn.Err())
		default:
		}
	}
	if links := p.Links(); !slices.Equal(links, []ids.PeerID{livePeer}) {
		t.Errorf("links %v: want the live one only", links)
	}
}
