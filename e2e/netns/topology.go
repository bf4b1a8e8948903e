//go:build e2e

package netns

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Hosts of the topology (logical names; NS maps them to namespaces).
const (
	SP1    = "sp1"
	SP2    = "sp2"
	SP3    = "sp3"
	Public = "pub"   // a public host that may be promoted (scenario 5)
	Phone  = "phone" // a plain SIP phone on the public segment (scenario 4)
	NAT1   = "nat1"  // port-preserving NAT router
	NAT2   = "nat2"  // port-randomizing NAT router
	LAN1   = "lan1"  // host behind nat1
	LAN2   = "lan2"  // host behind nat2
	bridge = "br"    // the public segment's bridge
)

// Addresses, documentation ranges only (RFC 5737).
const (
	SP1IP    = "203.0.113.11"
	SP2IP    = "203.0.113.12"
	SP3IP    = "203.0.113.13"
	PublicIP = "203.0.113.20"
	PhoneIP  = "203.0.113.30"
	NAT1WAN  = "203.0.113.101"
	NAT2WAN  = "203.0.113.102"
	NAT1LAN  = "192.0.2.1"
	LAN1IP   = "192.0.2.10"
	NAT2LAN  = "192.0.2.129"
	LAN2IP   = "192.0.2.130"
)

// Interface names inside the namespaces.
const (
	hostIf   = "eth0" // a host's only link
	wanIf    = "wan0" // a NAT router's public link
	lanIf    = "lan0" // a NAT router's LAN link
	bridgeIf = "br0"
)

// HostIP is each host's address (a router's public one).
var HostIP = map[string]string{
	SP1: SP1IP, SP2: SP2IP, SP3: SP3IP, Public: PublicIP, Phone: PhoneIP,
	NAT1: NAT1WAN, NAT2: NAT2WAN, LAN1: LAN1IP, LAN2: LAN2IP,
}

// RouterOf is the NAT router in front of each LAN host.
var RouterOf = map[string]string{LAN1: NAT1, LAN2: NAT2}

// topoSeq numbers the topologies of one run.
var topoSeq atomic.Int64

// Topology is one instance of the network above, owned by one test.
type Topology struct {
	t      testing.TB
	prefix string // "p2pe2e-PID-SEQ-"
	// Dir is the test's scratch directory (data dirs, credentials).
	Dir string
	// LogDir holds one log file per process.
	LogDir string

	mu         sync.Mutex
	namespaces []string
	procs      []*Proc
	destroyed  bool
}

// NewTopology builds the topology, fails t if it cannot, and destroys it at
// t's cleanup.
func NewTopology(t testing.TB) *Topology {
	t.Helper()
	tp := &Topology{t: t, prefix: fmt.Sprintf("%s%d-%d-", nsPrefix, os.Getpid(), topoSeq.Add(1)), Dir: t.TempDir()}
	tp.LogDir = logDir(t, tp.Dir)
	register(tp)
	t.Cleanup(func() {
		if t.Failed() {
			tp.dumpLogs()
		}
		tp.destroy(nil)
	})
	start := time.Now()
	if err := tp.build(); err != nil {
		t.Fatalf("build topology: %v", err)
	}
	t.Logf("topology %s* up in %s (logs in %s)", tp.prefix, time.Since(start).Round(time.Millisecond), tp.LogDir)
	return tp
}

// logDir is $P2PSIP_E2E_LOGS/TEST when that is set (kept after the run),
// else a directory in the test's scratch space.
func logDir(t testing.TB, scratch string) string {
	dir := filepath.Join(scratch, "logs")
	if root := os.Getenv("P2PSIP_E2E_LOGS"); root != "" {
		dir = filepath.Join(root, regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(t.Name(), "_"))
		os.RemoveAll(dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("log dir: %v", err)
	}
	return dir
}

// NS is the namespace name of host.
func (tp *Topology) NS(host string) string { return tp.prefix + host }

func (tp *Topology) build() error {
	hosts := []string{bridge, SP1, SP2, SP3, Public, Phone, NAT1, NAT2, LAN1, LAN2}
	for _, h := range hosts {
		ns := tp.NS(h)
		if err := ipCmd("netns", "add", ns); err != nil {
			return err
		}
		tp.mu.Lock()
		tp.namespaces = append(tp.namespaces, ns)
		tp.mu.Unlock()
		if err := ipCmd("-n", ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}

	// The public segment: a bridge in a namespace of its own.
	br := tp.NS(bridge)
	if err := ipBatch(
		[]string{"-n", br, "link", "add", bridgeIf, "type", "bridge"},
		[]string{"-n", br, "link", "set", bridgeIf, "up"},
	); err != nil {
		return err
	}
	for _, h := range []string{SP1, SP2, SP3, Public, Phone, NAT1, NAT2} {
		ifName := hostIf
		if h == NAT1 || h == NAT2 {
			ifName = wanIf
		}
		port := "p-" + h
		if err := ipBatch(
			[]string{"-n", br, "link", "add", port, "type", "veth", "peer", "name", ifName, "netns", tp.NS(h)},
			[]string{"-n", br, "link", "set", port, "master", bridgeIf},
			[]string{"-n", br, "link", "set", port, "up"},
			[]string{"-n", tp.NS(h), "addr", "add", HostIP[h] + "/24", "dev", ifName},
			[]string{"-n", tp.NS(h), "link", "set", ifName, "up"},
		); err != nil {
			return err
		}
	}

	// The LANs behind the routers.
	lans := []struct{ router, host, routerIP, hostIP, randomize string }{
		{NAT1, LAN1, NAT1LAN, LAN1IP, ""},
		{NAT2, LAN2, NAT2LAN, LAN2IP, "--random-fully"},
	}
	for _, l := range lans {
		r, h := tp.NS(l.router), tp.NS(l.host)
		if err := ipBatch(
			[]string{"-n", r, "link", "add", lanIf, "type", "veth", "peer", "name", hostIf, "netns", h},
			[]string{"-n", r, "addr", "add", l.routerIP + "/25", "dev", lanIf},
			[]string{"-n", r, "link", "set", lanIf, "up"},
			[]string{"-n", h, "addr", "add", l.hostIP + "/25", "dev", hostIf},
			[]string{"-n", h, "link", "set", hostIf, "up"},
			[]string{"-n", h, "route", "add", "default", "via", l.routerIP},
		); err != nil {
			return err
		}
		// Forwarding only inside the router; a stateful NAT: outbound
		// connections are masqueraded, unsolicited inbound is dropped.
		masq := []string{"-t", "nat", "-A", "POSTROUTING", "-o", wanIf, "-j", "MASQUERADE"}
		if l.randomize != "" {
			masq = append(masq, l.randomize)
		}
		for _, c := range [][]string{
			{"sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
			append([]string{"iptables", "-w"}, masq...),
			{"iptables", "-w", "-A", "FORWARD", "-i", wanIf, "-o", lanIf, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
			{"iptables", "-w", "-A", "FORWARD", "-i", wanIf, "-o", lanIf, "-j", "DROP"},
		} {
			if _, err := tp.Exec(context.Background(), l.router, c...); err != nil {
				return err
			}
		}
	}
	return nil
}

// ipCmd runs `ip ARGS...` (always with -n NS or on netns objects: never
// on the root namespace's own links, routes or rules).
func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func ipBatch(cmds ...[]string) error {
	for _, c := range cmds {
		if err := ipCmd(c...); err != nil {
			return err
		}
	}
	return nil
}

// Exec runs a short command in host's namespace and returns its combined
// output; the error carries the output. It is logged to commands.log.
func (tp *Topology) Exec(ctx context.Context, host string, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", tp.NS(host)}, argv...)...)
	setProcAttrs(cmd)
	killGroupOnCancel(cmd)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	err := startCmd(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	out := buf.Bytes()
	tp.logCommand(host, argv, out, err, time.Since(start))
	if err != nil {
		return out, fmt.Errorf("[%s] %s: %v: %s", host, strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

func (tp *Topology) logCommand(host string, argv []string, out []byte, err error, d time.Duration) {
	f, ferr := os.OpenFile(filepath.Join(tp.LogDir, "commands.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if ferr != nil {
		return
	}
	defer f.Close()
	status := "ok"
	if err != nil {
		status = err.Error()
	}
	fmt.Fprintf(f, "%s [%s] %s (%s, %s)\n", time.Now().Format("15:04:05.000"), host, strings.Join(argv, " "), d.Round(time.Millisecond), status)
	if len(out) > 0 {
		fmt.Fprintf(f, "%s\n", bytes.TrimRight(out, "\n"))
	}
}

// destroy kills every process and deletes every namespace (which deletes
// their links). It is idempotent; w (or the test's log when nil) gets
// what goes wrong.
func (tp *Topology) destroy(w io.Writer) {
	tp.mu.Lock()
	if tp.destroyed {
		tp.mu.Unlock()
		return
	}
	tp.destroyed = true
	procs, namespaces := tp.procs, tp.namespaces
	tp.mu.Unlock()
	report := func(format string, args ...any) {
		if w != nil {
			fmt.Fprintf(w, format+"\n", args...)
		} else {
			tp.t.Logf(format, args...)
		}
	}
	// Newest first: phones, then agents, then super peers, so the logs
	// do not fill with reactions to the teardown itself.
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Kill()
	}
	for i := len(namespaces) - 1; i >= 0; i-- {
		ns := namespaces[i]
		killNamespacePids(ns)
		if err := ipCmd("netns", "delete", ns); err != nil {
			report("teardown: %v", err)
		}
	}
	unregister(tp)
	if w != nil {
		// Interrupted: the test's own cleanup (t.TempDir's) will not run.
		os.RemoveAll(tp.Dir)
		os.Remove(filepath.Dir(tp.Dir)) // t.TempDir's parent, if now empty
	}
}

// dumpLogs prints the tail of the p2psip processes' logs and of the
// command log to the test log, and lists the other files.
func (tp *Topology) dumpLogs() {
	entries, err := os.ReadDir(tp.LogDir)
	if err != nil {
		return
	}
	var others []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		path := filepath.Join(tp.LogDir, e.Name())
		// SIPp's own logs hold its screens; its counters are in the test
		// log already, and a SIPp that failed to start had its tail printed.
		if !strings.HasSuffix(e.Name(), ".log") || strings.HasPrefix(e.Name(), "sipp-") {
			others = append(others, e.Name())
			continue
		}
		// Debug lines (pion's per-packet ones above all) would fill the
		// tail; the whole log stays in the file.
		tp.t.Logf("---- tail of %s, debug lines left out ----\n%s", path, tailWithout(path, 40, `"level":"debug"`))
	}
	if len(others) > 0 {
		tp.t.Logf("also in %s: %s", tp.LogDir, strings.Join(others, " "))
	}
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	return tailWithout(path, n, "")
}

// tailWithout returns the last n lines of the file at path that do not
// contain skip (all lines when skip is empty).
func tailWithout(path string, n int, skip string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if skip != "" {
		kept := lines[:0]
		for _, l := range lines {
			if !strings.Contains(l, skip) {
				kept = append(kept, l)
			}
		}
		lines = kept
	}
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// ---- faults ----

// Loss makes the NAT router's public link drop pct percent of the packets
// in each direction. It uses `tc qdisc ... netem loss` on both ends of the
// link when the kernel has netem, and otherwise an iptables statistic
// match in the router's mangle table (the same effect: each packet
// crossing the link is dropped independently with probability pct%).
// It returns how it did it.
func (tp *Topology) Loss(router string, pct float64) (string, error) {
	ctx := context.Background()
	loss := fmt.Sprintf("%g%%", pct)
	_, err := tp.Exec(ctx, router, "tc", "qdisc", "add", "dev", wanIf, "root", "netem", "loss", loss)
	if err == nil {
		if _, err := tp.Exec(ctx, bridge, "tc", "qdisc", "add", "dev", "p-"+router, "root", "netem", "loss", loss); err != nil {
			return "", err
		}
		return "tc netem loss " + loss + " on both ends of the link", nil
	}
	if !strings.Contains(err.Error(), "qdisc kind is unknown") {
		return "", err
	}
	p := fmt.Sprintf("%.4f", pct/100)
	for _, rule := range [][]string{
		{"-t", "mangle", "-A", "PREROUTING", "-i", wanIf},
		{"-t", "mangle", "-A", "POSTROUTING", "-o", wanIf},
	} {
		args := append([]string{"iptables", "-w"}, rule...)
		args = append(args, "-m", "statistic", "--mode", "random", "--probability", p, "-j", "DROP")
		if _, err := tp.Exec(ctx, router, args...); err != nil {
			return "", err
		}
	}
	return "iptables statistic DROP " + loss + " each way (this kernel has no sch_netem)", nil
}

// LossCounters returns the packets the loss rules dropped on router (iptables
// variant), for the summary; "" when netem is in use.
func (tp *Topology) LossCounters(router string) string {
	out, err := tp.Exec(context.Background(), router, "iptables", "-w", "-t", "mangle", "-L", "-v", "-n", "-x")
	if err != nil {
		return ""
	}
	var dropped []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 2 && f[2] == "DROP" && strings.Contains(l, "statistic") {
			dropped = append(dropped, f[0])
		}
	}
	return strings.Join(dropped, "+")
}

// Partition drops every packet between hosts a and b (iptables in a's
// namespace, both directions), as a cut link between them would.
func (tp *Topology) Partition(a, b string) error {
	for _, rule := range [][]string{
		{"-A", "INPUT", "-s", HostIP[b], "-j", "DROP"},
		{"-A", "OUTPUT", "-d", HostIP[b], "-j", "DROP"},
	} {
		if _, err := tp.Exec(context.Background(), a, append([]string{"iptables", "-w"}, rule...)...); err != nil {
			return err
		}
	}
	return nil
}
