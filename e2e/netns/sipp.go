//go:build e2e

package netns

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// SIPp's exit statuses (sipp(1)).
const (
	sippAllOK       = 0  // every call succeeded
	sippSomeFailed  = 1  // at least one call failed
	sippInternalCmd = 97 // exit on an internal command
	sippNoCalls     = 99 // normal exit without calls processed
)

// sippExit explains a SIPp exit status.
func sippExit(code int) string {
	switch code {
	case sippAllOK:
		return "0: every call succeeded"
	case sippSomeFailed:
		return "1: some calls failed"
	case sippInternalCmd:
		return "97: exit on an internal command"
	case sippNoCalls:
		return "99: normal exit without calls processed"
	case 255:
		return "255: fatal error"
	case 254:
		return "254: fatal error binding a socket"
	}
	return strconv.Itoa(code)
}

// SIPpStats are the cumulative counters of a SIPp run, from the last row of
// its -stf statistics file (or, failing that, its -trace_screen dump).
type SIPpStats struct {
	Created    int // TotalCallCreated
	Successful int // SuccessfulCall(C)
	Failed     int // FailedCall(C)
	// Reasons counts the failed calls by SIPp's failure counters
	// ("MaxUDPRetrans", "UnexpectedMessage", ...), non-zero ones only.
	Reasons map[string]int
	// Retransmissions is SIPp's Retransmissions(C), when present.
	Retransmissions int
}

// ParseSIPpStats reads a SIPp -stf file: a header row, then one row per
// dump, fields separated by ';'. It returns the cumulative counters of the
// last row.
func ParseSIPpStats(r io.Reader) (SIPpStats, error) {
	var header, last []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		fields := strings.Split(line, ";")
		if header == nil {
			header = fields
			continue
		}
		last = fields
	}
	if err := sc.Err(); err != nil {
		return SIPpStats{}, err
	}
	if header == nil || last == nil {
		return SIPpStats{}, fmt.Errorf("sipp stats: no data row (header %t)", header != nil)
	}
	col := map[string]string{}
	for i, name := range header {
		if i < len(last) {
			col[strings.TrimSpace(name)] = strings.TrimSpace(last[i])
		}
	}
	num := func(name string) (int, error) {
		v, ok := col[name]
		if !ok {
			return 0, fmt.Errorf("sipp stats: no column %q", name)
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, fmt.Errorf("sipp stats: %s=%q: %w", name, v, err)
		}
		return n, nil
	}
	var st SIPpStats
	var err error
	if st.Created, err = num("TotalCallCreated"); err != nil {
		return st, err
	}
	if st.Successful, err = num("SuccessfulCall(C)"); err != nil {
		return st, err
	}
	if st.Failed, err = num("FailedCall(C)"); err != nil {
		return st, err
	}
	st.Retransmissions, _ = num("Retransmissions(C)")
	for name := range col {
		reason, ok := strings.CutSuffix(name, "(C)")
		if !ok || !strings.HasPrefix(reason, "Failed") || reason == "FailedCall" {
			continue
		}
		if n, err := num(name); err == nil && n > 0 {
			if st.Reasons == nil {
				st.Reasons = map[string]int{}
			}
			st.Reasons[strings.TrimPrefix(reason, "Failed")] = n
		}
	}
	return st, nil
}

// ParseSIPpScreen reads the counters from a SIPp -trace_screen dump (the
// statistics screen's "Successful call" and "Failed call" rows, cumulative
// column; the last occurrence wins).
func ParseSIPpScreen(r io.Reader) (SIPpStats, error) {
	var st SIPpStats
	found := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		cells := strings.Split(sc.Text(), "|")
		if len(cells) != 3 {
			continue
		}
		name := strings.TrimSpace(cells[0])
		n, err := strconv.Atoi(strings.TrimSpace(cells[2]))
		if err != nil {
			continue
		}
		switch name {
		case "Total Calls created":
			st.Created = n
		case "Successful call":
			st.Successful = n
		case "Failed call":
			st.Failed = n
		default:
			continue
		}
		found[name] = true
	}
	if err := sc.Err(); err != nil {
		return st, err
	}
	if !found["Successful call"] || !found["Failed call"] {
		return st, fmt.Errorf("sipp screen: no call counters")
	}
	return st, nil
}

// String is "N attempted, N succeeded, N failed (reasons)".
func (s SIPpStats) String() string {
	out := fmt.Sprintf("%d attempted, %d succeeded, %d failed", s.Created, s.Successful, s.Failed)
	if len(s.Reasons) > 0 {
		var rs []string
		for k, v := range s.Reasons {
			rs = append(rs, fmt.Sprintf("%s=%d", k, v))
		}
		sort.Strings(rs)
		out += " (" + strings.Join(rs, " ") + ")"
	}
	return out
}

// ---- running SIPp ----

var sippSeq atomic.Int64

// scenario returns the path of a copy of testdata/NAME in the test's
// scratch directory (SIPp writes its default trace files next to the
// scenario; the repository's copy must stay clean).
func (tp *Topology) scenario(name string) (string, error) {
	dst := filepath.Join(tp.Dir, "sipp", name)
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	return dst, os.WriteFile(dst, b, 0o644)
}

// sippArgs are the arguments common to every SIPp run: the scenario, the
// local address, UDP, no keyboard, errors traced to LogDir/NAME.err.
func (tp *Topology) sippArgs(scenario, name, ip string, port int) ([]string, error) {
	sf, err := tp.scenario(scenario)
	if err != nil {
		return nil, err
	}
	return []string{"sipp", "-sf", sf, "-i", ip, "-p", strconv.Itoa(port), "-t", "u1", "-nostdin",
		"-trace_err", "-error_file", filepath.Join(tp.LogDir, name+".err")}, nil
}

// StartUAS starts a fresh SIPp UAS (testdata/uas.xml) on ip:port in host's
// namespace and waits until its UDP socket is bound. It runs until killed
// (at cleanup at the latest).
func (tp *Topology) StartUAS(host, ip string, port int) *Proc {
	tp.t.Helper()
	name := fmt.Sprintf("sipp-uas-%s-%d", host, sippSeq.Add(1))
	args, err := tp.sippArgs("uas.xml", name, ip, port)
	if err != nil {
		tp.t.Fatal(err)
	}
	// The UAS is killed, never ends by itself: only the statistics dumped
	// every second (-fd 1) survive it, not a -trace_screen.
	args = append(args, "-trace_stat", "-stf", filepath.Join(tp.LogDir, name+".stat.csv"), "-fd", "1")
	p, err := tp.start(host, name, tp.LogDir, args...)
	if err != nil {
		tp.t.Fatalf("start %s: %v", name, err)
	}
	Eventually(tp.t, 10*time.Second, name+" listening", func() error {
		if p.Exited() {
			return fmt.Errorf("exited with status %d:\n%s", p.ExitCode(), tail(p.Log, 20))
		}
		return tp.udpBound(host, port)
	})
	return p
}

// udpBound reports whether a UDP socket is bound to port in host's
// namespace (from /proc/thread-self/net/udp, which shows the calling
// thread's namespace).
func (tp *Topology) udpBound(host string, port int) error {
	return InNamespace(tp.NS(host), func() error {
		b, err := os.ReadFile("/proc/thread-self/net/udp")
		if err != nil {
			return err
		}
		want := fmt.Sprintf(":%04X ", port)
		for _, l := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(l)
			if len(f) > 1 && strings.HasSuffix(f[1]+" ", want) {
				return nil
			}
		}
		return fmt.Errorf("no UDP socket on port %d", port)
	})
}

// Register makes SIPp send one REGISTER (testdata/register.xml) for
// sip:USER@DOMAIN to the registrar at registrar (an agent's --sip-listen)
// from ip:port with the contact ip:port, and waits for its 200. Start the
// phone's UAS on that port afterwards: the agent delivers calls to the
// flow a contact registered from (its source address), as well as to the
// contact.
func (tp *Topology) Register(ctx context.Context, host, ip string, port int, user, domain, registrar string) error {
	return tp.register(ctx, "register.xml", host, ip, port, user, domain, registrar)
}

// RegisterDigest is Register at a super peer's SIP edge (registrar, its
// --sip-port), over UDP with digest authentication
// (testdata/register_auth.xml): the edge answers the first REGISTER 401,
// SIPp answers the challenge with username (the credential's
// "EXPIRY:USER") and password (-au, -ap). The edge delivers calls to the
// flow the REGISTER came from: start the phone's UAS on port afterwards.
func (tp *Topology) RegisterDigest(ctx context.Context, host, ip string, port int, user, domain, registrar, username, password string) error {
	return tp.register(ctx, "register_auth.xml", host, ip, port, user, domain, registrar, "-au", username, "-ap", password)
}

func (tp *Topology) register(ctx context.Context, scenario, host, ip string, port int, user, domain, registrar string, extra ...string) error {
	name := fmt.Sprintf("sipp-register-%s-%s-%d", host, user, sippSeq.Add(1))
	args, err := tp.sippArgs(scenario, name, ip, port)
	if err != nil {
		return err
	}
	args = append(args, extra...)
	args = append(args, "-m", "1", "-recv_timeout", "5000", "-timeout", "20s",
		"-set", "user", user, "-set", "domain", domain,
		"-trace_screen", "-screen_file", filepath.Join(tp.LogDir, name+".screen"),
		registrar)
	p, err := tp.start(host, name, tp.LogDir, args...)
	if err != nil {
		return err
	}
	if err := p.Wait(ctx, 30*time.Second); err != nil {
		return err
	}
	if code := p.ExitCode(); code != sippAllOK {
		return fmt.Errorf("REGISTER sip:%s@%s at %s: sipp exit status %s:\n%s", user, domain, registrar, sippExit(code), tail(p.Log, 30))
	}
	return nil
}

// UAC describes one SIPp caller run (testdata/uac.xml).
type UAC struct {
	Host, IP string // where SIPp runs, and its address there
	Port     int    // its SIP port (default UACPort)
	Proxy    string // the agent's SIP address: every request goes there
	User     string // caller, sip:USER@DOMAIN
	Callee   string // sip:CALLEE@DOMAIN
	Domain   string
	Calls    int // -m
	Rate     int // calls per second (-r)
	// Limit caps simultaneous calls (-l). The default, 15×Rate, never
	// throttles the rate, even when every call waits out the 10 s receive
	// timeout.
	Limit int
	// Name names the run's files in LogDir (default: generated); Progress
	// reads its counters while it runs.
	Name string
}

// SIPpResult is what one SIPp run did.
type SIPpResult struct {
	Name     string
	ExitCode int
	SIPpStats
	Started  time.Time
	Duration time.Duration
}

// RunUAC runs the caller to completion: Calls calls at Rate per second,
// with the default behaviours minus abortunexp and a 10 s receive timeout
// (shared/notes/TESTING.md). The error is for a run that did not produce
// counters (SIPp could not start, bind or finish); failed calls are in the
// result.
func (tp *Topology) RunUAC(ctx context.Context, u UAC) (SIPpResult, error) {
	if u.Port == 0 {
		u.Port = UACPort
	}
	if u.Limit == 0 {
		u.Limit = max(15*u.Rate, 10)
	}
	name := u.Name
	if name == "" {
		name = fmt.Sprintf("sipp-uac-%s-%s-to-%s-%d", u.Host, u.User, u.Callee, sippSeq.Add(1))
	}
	res := SIPpResult{Name: name, ExitCode: -1}
	args, err := tp.sippArgs("uac.xml", name, u.IP, u.Port)
	if err != nil {
		return res, err
	}
	budget := time.Duration(u.Calls/max(u.Rate, 1))*time.Second + 45*time.Second
	statFile := filepath.Join(tp.LogDir, name+".stat.csv")
	screenFile := filepath.Join(tp.LogDir, name+".screen")
	args = append(args,
		"-s", u.Callee, "-set", "user", u.User, "-set", "domain", u.Domain,
		"-m", strconv.Itoa(u.Calls), "-r", strconv.Itoa(u.Rate), "-rp", "1000", "-l", strconv.Itoa(u.Limit),
		"-default_behaviors", "all,-abortunexp", "-recv_timeout", "10000",
		"-timeout", fmt.Sprintf("%ds", int(budget.Seconds())),
		"-trace_stat", "-stf", statFile, "-fd", "1",
		"-trace_screen", "-screen_file", screenFile,
		u.Proxy)
	p, err := tp.start(u.Host, name, tp.LogDir, args...)
	if err != nil {
		return res, err
	}
	res.Started = p.start
	waitErr := p.Wait(ctx, budget+15*time.Second)
	res.Duration = time.Since(res.Started)
	res.ExitCode = p.ExitCode()
	st, perr := readStats(statFile, screenFile)
	res.SIPpStats = st
	switch {
	case waitErr != nil:
		return res, fmt.Errorf("%s: %v", name, waitErr)
	case perr != nil:
		return res, fmt.Errorf("%s (exit status %s): %v\n%s", name, sippExit(res.ExitCode), perr, tail(p.Log, 30))
	case res.ExitCode != sippAllOK && res.ExitCode != sippSomeFailed:
		return res, fmt.Errorf("%s: sipp exit status %s (%s):\n%s", name, sippExit(res.ExitCode), st, tail(p.Log, 30))
	case (res.ExitCode == sippAllOK) != (st.Failed == 0):
		return res, fmt.Errorf("%s: exit status %d disagrees with the counters (%s)", name, res.ExitCode, st)
	case st.Created != u.Calls || st.Successful+st.Failed != u.Calls:
		return res, fmt.Errorf("%s: stopped before all %d calls ended (%s; its -timeout is %s)", name, u.Calls, st, budget)
	}
	return res, nil
}

// UACDone is a background UAC run's outcome (StartUAC).
type UACDone struct {
	Res SIPpResult
	Err error
}

// StartUAC runs u in the background (RunUAC); its outcome arrives on the
// channel. Name u to follow it with Progress.
func (tp *Topology) StartUAC(ctx context.Context, u UAC) <-chan UACDone {
	done := make(chan UACDone, 1)
	go func() {
		res, err := tp.RunUAC(ctx, u)
		done <- UACDone{res, err}
	}()
	return done
}

// Progress reads the counters of the running UAC named name (dumped every
// second).
func (tp *Topology) Progress(name string) (SIPpStats, error) {
	return readStats(filepath.Join(tp.LogDir, name+".stat.csv"), filepath.Join(tp.LogDir, name+".screen"))
}

// readStats reads the -stf file, or else the -trace_screen dump.
func readStats(statFile, screenFile string) (SIPpStats, error) {
	var errs []string
	for _, f := range []struct {
		path  string
		parse func(io.Reader) (SIPpStats, error)
	}{{statFile, ParseSIPpStats}, {screenFile, ParseSIPpScreen}} {
		fh, err := os.Open(f.path)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		st, err := f.parse(fh)
		fh.Close()
		if err == nil {
			return st, nil
		}
		errs = append(errs, err.Error())
	}
	return SIPpStats{}, fmt.Errorf("no SIPp counters: %s", strings.Join(errs, "; "))
}

// sipAddr is ip:port.
func sipAddr(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }
