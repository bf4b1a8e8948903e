package attachload

import (
	"context"
	"crypto/tls"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/e2e/bench/report"
	"github.com/p2psip/p2psip/e2e/harness"
)

// category names where a super peer's bytes for an idle agent go, by the
// first rule whose frame matches the allocation's stack.
var categories = []struct{ name, frame string }{
	{"TLS input and handshake buffers (sized by the ClientHello; X25519MLKEM768 key share)", "bytes.(*Buffer).grow"},
	{"TLS AES-GCM traffic keys", "crypto/tls.(*halfConn).setTrafficSecret"},
	{"agent's certificate, parsed and kept by crypto/tls", "crypto/tls.(*Conn).processCertsFromClient"},
	{"crypto/tls.Conn", "crypto/tls.Server"},
	{"other crypto/tls handshake state", "crypto/tls."},
	{"socket (net.netFD, poller, addresses)", "net."},
	{"link.Conn", "common/link.New"},
	{"per-session logger context", "zerolog"},
	{"session, handler and routing entries", "p2psip/superpeer/"},
}

// TestBenchAttachBreakdown attaches idle agents to an in-process super
// peer with every allocation profiled, and reports the live bytes per
// agent by what holds them: the answer to "where do the bytes go" beside
// the real process's figures of TestBenchAttach. Smoke: 100 agents; full:
// 2,000, then again with agents that offer X25519 only, to show what the
// post-quantum key share costs a super peer.
func TestBenchAttachBreakdown(t *testing.T) {
	start := time.Now()
	n := 100
	if report.Full() {
		n = 2000
	}
	old := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	defer func() { runtime.MemProfileRate = old }()

	var total int64
	var rows []row
	t.Run("default", func(t *testing.T) { total, rows = breakdown(t, n, nil) })
	if t.Failed() {
		return
	}
	lines := []string{fmt.Sprintf("live heap per idle attached agent on the super peer, profiled in process (%d agents; includes the super peer's fixed state spread over them): %.2f KiB",
		n, float64(total)/float64(n)/1024)}
	for _, r := range rows {
		lines = append(lines, fmt.Sprintf("  %6.0f B  %s", float64(r.bytes)/float64(n), r.name))
	}
	lines = append(lines, "plus one parked watcher goroutine per agent (its stack, 2–4 KiB) and, in RSS, the GC's headroom over the live heap (GOGC=100: up to as much again)")
	if report.Full() {
		var x int64
		var xrows []row
		t.Run("x25519", func(t *testing.T) { x, xrows = breakdown(t, n, []tls.CurveID{tls.X25519}) })
		for _, r := range xrows {
			if r.name == categories[0].name {
				lines = append(lines, fmt.Sprintf("with agents offering X25519 only (no post-quantum key share): %.2f KiB per agent, of it %.0f B TLS buffers",
					float64(x)/float64(n)/1024, float64(r.bytes)/float64(n)))
			}
		}
	}
	for _, l := range lines {
		t.Log(l)
	}
	if err := report.Emit(report.Fragment{
		Source: "attach",
		Results: []report.Result{report.Value("Scale of attach", "super peer live heap per idle agent, profiled (where the bytes go: see below)", "KiB",
			float64(total)/float64(n)/1024)},
		Lines:    lines,
		Duration: time.Since(start),
	}); err != nil {
		t.Fatal(err)
	}
}

type row struct {
	name  string
	bytes int64
}

// breakdown attaches n agents offering curves (nil: the default) to a
// fresh in-process super peer and returns the super peer's live heap
// bytes, in total and by category, once every session is idle.
func breakdown(t *testing.T, n int, curves []tls.CurveID) (int64, []row) {
	o := harness.New(t)
	o.Log = zerolog.Nop()
	sp := o.Start()
	g, err := New(Config{Addr: sp.Node.PeerAddr(), Overlay: o.Name, Secret: o.Secret, Roots: o.CA.Pool(), Agents: n,
		CurvePreferences: curves}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if st := g.Attach(context.Background()); st.Attached != n {
		t.Fatalf("attached %d of %d: %v", st.Attached, n, st.Errors)
	}
	// Let every session go idle (its reader parks after 2 s of silence).
	deadline := time.Now().Add(30 * time.Second)
	for sp.Node.RouterForTest().Attached() < n || parkedReaders() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("sessions not idle: %d attached, %d readers running", sp.Node.RouterForTest().Attached(), parkedReaders())
		}
		time.Sleep(100 * time.Millisecond)
	}
	runtime.GC()
	runtime.GC()
	var recs []runtime.MemProfileRecord
	for {
		k, ok := runtime.MemProfile(recs, false)
		if ok {
			recs = recs[:k]
			break
		}
		recs = make([]runtime.MemProfileRecord, k+100)
	}
	by := map[string]int64{}
	var total int64
	for _, r := range recs {
		if r.InUseBytes() == 0 {
			continue
		}
		frames := runtime.CallersFrames(r.Stack())
		var names []string
		for {
			f, more := frames.Next()
			names = append(names, f.Function)
			if !more {
				break
			}
		}
		stack := strings.Join(names, "\n")
		if !strings.Contains(stack, "p2psip/superpeer/") || strings.Contains(stack, "e2e/bench/attachload") {
			continue // not the super peer's, or the load generator's side
		}
		cat := "other"
		for _, c := range categories {
			if strings.Contains(stack, c.frame) {
				cat = c.name
				break
			}
		}
		by[cat] += r.InUseBytes()
		total += r.InUseBytes()
	}
	var rows []row
	for k, v := range by {
		rows = append(rows, row{k, v})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].bytes > rows[j].bytes })
	return total, rows
}

// parkedReaders counts the link reader goroutines still running (not
// parked) in this process, the generator's included.
func parkedReaders() int {
	buf := make([]byte, 8<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "link.(*Conn).readLoop(")
}
