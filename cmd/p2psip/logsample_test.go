package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLogSampling floods a super peer running at --log-level debug with
// SIP requests its edge rejects (a foreign domain: 403 and one debug line
// each, per message). With --log-sample off every one is logged; with the
// sampling the per-message lines stay within the burst plus one in EVERY,
// while the super peer answers every request.
func TestLogSampling(t *testing.T) {
	t.Parallel()
	const flood = 400
	for _, tc := range []struct {
		sample   string
		min, max int
	}{
		{"off", flood, 2 * flood}, // a datagram resent after a loss may log twice
		// The burst is shared with the start-up's own debug lines.
		{"10/1h,1/100", 1, 10 + flood/100 + 1},
	} {
		t.Run(tc.sample, func(t *testing.T) {
			dir := t.TempDir()
			sipPort := freePort(t)
			sp := startSuperpeer(t, dir, nil, "--data-dir", "data", "--admin", "off",
				"--peer-port", "0", "--gossip-port", "0", "--sips-port", "0", "--turn-port", "0",
				"--sip-port", strconv.Itoa(sipPort), "--log-level", "debug", "--log-sample", tc.sample)
			edge := fmt.Sprintf("127.0.0.1:%d", sipPort)
			deadline := time.Now().Add(15 * time.Second)
			for !strings.Contains(sp.stderr.String(), "super peer ready") {
				if time.Now().After(deadline) {
					t.Fatalf("super peer not ready:\n%s", sp.stderr)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if got := floodForeign(t, edge, flood); got != flood {
				t.Fatalf("%d of %d requests answered 403", got, flood)
			}
			if err := sp.stop(10 * time.Second); err != nil {
				t.Fatal(err)
			}
			n := strings.Count(sp.stderr.String(), `"message":"request rejected"`)
			if n < tc.min || n > tc.max {
				t.Errorf("--log-sample %s: %d per-message lines for %d requests, want %d..%d", tc.sample, n, flood, tc.min, tc.max)
			}
			if !strings.Contains(sp.stderr.String(), `"message":"left the overlay"`) {
				t.Errorf("an info line is missing: sampling must not touch lifecycle lines")
			}
			t.Logf("--log-sample %s: %d per-message lines for %d requests", tc.sample, n, flood)
		})
	}
}

// floodForeign sends n OPTIONS for a foreign domain to the edge, one at a
// time (each retried once on a lost datagram), and counts the 403s.
func floodForeign(t *testing.T, edge string, n int) int {
	t.Helper()
	c, err := net.Dial("udp", edge)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := c.LocalAddr().String()
	buf := make([]byte, 4096)
	got := 0
	for i := range n {
		msg := fmt.Sprintf("OPTIONS sip:x@foreign.example SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-flood-%d\r\n"+
			"Max-Forwards: 70\r\nFrom: <sip:a@foreign.example>;tag=f%d\r\nTo: <sip:x@foreign.example>\r\n"+
			"Call-ID: flood-%d\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", local, i, i, i)
		for try := 0; try < 2; try++ {
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second)) //nolint:errcheck
			m, err := c.Read(buf)
			if err == nil && strings.HasPrefix(string(buf[:m]), "SIP/2.0 403") {
				got++
				break
			}
		}
	}
	return got
}
