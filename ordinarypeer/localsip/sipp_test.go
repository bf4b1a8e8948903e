package localsip_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sippCalls is how many calls TestSIPp places (P2PSIP_SIPP_CALLS, default
// 100) and sippRate how many it starts per second (P2PSIP_SIPP_RATE,
// default 100).
func sippCalls() int { return envInt("P2PSIP_SIPP_CALLS", 100) }
func sippRate() int  { return envInt("P2PSIP_SIPP_RATE", 100) }

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// TestSIPp: a SIPp UAS registers behind agent B, a SIPp UAC behind agent A
// places sippCalls() calls to it through both routers and the tunnel, with
// zero failures; ACK and BYE of every call traverse both agents.
func TestSIPp(t *testing.T) {
	bin, err := exec.LookPath("sipp")
	if err != nil {
		t.Skip("sipp not installed (Debian package sip-tester)")
	}
	if testing.Short() {
		t.Skip("SIPp run skipped in -short mode")
	}
	calls := uint64(sippCalls())
	_, a, b := twoAgents(t)
	uasPort, uacPort := freeUDPPort(t), freeUDPPort(t)

	// REGISTER from the port the UAS will listen on: that is the flow
	// agent B delivers to.
	reg := newSIPp(t, bin, "register", b.addr(), "-sf", "testdata/register.xml", "-s", "bob", "-m", "1",
		"-p", strconv.Itoa(uasPort), "-timeout", "10s", "-timeout_error")
	if err := reg.wait(15 * time.Second); err != nil {
		t.Fatalf("sipp register: %v\n%s", err, reg.output())
	}
	if n := b.reg.Bindings(); n != 1 {
		t.Fatalf("agent B has %d bindings after SIPp's REGISTER", n)
	}

	uas := newSIPp(t, bin, "uas", "-sf", "testdata/uas.xml", "-p", strconv.Itoa(uasPort),
		"-m", strconv.FormatUint(calls, 10), "-default_behaviors", "all,-abortunexp")
	eventually(t, 5*time.Second, "SIPp UAS listening", func() bool { return udpBound(uasPort) })

	uac := newSIPp(t, bin, "uac", a.addr(), "-sf", "testdata/uac.xml", "-s", "bob",
		"-m", strconv.FormatUint(calls, 10), "-r", strconv.Itoa(sippRate()), "-l", strconv.Itoa(4*sippRate()),
		"-p", strconv.Itoa(uacPort), "-default_behaviors", "all,-abortunexp", "-recv_timeout", "10000")
	start := time.Now()
	if err := uac.wait(time.Duration(calls/uint64(sippRate()))*time.Second + time.Minute); err != nil {
		t.Fatalf("sipp uac: %v\n%s\nuas:\n%s", err, uac.output(), uas.output())
	}
	if err := uas.wait(30 * time.Second); err != nil {
		t.Fatalf("sipp uas: %v\n%s", err, uas.output())
	}
	as, bs := a.router.Stats(), b.router.Stats()
	for _, m := range []string{"INVITE", "ACK", "BYE"} {
		if as.Forwarded[m] != calls || bs.Forwarded[m] != calls {
			t.Errorf("%s forwarded A=%d B=%d, want %d each", m, as.Forwarded[m], bs.Forwarded[m], calls)
		}
	}
	if as.MaxHops > 3 || bs.MaxHops > 3 || as.Dropped+bs.Dropped != 0 {
		t.Errorf("hops A=%d B=%d, dropped %d", as.MaxHops, bs.MaxHops, as.Dropped+bs.Dropped)
	}
	t.Logf("%d calls in %v at %d calls/s offered", calls, time.Since(start).Round(time.Millisecond), sippRate())
	t.Logf("agent A %+v", as)
	t.Logf("agent B %+v", bs)
}

// sippRun is one SIPp process, killed at the end of the test if still
// running.
type sippRun struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

func newSIPp(t testing.TB, bin, name string, args ...string) *sippRun {
	t.Helper()
	args = append(args, "-i", "127.0.0.1", "-nostdin", "-trace_err", "-error_file", t.TempDir()+"/"+name+"-errors.log")
	r := &sippRun{name: name, out: &lockedBuffer{}, done: make(chan error, 1)}
	r.cmd = exec.Command(bin, args...)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start sipp %s: %v", name, err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			r.cmd.Process.Kill() //nolint:errcheck
			<-r.done
		}
		if t.Failed() {
			if b, err := os.ReadFile(args[len(args)-1]); err == nil && len(b) > 0 {
				t.Logf("sipp %s errors:\n%s", name, tail(string(b), 4000))
			}
		}
	})
	return r
}

func (r *sippRun) wait(d time.Duration) error {
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(d):
		return fmt.Errorf("sipp %s still running after %v", r.name, d)
	}
}

func (r *sippRun) output() string { return tail(r.out.String(), 6000) }

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// freeUDPPort finds a loopback UDP port nobody uses right now.
func freeUDPPort(t testing.TB) int {
	t.Helper()
	udp, tcp := listenPair(t)
	port := tcp.Addr().(interface{ String() string }).String()
	udp.Close()
	tcp.Close()
	_, p, _ := strings.Cut(port, ":")
	n, _ := strconv.Atoi(p)
	return n
}

// udpBound reports whether some socket is bound to the UDP port (Linux
// /proc/net/udp), without touching the port ourselves.
func udpBound(port int) bool {
	f, err := os.Open("/proc/net/udp")
	if err != nil {
		return false
	}
	defer f.Close()
	want := fmt.Sprintf(":%04X", port)
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 1 && strings.HasSuffix(fields[1], want) {
			return true
		}
	}
	return false
}
