package overlay

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/e2e/harness/sipp"
)

// Registration benchmark of the SIP edge (issue 4): SIPp registers users
// with digest authentication at one super peer of a 3-super-peer
// in-process overlay (replicas 3, write quorum 2), stepping the rate up
// (about 5 s per step) until a step has a failure; the result is the
// highest rate with none. In the same run the same SIPp load goes to
// Kamailio as a registrar (auth_ephemeral with the same secret, usrloc in
// memory; e2e/bench/kamailio/kamailio.cfg) when it is installed, and the
// ratio is reported. SIPp, the overlay and Kamailio share the machine's
// CPUs (notes/TESTING.md): compare the two figures of one run.

const (
	// edgeBenchUsers is how many users register at once, one SIPp process
	// each (see register_bench.xml).
	edgeBenchUsers = 8
	edgeBenchStep  = 5 * time.Second
)

// edgeBenchRates are the steps, in REGISTER/s in all (each a whole
// registration: REGISTER, 401, REGISTER with credentials, 200).
var edgeBenchRates = []int{400, 800, 1200, 1600, 2400, 3200, 4800, 6400, 9600, 12800, 19200, 25600}

func BenchmarkEdgeRegister(b *testing.B) {
	sipp.Bin(b)
	if b.N > 1 {
		// One stepped run says everything; a larger b.N would only repeat it.
		b.Skip("runs once (the first iteration already takes the whole budget)")
	}
	o := harness.New(b)
	// Per-request logs would swamp the benchmark's own lines.
	o.Log = o.Log.Level(zerolog.WarnLevel)
	// An ASCII secret, so that Kamailio's configuration can carry it.
	o.Secret = []byte(hex.EncodeToString(o.Secret))
	ca, err := auth.OverlayCA(o.Secret, o.Name)
	if err != nil {
		b.Fatal(err)
	}
	o.CA = ca
	sps := []*harness.SP{o.Start(), o.Start(), o.Start()}
	o.WaitConverged(15 * time.Second)

	dir := b.TempDir()
	scenario := edgeScenario(b, "register_bench.xml")

	edgeRate, edgeFail := edgeStepRegistrations(b, o, "edge", sps[0].Node.SIPAddr(), scenario)
	b.ReportMetric(float64(edgeRate), "edge-reg/s")
	b.Logf("edge (3 super peers, replicas 3, quorum 2): %d REGISTER/s with digest at 0 failures (next step %d failed)", edgeRate, edgeFail)

	kam, how := edgeStartKamailio(b, dir, o.Name, string(o.Secret))
	if kam == "" {
		b.Logf("no Kamailio reference: %s", how)
		return
	}
	kamScenario := scenario
	if how != "auth_ephemeral" {
		kamScenario = edgeNoAuthScenario(b, dir)
	}
	kamRate, kamFail := edgeStepRegistrations(b, o, "kamailio", kam, kamScenario)
	b.ReportMetric(float64(kamRate), "kamailio-reg/s")
	if kamRate > 0 {
		b.ReportMetric(float64(edgeRate)/float64(kamRate), "edge/kamailio")
	}
	b.Logf("kamailio (%s, usrloc in memory): %d REGISTER/s at 0 failures (next step %d failed); edge/kamailio = %.3f",
		how, kamRate, kamFail, float64(edgeRate)/float64(max(kamRate, 1)))
}

// edgeStepRegistrations runs the steps against target and returns the
// highest rate with no failure and the first rate with one (0 if none
// failed). A step is edgeBenchUsers SIPp processes, one user each, sharing
// the rate.
func edgeStepRegistrations(b *testing.B, o *harness.Overlay, name, target, scenario string) (best, failed int) {
	for _, rate := range edgeBenchRates {
		per := rate / edgeBenchUsers
		n := per * int(edgeBenchStep/time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), edgeBenchStep+30*time.Second)
		procs := make([]*sipp.Proc, edgeBenchUsers)
		for i := range procs {
			user := "load" + strconv.Itoa(i)
			cred := o.Credentials(user)
			procs[i] = sipp.Start(ctx, b, fmt.Sprintf("%s-%d-%s", name, rate, user), "", target,
				"-sf", scenario, "-s", user, "-au", cred.Username, "-ap", cred.Password, "-set", "domain", o.Name,
				"-r", strconv.Itoa(per), "-m", strconv.Itoa(n), "-l", strconv.Itoa(2*per+10),
				"-recv_timeout", "5000", "-buff_size", "4194304")
		}
		var total sipp.Stats
		ok := true
		var firstErr error
		for _, p := range procs {
			err := p.Wait(edgeBenchStep + 25*time.Second)
			st, serr := p.Stats()
			p.Kill()
			total.Created += st.Created
			total.Successful += st.Successful
			total.Failed += st.Failed
			total.Retransmissions += st.Retransmissions
			if err != nil || serr != nil || st.Failed != 0 || st.Successful != n {
				ok = false
				if firstErr == nil {
					firstErr = fmt.Errorf("%s: %s (exit %v, stats %v)", p.Name, st, err, serr)
					if best == 0 {
						b.Logf("%s: first step failed:\n%s", name, p.Output())
					}
				}
			}
		}
		cancel()
		b.Logf("%s at %d/s: %s; %v", name, rate, total, firstErr)
		if !ok {
			return best, rate
		}
		best = rate
		time.Sleep(500 * time.Millisecond) // let retransmission timers of the step end
	}
	return best, 0
}

// edgeStartKamailio runs Kamailio with e2e/bench/kamailio/kamailio.cfg on a
// free loopback port until the benchmark ends. It returns its address and
// "auth_ephemeral", or its address and "no auth" when the auth_ephemeral
// module is missing (Debian package kamailio-autheph-modules), or "" and
// why there is no reference.
func edgeStartKamailio(b *testing.B, dir, domain, secret string) (addr, how string) {
	bin, err := exec.LookPath("kamailio")
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/kamailio"); err2 != nil {
			return "", "kamailio not installed (Debian package kamailio)"
		}
		bin = "/usr/sbin/kamailio"
	}
	mpath := ""
	for _, m := range []string{"/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/aarch64-linux-gnu/kamailio/modules", "/usr/lib/kamailio/modules"} {
		if _, err := os.Stat(filepath.Join(m, "registrar.so")); err == nil {
			mpath = m
			break
		}
	}
	if mpath == "" {
		return "", "kamailio modules not found"
	}
	how = "auth_ephemeral"
	if _, err := os.Stat(filepath.Join(mpath, "auth_ephemeral.so")); err != nil {
		how = "no auth"
	}
	tmpl, err := os.ReadFile(filepath.Join("..", "bench", "kamailio", "kamailio.cfg"))
	if err != nil {
		b.Fatal(err)
	}
	port := sipp.FreeUDPPort(b)
	cfg := strings.NewReplacer("@PORT@", strconv.Itoa(port), "@SECRET@", secret, "@DOMAIN@", domain,
		"@MPATH@", mpath, "@CHILDREN@", strconv.Itoa(max(2, runtime.NumCPU()))).Replace(string(tmpl))
	if how != "auth_ephemeral" {
		cfg = edgeStripAuth(cfg)
	}
	cfgPath := filepath.Join(dir, "kamailio.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "-f", cfgPath, "-m", "4096", "-M", "64", "-DD", "-E", "-Y", dir, "-w", dir)
	cmd.Stdout, cmd.Stderr = &out, &out
	// Its own process group: -DD keeps the main process in front, but its
	// workers are children that must go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start kamailio: %v", err)
	}
	done := make(chan struct{})
	var werr error
	go func() {
		werr = cmd.Wait()
		close(done)
	}()
	b.Cleanup(func() {
		// The whole group: workers that outlived the main process too.
		pgid := cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGTERM) //nolint:errcheck // may have exited
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-pgid, syscall.SIGKILL) //nolint:errcheck
			<-done
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !sipp.Bound(port) {
		select {
		case <-done:
			b.Fatalf("kamailio exited: %v\n%s", werr, out.String())
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("kamailio not listening after 10s\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // workers start after the socket is bound
	return fmt.Sprintf("127.0.0.1:%d", port), how
}

// edgeStripAuth drops the authentication block of the configuration (the
// fallback without auth_ephemeral).
func edgeStripAuth(cfg string) string {
	var keep []string
	skip := 0
	for _, l := range strings.Split(cfg, "\n") {
		t := strings.TrimSpace(l)
		switch {
		case strings.Contains(t, "auth_ephemeral") || strings.HasPrefix(t, `loadmodule "auth.so"`):
			continue
		case strings.HasPrefix(t, "if (!autheph_check"):
			skip = 1
			continue
		case skip > 0:
			if t == "}" {
				skip = 0
			}
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// edgeNoAuthScenario is register_bench.xml without the challenge, for a
// Kamailio without auth_ephemeral.
func edgeNoAuthScenario(b *testing.B, dir string) string {
	src, err := os.ReadFile(edgeScenario(b, "register_bench.xml"))
	if err != nil {
		b.Fatal(err)
	}
	s := string(src)
	start := strings.Index(s, `<recv response="401"`)
	end := strings.LastIndex(s, `<recv response="200"/>`)
	s = s[:start] + s[end:]
	p := filepath.Join(dir, "register_noauth.xml")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}
