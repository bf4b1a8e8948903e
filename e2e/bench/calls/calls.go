// Package calls measures SIP calls (INVITE, 180, 200, ACK, BYE, 200) from a
// SIPp UAC to a SIPp UAS on loopback through one of three paths (a Rig):
// the overlay (UAC → agent → super peer → super peer → agent → UAS, all of
// it in this process), a single Kamailio stateful proxy, or directly (the
// ceiling of SIPp on this machine). A Step is one SIPp run at a fixed
// offered rate; MaxRate ramps the rate up to the highest with no failed
// call and then holds it (30 s in the full benchmark) to confirm it.
package calls

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/gctune"
	"github.com/p2psip/p2psip/common/siproute"
	"github.com/p2psip/p2psip/e2e/bench/kamailio"
	"github.com/p2psip/p2psip/e2e/bench/ramp"
	"github.com/p2psip/p2psip/e2e/bench/spproc"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/e2e/harness/sipp"
	"github.com/p2psip/p2psip/ordinarypeer/agent"
)

// Rig is a SIPp UAS registered as bob and a path for a SIPp UAC calling
// bob as alice.
type Rig struct {
	Name    string
	target  string // where the UAC sends its INVITEs
	domain  string
	uasPort int
	agents  []*agent.Agent   // overlay only
	spPIDs  []int            // super peers run as processes (NewOverlayProcesses)
	kam     *kamailio.Server // Kamailio only
}

// NewOverlay starts two super peers, agents for alice and bob on different
// ones, and registers bob's UAS contact at bob's agent. Logs are at warn:
// logging is not what we measure.
func NewOverlay(tb testing.TB) *Rig {
	tb.Helper()
	sipp.Bin(tb)
	gctune.Tune(gctune.ServerHeap) // the overlay in this process collects as a super peer does
	o := harness.New(tb)
	o.Log = o.Log.Level(zerolog.WarnLevel)
	sp1, sp2 := o.Start(), o.Start()
	o.WaitConverged(15 * time.Second)
	a, b := o.StartAgent("alice", sp1), o.StartAgent("bob", sp2)
	r := &Rig{Name: "overlay", target: a.SIPAddr(), domain: o.Name, uasPort: sipp.FreeUDPPort(tb),
		agents: []*agent.Agent{a.Agent, b.Agent}}
	r.register(tb, b.SIPAddr())
	return r
}

// NewOverlayProcesses is the overlay laid out as deployed: the two super
// peers are `p2psip superpeer` processes of their own (spproc), the agents
// of alice and bob run in this process, one attached to each. Its steps
// count the super peers' CPU apart (Step.SPCPU): what the operator's
// servers spend per call, the agents' part running on the endpoints. The
// test binary's TestMain calls spproc.Cleanup.
func NewOverlayProcesses(tb testing.TB) *Rig {
	tb.Helper()
	sipp.Bin(tb)
	gctune.Tune(gctune.ServerHeap)
	const domain = "bench.test"
	dir := tb.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	mesh, err := spproc.StartMesh(ctx, dir, domain, 2)
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	sps, secret, ca := mesh.Procs, mesh.Secret, mesh.CA
	for _, p := range sps {
		tb.Cleanup(func() { p.Stop(5 * time.Second) })
	}
	// Registered after the super peers' Stop, so it runs first: the agents
	// end before their super peers do.
	var runs sync.WaitGroup
	tb.Cleanup(func() { cancel(); runs.Wait() })
	r := &Rig{Name: "overlay (super peers as processes)", domain: domain, uasPort: sipp.FreeUDPPort(tb),
		spPIDs: []int{sps[0].PID(), sps[1].PID()}}
	for i, user := range []string{"alice", "bob"} {
		creds, err := auth.Issue(secret, user, 24*time.Hour, time.Now())
		if err != nil {
			tb.Fatal(err)
		}
		a, err := agent.New(agent.Config{Overlay: domain, Bootstrap: []string{sps[i].PeerAddr}, Credentials: creds,
			DataDir: filepath.Join(dir, user), SIPListen: "127.0.0.1:0", Roots: ca.Pool()},
			zerolog.Nop())
		if err != nil {
			tb.Fatal(err)
		}
		runs.Add(1)
		go func() { defer runs.Done(); a.Run(ctx) }() //nolint:errcheck // ends with ctx
		select {
		case <-a.Uplink().Ready():
		case <-time.After(15 * time.Second):
			tb.Fatalf("agent %s not attached after 15s", user)
		}
		r.agents = append(r.agents, a)
	}
	r.target = r.agents[0].SIPAddr()
	r.register(tb, r.agents[1].SIPAddr())
	return r
}

// NewKamailio starts Kamailio as a stateful proxy (e2e/bench/kamailio/
// proxy.cfg) and registers bob's UAS contact there. It skips tb when
// Kamailio is not installed.
func NewKamailio(tb testing.TB) *Rig {
	tb.Helper()
	sipp.Bin(tb)
	const domain = "example.net"
	k := kamailio.Start(tb, kamailio.Config{Role: kamailio.Proxy, Domain: domain})
	r := &Rig{Name: "kamailio", target: k.Addr, domain: domain, uasPort: sipp.FreeUDPPort(tb), kam: k}
	r.register(tb, k.Addr)
	return r
}

// NewDirect is the UAC calling the UAS with nothing between them.
func NewDirect(tb testing.TB) *Rig {
	tb.Helper()
	sipp.Bin(tb)
	port := sipp.FreeUDPPort(tb)
	return &Rig{Name: "direct", target: "127.0.0.1:" + strconv.Itoa(port), domain: "example.net", uasPort: port}
}

func (r *Rig) register(tb testing.TB, registrar string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := sipp.Register(ctx, tb, registrar, "bob", r.domain, r.uasPort); err != nil {
		tb.Fatalf("%s: register the UAS: %v", r.Name, err)
	}
}

// Step is one SIPp run at a fixed offered rate.
type Step struct {
	Rate, Calls int
	Duration    time.Duration
	Stats       sipp.Stats
	Err         error   // the UAC's exit error, or a parse error
	Achieved    float64 // calls per second answered (200 arrivals, first to last)
	// P50, P99 and Mean are INVITE→200 times: from SIPp's response-time
	// trace (a coarse clock: 4 ms steps here, so sub-step times read 0;
	// the mean of many is still good as the errors average out), or, for
	// a traced run (RunTraced), from the microsecond timestamps of SIPp's
	// message trace.
	P50, P99, Mean time.Duration
	// Traced says P50, P99 and Mean come from the message trace.
	Traced bool
	// Latencies are the traced INVITE→200 times, sorted (traced runs).
	Latencies []time.Duration
	// CPU is the system under test's CPU time per call: this process's
	// (both agents and both super peers) for the overlay, Kamailio's
	// processes' for Kamailio, none for direct. With the super peers as
	// processes it is the agents' alone, and SPCPU the super peers'.
	CPU, SPCPU time.Duration
	// Losses sums the agents' counters of payloads dropped, requests
	// refused for overload and tunnel send errors during the run.
	Losses string
	// RSSKiB is this process's resident set after the run (overlay only).
	RSSKiB int
}

// OK says every call succeeded and the answers kept up with the offered
// rate.
func (s Step) OK() bool {
	return s.AllAnswered() && s.Achieved >= 0.9*float64(s.Rate)
}

// AllAnswered says every call succeeded, however late.
func (s Step) AllAnswered() bool {
	return s.Err == nil && s.Stats.Failed == 0 && s.Stats.Successful == s.Calls
}

func (s Step) String() string {
	status := "ok"
	if !s.OK() {
		status = "FAILED"
		if s.Err != nil {
			status += " (" + firstLine(s.Err.Error()) + ")"
		}
	}
	cpu := ""
	if s.CPU > 0 {
		cpu = fmt.Sprintf("; %v CPU/call", s.CPU.Round(time.Microsecond))
	}
	if s.SPCPU > 0 {
		cpu = fmt.Sprintf("; agents %v, super peers %v CPU/call", s.CPU.Round(time.Microsecond), s.SPCPU.Round(time.Microsecond))
	}
	src := "SIPp rtd"
	if s.Traced {
		src = "message trace"
	}
	return fmt.Sprintf("%6d calls/s offered for %v: %7.0f answered/s, %s; INVITE→200 (%s) mean %v p50 %v p99 %v%s%s: %s",
		s.Rate, s.Duration, s.Achieved, s.Stats, src, s.Mean.Round(10*time.Microsecond), s.P50.Round(10*time.Microsecond), s.P99.Round(10*time.Microsecond), cpu, s.Losses, status)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// Run places rate×d calls at rate calls/s with a fresh UAS (a reused one
// would keep retransmitting from an overloaded run into the next).
func (r *Rig) Run(tb testing.TB, rate int, d time.Duration) Step {
	tb.Helper()
	return r.run(tb, rate, d, false)
}

// RunTraced is Run with SIPp's message trace on, which gives INVITE→200
// to the microsecond (and costs SIPp CPU: use it at moderate rates).
func (r *Rig) RunTraced(tb testing.TB, rate int, d time.Duration) Step {
	tb.Helper()
	return r.run(tb, rate, d, true)
}

func (r *Rig) run(tb testing.TB, rate int, d time.Duration, trace bool) Step {
	tb.Helper()
	r.quiesce()
	n := max(int(float64(rate)*d.Seconds()), 1)
	res := Step{Rate: rate, Calls: n, Duration: d}
	ctx, cancel := context.WithTimeout(context.Background(), d+2*time.Minute)
	defer cancel()
	uas := sipp.UAS(ctx, tb, r.uasPort, 0)
	defer uas.Kill()
	cpu0, spCPU0, before := r.cpu(), r.spCPU(), r.counters()
	// sipp.UAC's arguments, plus the message trace when asked for.
	args := []string{r.target, "-s", "bob", "-set", "user", "alice", "-set", "domain", r.domain,
		"-m", strconv.Itoa(n), "-r", strconv.Itoa(rate), "-l", strconv.Itoa(4 * rate),
		"-default_behaviors", "all,-abortunexp", "-recv_timeout", "5000", "-buff_size", "4194304"}
	msgs := filepath.Join(tb.TempDir(), "messages.log")
	if trace {
		args = append(args, "-trace_msg", "-message_file", msgs)
	}
	uac := sipp.Start(ctx, tb, "uac", "uac.xml", args...)
	res.Err = uac.Wait(d + 90*time.Second)
	uac.Kill()
	if c := r.cpu() - cpu0; c > 0 {
		res.CPU = c / time.Duration(n)
	}
	if c := r.spCPU() - spCPU0; c > 0 {
		res.SPCPU = c / time.Duration(n)
	}
	if r.agents != nil {
		after := r.counters()
		res.RSSKiB = rssKiB()
		res.Losses = fmt.Sprintf("; agents dropped %d, refused %d, tunnel errors %d; process RSS %d MiB",
			after.Dropped-before.Dropped, after.Overload-before.Overload, after.TunnelErrors-before.TunnelErrors, res.RSSKiB/1024)
	}
	var err error
	if res.Stats, err = uac.Stats(); err != nil && res.Err == nil {
		res.Err = err
	}
	rtts, err := uac.ResponseTimes()
	if err != nil && res.Err == nil {
		res.Err = err
	}
	if len(rtts) > 1 {
		if span := rtts[len(rtts)-1].At - rtts[0].At; span > 0 {
			res.Achieved = float64(len(rtts)-1) / span.Seconds()
		}
	} else if len(rtts) == 1 && n == 1 {
		res.Achieved = float64(rate)
	}
	res.P50, res.P99 = sipp.Percentile(rtts, 50), sipp.Percentile(rtts, 99)
	if len(rtts) > 0 {
		var sum time.Duration
		for _, x := range rtts {
			sum += x.Time
		}
		res.Mean = sum / time.Duration(len(rtts))
	}
	if trace {
		lat, err := traceLatencies(msgs)
		if err == nil && len(lat) == 0 {
			err = fmt.Errorf("sipp message trace: no INVITE answered")
		}
		if err != nil {
			if res.Err == nil {
				res.Err = err
			}
			return res
		}
		res.Traced = true
		slices.Sort(lat)
		res.Latencies = lat
		res.Mean, res.P50, res.P99 = summarize(lat)
	}
	return res
}

// summarize is the mean, p50 and p99 of sorted durations.
func summarize(sorted []time.Duration) (mean, p50, p99 time.Duration) {
	if len(sorted) == 0 {
		return 0, 0, 0
	}
	var sum time.Duration
	for _, x := range sorted {
		sum += x
	}
	return sum / time.Duration(len(sorted)), Percentile(sorted, 50), Percentile(sorted, 99)
}

// Pool merges traced runs of one rig at one rate into one Step: calls and
// counters summed, CPU per call weighted by calls, the answered rate
// averaged, and the percentiles taken over every run's INVITE→200 times
// together. Runs interleaved with another rig's (overlay, Kamailio,
// overlay, ...) and pooled give a ratio that a burst of other work on the
// host, or a drift over the minutes of a run, moves far less than it
// moves one run of each.
func Pool(steps ...Step) Step {
	if len(steps) == 0 {
		return Step{}
	}
	out := Step{Rate: steps[0].Rate, Traced: true, Stats: sipp.Stats{Reasons: map[string]int{}}}
	var cpu, spCPU time.Duration
	for _, s := range steps {
		out.Calls += s.Calls
		out.Duration += s.Duration
		out.Stats.Created += s.Stats.Created
		out.Stats.Successful += s.Stats.Successful
		out.Stats.Failed += s.Stats.Failed
		out.Stats.Retransmissions += s.Stats.Retransmissions
		for k, v := range s.Stats.Reasons {
			out.Stats.Reasons[k] += v
		}
		if out.Err == nil {
			out.Err = s.Err
		}
		out.Achieved += s.Achieved / float64(len(steps))
		cpu += s.CPU * time.Duration(s.Calls)
		spCPU += s.SPCPU * time.Duration(s.Calls)
		out.Traced = out.Traced && s.Traced
		out.Latencies = append(out.Latencies, s.Latencies...)
		out.RSSKiB = s.RSSKiB // after the last run
	}
	if len(steps) == 1 {
		out.Losses = steps[0].Losses // the runs' own lines carry theirs
	}
	if out.Calls > 0 {
		out.CPU, out.SPCPU = cpu/time.Duration(out.Calls), spCPU/time.Duration(out.Calls)
	}
	slices.Sort(out.Latencies)
	out.Mean, out.P50, out.P99 = summarize(out.Latencies)
	return out
}

// Percentile is the p-th percentile (nearest rank) of sorted durations.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// cpu is the CPU time the system under test has used so far.
func (r *Rig) cpu() time.Duration {
	switch {
	case r.agents != nil:
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 0
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	case r.kam != nil:
		return r.kam.CPU()
	}
	return 0
}

// spCPU is the CPU time the super peer processes have used so far.
func (r *Rig) spCPU() time.Duration {
	var sum time.Duration
	for _, pid := range r.spPIDs {
		if c, err := spproc.CPU(pid); err == nil {
			sum += c
		}
	}
	return sum
}

// counters sums the agents' loss counters.
func (r *Rig) counters() siproute.Stats {
	var sum siproute.Stats
	for _, a := range r.agents {
		s := a.Router().Stats()
		sum.Dropped += s.Dropped
		sum.Overload += s.Overload
		sum.TunnelErrors += s.TunnelErrors
	}
	return sum
}

// quiesce waits until the agents have passed no tunnel traffic for half a
// second (an overloaded step leaves retransmissions and timers behind); for
// the other rigs it gives the retransmission timers of a previous step a
// moment to end.
func (r *Rig) quiesce() {
	if r.agents == nil {
		time.Sleep(300 * time.Millisecond)
		return
	}
	count := func() uint64 {
		var n uint64
		for _, a := range r.agents {
			s := a.Router().Stats()
			n += s.TunnelIn + s.TunnelOut
		}
		return n
	}
	last, since := count(), time.Now()
	deadline := time.Now().Add(30 * time.Second)
	for time.Since(since) < 500*time.Millisecond && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		if n := count(); n != last {
			last, since = n, time.Now()
		}
	}
}

// Ramp configures MaxRate.
type Ramp struct {
	// Start is the first offered rate; it doubles while steps pass, up to
	// Limit.
	Start, Limit int
	// Step is the duration of a ramp step.
	Step time.Duration
	// Bisect is how many steps to try between the last pass and the
	// first failure.
	Bisect int
	// Hold is the duration of the confirming run at the rate found; when
	// it fails the rate is lowered by HoldCut per cent (0: 20) and held
	// again, at most HoldTries times in all.
	Hold               time.Duration
	HoldTries, HoldCut int
	// Log receives each step as it ends.
	Log func(format string, args ...any)
}

// MaxRate finds the highest offered rate with no failed call: a ramp of
// short steps, then a Hold at the rate found. It returns the passing hold
// (Rate 0 when none passed), the best rate of the ramp's short steps and
// every step run, holds included.
func (r *Rig) MaxRate(tb testing.TB, c Ramp) (best Step, ramped int, steps []Step) {
	tb.Helper()
	var last Step
	held, ramped := ramp.Search(ramp.Config{Start: c.Start, Limit: c.Limit, Bisect: c.Bisect, Step: c.Step, Hold: c.Hold, HoldTries: c.HoldTries, HoldCut: c.HoldCut},
		func(rate int, d time.Duration) bool {
			last = r.Run(tb, rate, d)
			steps = append(steps, last)
			if c.Log != nil {
				c.Log("%s: %v", r.Name, last)
			}
			if !last.OK() {
				settle()
			}
			return last.OK()
		})
	if held == 0 {
		return Step{}, ramped, steps
	}
	return last, ramped, steps
}

// afterOverload is how long the state an overloaded step leaves behind
// lives: completed transactions linger (siproute.Linger, Kamailio's
// wait_timer is as long) and a callee's agent remembers requests for its
// duplicate check for 10 s. Every step is to start from a quiet system.
const afterOverload = 11 * time.Second

// settle lets what an overloaded step left expire and collects it, so the
// next step does not pay for the last one's backlog. All rigs wait alike.
func settle() {
	time.Sleep(afterOverload)
	runtime.GC()
}

// traceLatencies reads a SIPp -trace_msg file and returns, per call, the
// time from the first sending of its INVITE to the first 200 for it, from
// the file's microsecond timestamps (SIPp's own response times use a
// coarse clock: 4 ms steps on this kernel).
func traceLatencies(path string) ([]time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sent := map[string]time.Time{}
	done := map[string]bool{}
	var out []time.Duration
	var at time.Time
	var dir, first, callID, cseq string
	flush := func() {
		if callID == "" {
			return
		}
		switch {
		case dir == "sent" && strings.HasPrefix(first, "INVITE "):
			if _, ok := sent[callID]; !ok {
				sent[callID] = at
			}
		case dir == "received" && strings.HasPrefix(first, "SIP/2.0 200") && strings.HasSuffix(cseq, "INVITE"):
			if t0, ok := sent[callID]; ok && !done[callID] {
				done[callID] = true
				out = append(out, at.Sub(t0))
			}
		}
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	const sep = "----------------------------------------------- "
	for sc.Scan() {
		l := sc.Text()
		if ts, ok := strings.CutPrefix(l, sep); ok {
			flush()
			dir, first, callID, cseq = "", "", "", ""
			if at, err = time.Parse("2006-01-02 15:04:05.000000", strings.TrimSpace(ts)); err != nil {
				return nil, fmt.Errorf("sipp message trace: %w", err)
			}
			continue
		}
		switch {
		case dir == "" && strings.Contains(l, "message sent"):
			dir = "sent"
		case dir == "" && strings.Contains(l, "message received"):
			dir = "received"
		case first == "" && dir != "" && strings.TrimSpace(l) != "":
			first = strings.TrimSpace(l)
		case callID == "" && (strings.HasPrefix(l, "Call-ID:") || strings.HasPrefix(l, "i:")):
			_, v, _ := strings.Cut(l, ":")
			callID = strings.TrimSpace(v)
		case cseq == "" && strings.HasPrefix(l, "CSeq:"):
			cseq = strings.TrimSpace(strings.TrimPrefix(l, "CSeq:"))
		}
	}
	flush()
	return out, sc.Err()
}

// rssKiB is this process's resident set size (/proc/self/status VmRSS,
// 0 if unknown): an overloaded overlay that queues without bound shows
// here.
func rssKiB() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}
