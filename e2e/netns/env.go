//go:build e2e

package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// nsPrefix starts the name of every namespace the suite creates; the
// creating process's pid follows ("p2pe2e-PID-..."), which is how a later
// run recognises leftovers of a dead one.
const nsPrefix = "p2pe2e-"

// netnsDir is where `ip netns add` pins named namespaces.
const netnsDir = "/run/netns"

// tools are the commands the suite execs, with the Debian package of each.
var tools = []struct{ cmd, pkg string }{
	{"ip", "iproute2"},
	{"tc", "iproute2"},
	{"iptables", "iptables"},
	{"sysctl", "procps"},
	{"sipp", "sip-tester"},
}

// Preflight checks that the suite can run: root, and every tool present.
// The error names the Debian packages to install.
func Preflight() error {
	// Tools live in sbin directories that a user's PATH may lack.
	os.Setenv("PATH", os.Getenv("PATH")+":/usr/local/sbin:/usr/sbin:/sbin")
	if os.Geteuid() != 0 {
		return errors.New("the netns suite must run as root (it creates network namespaces, veth links and NAT rules); run `make e2e` as root")
	}
	var missing []string
	for _, t := range tools {
		if _, err := exec.LookPath(t.cmd); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", t.cmd, t.pkg))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s; install with `make deps` as root, or apt-get install the packages named", strings.Join(missing, ", "))
	}
	return nil
}

// CleanupLeftovers deletes the namespaces (and kills the processes in
// them) and the binary directories that a run which no longer exists left
// behind, e.g. one killed by go test's timeout or by SIGKILL. What belongs
// to live runs is left alone.
func CleanupLeftovers(w io.Writer) {
	dead := func(name string) bool {
		pid, err := strconv.Atoi(name)
		return err != nil || (pid != os.Getpid() && !processAlive(pid))
	}
	if dirs, err := filepath.Glob(filepath.Join(os.TempDir(), nsPrefix+"bin-*")); err == nil {
		for _, d := range dirs {
			pid, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(d), nsPrefix+"bin-"), "-")
			if dead(pid) {
				os.RemoveAll(d)
			}
		}
	}
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return // no namespace was ever created here
	}
	var removed []string
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, nsPrefix) {
			continue
		}
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(name, nsPrefix), "-")
		if !dead(pidStr) {
			continue
		}
		killNamespacePids(name)
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			fmt.Fprintf(w, "e2e: ip netns delete %s: %v: %s\n", name, err, bytes.TrimSpace(out))
			continue
		}
		removed = append(removed, name)
	}
	if len(removed) > 0 {
		fmt.Fprintf(w, "e2e: removed %d namespaces left by interrupted runs: %s\n", len(removed), strings.Join(removed, " "))
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// killNamespacePids SIGKILLs every process still inside namespace name
// (deleting a namespace only unlinks its name; processes would live on).
// They are processes this suite started: no one else uses our prefix.
func killNamespacePids(name string) {
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck // already gone is fine
		}
	}
}

// BuildBinary builds cmd/p2psip into dir and returns its path.
func BuildBinary(dir string) (string, error) {
	goCmd := "go"
	if _, err := exec.LookPath(goCmd); err != nil {
		goCmd = "/usr/local/go/bin/go"
		if root := os.Getenv("GOROOT"); root != "" {
			goCmd = filepath.Join(root, "bin", "go")
		}
	}
	out := filepath.Join(dir, "p2psip")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-o", out, "github.com/p2psip/p2psip/cmd/p2psip")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/p2psip: %v\n%s", err, b)
	}
	return out, nil
}

// Binary is the p2psip binary under test (set by TestMain).
var Binary string

// agentSupport caches whether Binary has the `peer` subcommand, and the
// flags it takes.
var agentSupport struct {
	once  sync.Once
	err   error
	flags string // `p2psip peer --help` output
}

// AgentAvailable reports whether the binary has `p2psip peer` (issue 3),
// with the reason when it has not.
func AgentAvailable() error {
	agentSupport.once.Do(func() {
		out, err := exec.Command(Binary, "peer", "--help").CombinedOutput()
		if err != nil {
			agentSupport.err = fmt.Errorf("`p2psip peer --help` fails (%v: %s)", err, firstLine(out))
			return
		}
		agentSupport.flags = string(out)
	})
	return agentSupport.err
}

// agentHasFlag reports whether `p2psip peer` documents --name.
func agentHasFlag(name string) bool {
	return AgentAvailable() == nil && strings.Contains(agentSupport.flags, "--"+name+" ")
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

// ---- the registry behind teardown on signals ----

var live = struct {
	sync.Mutex
	topos map[*Topology]struct{}
}{topos: map[*Topology]struct{}{}}

func register(tp *Topology) {
	live.Lock()
	live.topos[tp] = struct{}{}
	live.Unlock()
}

func unregister(tp *Topology) {
	live.Lock()
	delete(live.topos, tp)
	live.Unlock()
}

// TeardownAll destroys every live topology: what SIGINT/SIGTERM and the
// end of TestMain call. It writes to w, not to a test's log (the test may
// be over).
func TeardownAll(w io.Writer) {
	live.Lock()
	topos := make([]*Topology, 0, len(live.topos))
	for tp := range live.topos {
		topos = append(topos, tp)
	}
	live.Unlock()
	for _, tp := range topos {
		fmt.Fprintf(w, "e2e: tearing down %s\n", tp.prefix)
		tp.destroy(w)
	}
}
