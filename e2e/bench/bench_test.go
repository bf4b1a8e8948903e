package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/gctune"
	"github.com/p2psip/p2psip/e2e/bench/report"
	"github.com/p2psip/p2psip/e2e/bench/spproc"
)

func TestMain(m *testing.M) {
	code := m.Run()
	spproc.Cleanup() // the p2psip binary the calls part built
	os.Exit(code)
}

// TestBench is issue 7's benchmark harness for the call rate, the
// registrations, the lookup and the TURN relay, each beside its reference
// in the same run (see package report for how results are gathered).
// Under plain `go test` it is a smoke run of a few seconds per part that
// checks the machinery and that the report gets written and parses; with
// P2PSIP_BENCH=full (make bench) it measures: about 10 minutes on 2
// cores. Parts skip when SIPp, Kamailio or coturn is missing (make deps
// installs them). Run one part with -run TestBench/calls.
//
// P2PSIP_BENCH_HOLD overrides the confirming hold of a rate (full: 30 s
// for calls), P2PSIP_BENCH_STEP the ramp steps, and
// P2PSIP_BENCH_CPUPROFILE=DIR keeps the CPU profiles taken while our side
// runs at its limit (otherwise they go to a temporary directory and only
// their summary reaches the report).
func TestBench(t *testing.T) {
	out := os.Getenv(report.EnvOut)
	selfAssemble := out == ""
	if selfAssemble {
		out = t.TempDir()
	}
	sink := &fragments{dir: out}
	p := params()
	// The super peers this process runs collect as the binary's do.
	gctune.Tune(gctune.ServerHeap)
	t.Logf("bench mode %s: fragments to %s", p.mode, out)
	t.Run("calls", func(t *testing.T) { benchCalls(t, p, sink) })
	t.Run("register", func(t *testing.T) { benchRegister(t, p, sink) })
	t.Run("lookup", func(t *testing.T) { benchLookup(t, p, sink) })
	t.Run("turn", func(t *testing.T) { benchTURN(t, p, sink) })
	if !selfAssemble || t.Failed() || sink.count() == 0 {
		return
	}
	// The smoke run checks the last step of make bench too: the report is
	// written and reads back with every result emitted.
	results := t.TempDir()
	dir, err := report.Assemble(report.Options{In: out, Out: results})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := report.Load(filepath.Join(results, "latest", "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(rep.Results()), sink.results(); got != want {
		t.Errorf("report has %d results, want %d", got, want)
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "| section | figure |") {
		t.Errorf("report.md has no table:\n%s", md)
	}
	for _, p := range rep.Plots {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Error(err)
		}
	}
	t.Logf("smoke report: %s (%d results, plots %v)", dir, len(rep.Results()), rep.Plots)
}

// fragments writes the parts' fragments and counts them.
type fragments struct {
	dir string
	mu  sync.Mutex
	n   int
	res int
}

func (f *fragments) emit(t *testing.T, fr report.Fragment) {
	t.Helper()
	if err := report.WriteFragment(f.dir, fr); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	f.res += len(fr.Results)
}

func (f *fragments) count() int   { f.mu.Lock(); defer f.mu.Unlock(); return f.n }
func (f *fragments) results() int { f.mu.Lock(); defer f.mu.Unlock(); return f.res }

// lines collects the progress of a part: logged as it happens and kept for
// the report's details.
type lines struct {
	t  *testing.T
	mu sync.Mutex
	l  []string
}

func (l *lines) logf(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	l.t.Log(s)
	// On stdout too, so that a long full run shows progress.
	if report.Full() && !testing.Verbose() {
		fmt.Println("    " + s)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.l = append(l.l, s)
}

func (l *lines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.l...)
}

// benchParams are the sizes of a run.
type benchParams struct {
	mode string
	full bool

	callStep, callHold, callLatency time.Duration
	callSweep, callDirectHold       time.Duration
	callStart, callLimit            int
	callBisect, callHoldTries       int
	callHoldCut                     int
	latencyRate, latencyRounds      int
	latencyWarmup                   time.Duration

	regStep, regHold time.Duration
	regRates         []int

	lookupRecords   int
	lookupDuration  time.Duration
	lookupLoadRate  int
	lookupLoaders   int
	lookupMeasurers int

	turnAllocs, turnThrough int
	turnStart, turnLimit    int
	turnBisect, turnTries   int
	turnStep, turnHold      time.Duration

	profileDir string
}

func params() benchParams {
	p := benchParams{
		mode: "smoke",
		// Smoke: seconds in all, rates any loaded CI machine sustains.
		callStep: 500 * time.Millisecond, callHold: 500 * time.Millisecond, callLatency: time.Second, callDirectHold: 500 * time.Millisecond,
		callStart: 50, callLimit: 50, callBisect: 0, callHoldTries: 0, latencyRate: 50, latencyRounds: 1,
		regStep: time.Second, regHold: time.Second, regRates: []int{40},
		lookupRecords: 16, lookupDuration: time.Second, lookupLoadRate: 100, lookupLoaders: 2, lookupMeasurers: 1,
		turnAllocs: 8, turnThrough: 4, turnStart: 500, turnLimit: 1000, turnBisect: 0, turnTries: 1,
		turnStep: 500 * time.Millisecond, turnHold: 500 * time.Millisecond,
	}
	if report.Full() {
		p = benchParams{
			mode: "full", full: true,
			// Issue 7: the highest rate with 0 failed calls over 30 s.
			callStep: 3 * time.Second, callHold: 30 * time.Second, callLatency: 10 * time.Second, callSweep: 2 * time.Second,
			callDirectHold: 10 * time.Second,
			// The short steps do not reach the steady state of lingering
			// transactions (5 s), so the hold that confirms a rate often
			// fails at the first: it is lowered by 10 % at a time.
			callStart: 200, callLimit: 51200, callBisect: 2, callHoldTries: 4, callHoldCut: 10,
			// The rate of the reference figures in shared/notes/TESTING.md.
			latencyRate: 500,
			// Three rounds of 10 s per rig, interleaved: one run of each
			// gave p99 ratios from 1.5 to 2.2 on one quiet host.
			latencyRounds: 3, latencyWarmup: 5 * time.Second,
			regStep: 3 * time.Second, regHold: 10 * time.Second,
			regRates:      []int{1000, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 24000, 32000},
			lookupRecords: 64, lookupDuration: 10 * time.Second, lookupLoadRate: 2000, lookupLoaders: 8, lookupMeasurers: 2,
			turnAllocs: 1000, turnThrough: 32, turnStart: 10000, turnLimit: 640000, turnBisect: 2, turnTries: 3,
			turnStep: 3 * time.Second, turnHold: 10 * time.Second,
		}
	}
	if d, err := time.ParseDuration(os.Getenv("P2PSIP_BENCH_HOLD")); err == nil && d > 0 {
		p.callHold, p.callDirectHold, p.regHold, p.turnHold = d, d, d, d
	}
	if d, err := time.ParseDuration(os.Getenv("P2PSIP_BENCH_STEP")); err == nil && d > 0 {
		p.callStep, p.regStep, p.turnStep = d, d, d
	}
	p.profileDir = os.Getenv("P2PSIP_BENCH_CPUPROFILE")
	return p
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func itoa(i int) string { return strconv.Itoa(i) }
