package relay

import (
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// Relay throughput: 172-byte UDP packets (a typical RTP voice packet)
// from a client through its allocation to a peer on loopback that echoes
// them back the same way, with up to benchWindow packets in flight.
// BenchmarkDirectRoundTrip is the reference: the same client socket and
// echo peer without the relay, measured in the same run (TESTING.md: the
// load generator shares the CPUs with the system under test).
//
// Metrics: pkts/s is packets that completed the round trip per second
// (each is two relayed datagrams); lost/op the fraction given up after
// benchLossWait.
const (
	benchPacket   = 172
	benchWindow   = 16
	benchLossWait = 200 * time.Millisecond
)

func BenchmarkRelayRoundTrip(b *testing.B) {
	ts := startServer(b, func(c *Config) { c.AllowLoopback = true })
	echo := echoPeer(b)
	cred := issue(b, "bench")
	relay, err := allocate(b, newClient(b, ts, cred.Username, cred.Password, false))
	if err != nil {
		b.Fatal(err)
	}
	// Warm up: the first packets go by Send indication while pion's
	// client binds a channel; measure the ChannelData steady state.
	roundTrips(b, relay, echo, 50)
	b.ResetTimer()
	roundTrips(b, relay, echo, b.N)
}

func BenchmarkDirectRoundTrip(b *testing.B) {
	echo := echoPeer(b)
	client := peer(b)
	roundTrips(b, client, echo, 50)
	b.ResetTimer()
	roundTrips(b, client, echo, b.N)
}

// roundTrips sends n packets from pc to echo and reads the echoes, with a
// window of benchWindow in flight; a read timeout counts what is
// outstanding as lost. It reports pkts/s and lost/op.
func roundTrips(b *testing.B, pc net.PacketConn, echo net.Addr, n int) {
	b.Helper()
	tokens := make(chan struct{}, benchWindow)
	for i := 0; i < benchWindow; i++ {
		tokens <- struct{}{}
	}
	var sent, done, lost atomic.Int64
	stop := make(chan struct{})
	recvErr := make(chan error, 1)
	start := time.Now()
	go func() {
		buf := make([]byte, 2048)
		for done.Load() < int64(n) {
			if err := pc.SetReadDeadline(time.Now().Add(benchLossWait)); err != nil {
				recvErr <- err
				return
			}
			_, _, err := pc.ReadFrom(buf)
			var k int64 = 1
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				k = sent.Load() - done.Load() // give up on what is in flight
				lost.Add(k)
			case err != nil:
				recvErr <- err
				return
			}
			done.Add(k)
			for i := int64(0); i < k; i++ {
				select {
				case tokens <- struct{}{}:
				default: // a late echo of a packet counted lost
				}
			}
		}
		close(stop)
	}()
	payload := make([]byte, benchPacket)
	for i := 0; i < n; i++ {
		select {
		case <-tokens:
		case err := <-recvErr:
			b.Fatal(err)
		}
		if _, err := pc.WriteTo(payload, echo); err != nil {
			b.Fatal(err)
		}
		sent.Add(1)
	}
	select {
	case <-stop:
	case err := <-recvErr:
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	_ = pc.SetReadDeadline(time.Time{})
	if n > 100 { // not for the warm-up
		b.ReportMetric(float64(int64(n)-lost.Load())/elapsed.Seconds(), "pkts/s")
		b.ReportMetric(float64(lost.Load())/float64(n), "lost/op")
	}
}
