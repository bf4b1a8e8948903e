// Package sipp runs SIPp (Debian package sip-tester) from Go tests and
// benchmarks on loopback: the scenario files for calls through Record-
// Routing proxies (scenarios/, see shared/notes/TESTING.md), one process
// per role under a context, and the parsing of what SIPp reports: its
// statistics file (successful and failed calls) and its response-time
// trace (INVITE to 200, 1 ms resolution).
package sipp

import (
	"bufio"
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

//go:embed scenarios/*.xml
var scenarios embed.FS

// Bin is the path of sipp; it skips t when SIPp is not installed.
func Bin(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("sipp")
	if err != nil {
		t.Skip("sipp not installed (Debian package sip-tester; make deps installs it)")
	}
	return bin
}

// Scenario writes the embedded scenario name (register.xml, uac.xml,
// uas.xml) into dir and returns its path.
func Scenario(dir, name string) (string, error) {
	b, err := scenarios.ReadFile("scenarios/" + name)
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	return p, os.WriteFile(p, b, 0o644)
}

// Proc is one SIPp process. It is killed at test cleanup if still running.
type Proc struct {
	Name string
	// Dir is the process's working directory: its statistics, error and
	// response-time files are there.
	Dir  string
	cmd  *exec.Cmd
	out  *OutputBuffer
	done chan struct{}
	err  error
	// Started is when the process was started.
	Started time.Time
	// Ended is set when it exits.
	Ended time.Time
}

// Start runs SIPp with args plus the options every run gets: bound to
// 127.0.0.1, no keyboard, errors to a file, a statistics file (-stf) and,
// for a scenario with rtd="true", every response time (-trace_rtt).
// scenario is an embedded scenario name (uac.xml, ...), "" when args
// choose one. ctx ending kills the process.
func Start(ctx context.Context, t testing.TB, name, scenario string, args ...string) *Proc {
	t.Helper()
	bin := Bin(t)
	p := &Proc{Name: name, Dir: t.TempDir(), out: &OutputBuffer{}, done: make(chan struct{})}
	if scenario != "" {
		sf, err := Scenario(p.Dir, scenario)
		if err != nil {
			t.Fatalf("sipp %s: %v", name, err)
		}
		args = append([]string{"-sf", sf}, args...)
	}
	args = append(args, "-i", "127.0.0.1", "-nostdin",
		"-trace_err", "-error_file", filepath.Join(p.Dir, "errors.log"),
		"-trace_stat", "-stf", filepath.Join(p.Dir, "stat.csv"),
		"-trace_rtt", "-rtt_freq", "1")
	p.cmd = exec.CommandContext(ctx, bin, args...)
	p.cmd.Dir = p.Dir
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start sipp %s: %v", name, err)
	}
	p.Started = time.Now()
	go func() {
		p.err = p.cmd.Wait()
		p.Ended = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(p.Dir, "errors.log")); err == nil && len(b) > 0 {
				t.Logf("sipp %s errors:\n%s", name, tail(string(b), 4000))
			}
		}
	})
	return p
}

// Wait waits up to d for the process to exit and returns its exit error
// (SIPp exits 1 when some call failed).
func (p *Proc) Wait(d time.Duration) error {
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("sipp %s: %w", p.Name, p.err)
		}
		return nil
	case <-time.After(d):
		return fmt.Errorf("sipp %s still running after %v", p.Name, d)
	}
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Kill ends the process if it is still running and waits for it.
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Kill() //nolint:errcheck // it may have just exited
	<-p.done
}

// Output is the tail of what the process printed.
func (p *Proc) Output() string { return tail(p.out.String(), 6000) }

// Stats reads the last row of the process's statistics file; SIPp writes
// one when it exits.
func (p *Proc) Stats() (Stats, error) {
	f, err := os.Open(filepath.Join(p.Dir, "stat.csv"))
	if err != nil {
		return Stats{}, err
	}
	defer f.Close()
	return ParseStats(f)
}

// ResponseTimes reads every response time the process traced (one per
// call for a scenario with one rtd), in the order measured.
func (p *Proc) ResponseTimes() ([]RTT, error) {
	files, _ := filepath.Glob(filepath.Join(p.Dir, "*_rtt.csv"))
	if len(files) == 0 {
		return nil, fmt.Errorf("sipp %s: no response-time file", p.Name)
	}
	f, err := os.Open(files[0])
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseRTT(f)
}

// Stats are the cumulative counters of a run.
type Stats struct {
	Created, Successful, Failed int
	Retransmissions             int
	// Reasons counts failed calls by SIPp's failure counter
	// ("MaxUDPRetrans", "TimeoutOnRecv", ...), non-zero ones only.
	Reasons map[string]int
}

func (s Stats) String() string {
	return fmt.Sprintf("created %d, successful %d, failed %d %v, retransmissions %d",
		s.Created, s.Successful, s.Failed, s.Reasons, s.Retransmissions)
}

// ParseStats reads a SIPp -stf file (a header row, then one row per dump,
// fields separated by ';') and returns the cumulative counters of its last
// row.
func ParseStats(r io.Reader) (Stats, error) {
	var header, last []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if fields := strings.Split(line, ";"); header == nil {
			header = fields
		} else {
			last = fields
		}
	}
	if err := sc.Err(); err != nil {
		return Stats{}, err
	}
	if last == nil {
		return Stats{}, errors.New("sipp stats: no data row")
	}
	var st Stats
	var errs []error
	for i, name := range header {
		if i >= len(last) || !strings.HasSuffix(name, "(C)") {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(last[i]))
		if err != nil {
			continue // times and rates
		}
		switch name = strings.TrimSuffix(name, "(C)"); {
		case name == "SuccessfulCall":
			st.Successful = n
		case name == "FailedCall":
			st.Failed = n
		case name == "Retransmissions":
			st.Retransmissions = n
		case strings.HasPrefix(name, "Failed") && n > 0:
			if st.Reasons == nil {
				st.Reasons = map[string]int{}
			}
			st.Reasons[strings.TrimPrefix(name, "Failed")] = n
		}
	}
	if i := slices.Index(header, "TotalCallCreated"); i >= 0 && i < len(last) {
		n, err := strconv.Atoi(last[i])
		errs = append(errs, err)
		st.Created = n
	} else {
		errs = append(errs, errors.New("sipp stats: no TotalCallCreated"))
	}
	if !slices.Contains(header, "SuccessfulCall(C)") || !slices.Contains(header, "FailedCall(C)") {
		errs = append(errs, errors.New("sipp stats: no SuccessfulCall(C) or FailedCall(C)"))
	}
	return st, errors.Join(errs...)
}

// RTT is one response time SIPp traced.
type RTT struct {
	// At is when it was measured, from the start of the run.
	At time.Duration
	// Time is the response time (1 ms resolution).
	Time time.Duration
}

// ParseRTT reads a SIPp -trace_rtt file: "Date_ms;response_time_ms;rtd_no"
// rows after a header.
func ParseRTT(r io.Reader) ([]RTT, error) {
	var out []RTT
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Split(strings.TrimSpace(sc.Text()), ";")
		if len(f) < 2 {
			continue
		}
		at, err1 := strconv.ParseFloat(f[0], 64)
		rt, err2 := strconv.ParseFloat(f[1], 64)
		if err1 != nil || err2 != nil {
			continue // the header
		}
		out = append(out, RTT{At: time.Duration(at * float64(time.Millisecond)), Time: time.Duration(rt * float64(time.Millisecond))})
	}
	return out, sc.Err()
}

// Percentile is the p-th percentile (0 < p ≤ 100) of the response times,
// nearest rank.
func Percentile(rtts []RTT, p float64) time.Duration {
	if len(rtts) == 0 {
		return 0
	}
	ts := make([]time.Duration, len(rtts))
	for i, r := range rtts {
		ts[i] = r.Time
	}
	slices.Sort(ts)
	i := int(float64(len(ts))*p/100+0.999999) - 1
	return ts[min(max(i, 0), len(ts)-1)]
}

// FreeUDPPort finds a loopback port free for both UDP and TCP right now.
func FreeUDPPort(t testing.TB) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", l.Addr().String())
		l.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no free UDP+TCP port")
	return 0
}

// Bound reports whether some socket is bound to the loopback UDP port
// (Linux /proc/net/udp), without touching the port.
func Bound(port int) bool {
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return false
	}
	want := fmt.Sprintf(":%04X", port)
	for line := range bytes.Lines(b) {
		fields := strings.Fields(string(line))
		if len(fields) > 1 && strings.HasSuffix(fields[1], want) {
			return true
		}
	}
	return false
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// OutputBuffer collects a child process's stdout and stderr; safe to
// read while the process writes (SIPp here, Kamailio and coturn in the
// benchmarks).
type OutputBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *OutputBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *OutputBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// StartServer runs cmd (a UDP server SIPp or a load client talks to:
// Kamailio, coturn) in a process group of its own until the test ends,
// and waits until it has bound port on loopback. Its output goes to the
// returned buffer; it is shown when the server exits early or does not
// bind within 10 s. At cleanup the group gets SIGTERM, SIGKILL 5 s later,
// and SIGKILL again for workers that outlived the main process.
func StartServer(tb testing.TB, name string, cmd *exec.Cmd, port int) *OutputBuffer {
	tb.Helper()
	out := &OutputBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	var werr error
	go func() {
		werr = cmd.Wait()
		close(done)
	}()
	tb.Cleanup(func() {
		pgid := cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGTERM) //nolint:errcheck // may have exited
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-pgid, syscall.SIGKILL) //nolint:errcheck
			<-done
		}
		syscall.Kill(-pgid, syscall.SIGKILL) //nolint:errcheck // leftover workers, usually none
	})
	deadline := time.Now().Add(10 * time.Second)
	for !Bound(port) {
		select {
		case <-done:
			tb.Fatalf("%s exited: %v\n%s", name, werr, tail(out.String(), 4000))
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s not listening after 10s\n%s", name, tail(out.String(), 4000))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return out
}
