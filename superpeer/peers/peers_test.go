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

// TestProbe: a link in use whose other end answers Pings stays; one
// whose other end went silent (the packets vanish: nothing reads them) is
// closed within Probe+ProbeTimeout; an idle silent link is left alone
// until it is used.
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

	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, id := range []ids.PeerID{livePeer, usedPeer} {
			if c, err := p.Conn(ctx, id); err == nil && c == nil {
				t.Fatal("Conn returned no link and no error")
			}
		}
		select {
		case <-used.Done():
		case <-time.After(20 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("the silent link in use was not closed within 10 s")
			}
			continue
		}
		break
	}
	if n := p.SilentCloses(); n != 1 {
		t.Errorf("SilentCloses = %d, want 1", n)
	}
	// The live one keeps answering through a few more probes.
	for range 10 {
		if _, err := p.Conn(ctx, livePeer); err != nil {
			t.Fatal(err)
		}
		time.Sleep(p.cfg.Probe)
	}
	select {
	case <-liveConn.Done():
		t.Fatalf("the live link was closed: %v", liveConn.Err())
	case <-idle.Done():
		t.Fatal("the idle silent link was probed and closed")
	default:
	}
	links := p.Links()
	if !slices.Contains(links, livePeer) || !slices.Contains(links, idlePeer) || slices.Contains(links, usedPeer) {
		t.Errorf("links %v: want the live and the idle one only", links)
	}
	// Used at last, the idle silent link goes too.
	if _, err := p.Conn(ctx, idlePeer); err != nil {
		t.Fatal(err)
	}
	select {
	case <-idle.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the idle silent link, once used, was not closed within 10 s")
	}
}
