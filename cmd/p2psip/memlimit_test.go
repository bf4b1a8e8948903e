package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMemoryLimitFromCgroup runs a super peer in a cgroup of its own with
// a 512 MiB memory limit, as a container or a systemd unit with
// MemoryMax= would, and checks that it gives the Go runtime 90 % of it.
// It needs to create a cgroup (root, cgroup v1 memory controller or v2
// with memory delegated) and skips otherwise.
func TestMemoryLimitFromCgroup(t *testing.T) {
	t.Parallel()
	cg, limitFile := childMemoryCgroup(t)
	var limit int64 = 512 << 20
	if err := os.WriteFile(filepath.Join(cg, limitFile), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		t.Skipf("cannot set a memory limit: %v", err)
	}
	dir := t.TempDir()
	args := []string{"--data-dir", filepath.Join(dir, "data"), "--peer-port", "0", "--gossip-port", "0", "--admin", "off",
		"--sip-port", "0", "--sips-port", "0", "--turn-port", "0", "--log-format", "json"}
	// The shell joins the cgroup, then becomes the super peer: the
	// process is in the cgroup from its first instruction.
	cmd := exec.Command("sh", append([]string{"-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(cg, "cgroup.procs"), bin, "superpeer"}, args...)...)
	sp := startCommand(t, cmd, dir, nil, args)
	want := fmt.Sprintf(`"cgroup_limit_bytes":%d,"go_memory_limit_bytes":%d`, limit, int64(float64(limit)*0.9))
	if !sp.waitOutput(want, 10*time.Second) {
		t.Fatalf("no line with %s in the log:\n%s", want, sp.stderr)
	}
	if err := sp.stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// childMemoryCgroup creates a cgroup below this process's own in the
// memory hierarchy, removed at cleanup (after the processes in it exit:
// register it before starting them). It returns its directory and the
// name of its limit file.
func childMemoryCgroup(t *testing.T) (dir, limitFile string) {
	t.Helper()
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		t.Skipf("no cgroups: %v", err)
	}
	defer f.Close()
	var v1, v2 string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2 = parts[2]
		case strings.Contains(","+parts[1]+",", ",memory,"):
			v1 = parts[2]
		}
	}
	base := filepath.Join("/sys/fs/cgroup/memory", v1)
	limitFile = "memory.limit_in_bytes"
	if v1 == "" {
		base, limitFile = filepath.Join("/sys/fs/cgroup", v2), "memory.max"
	}
	dir = filepath.Join(base, fmt.Sprintf("p2psip-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot create a cgroup: %v", err)
	}
	t.Cleanup(func() {
		// The processes have exited (their cleanups ran first); the
		// kernel may take a moment to let the cgroup go.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			err := os.Remove(dir)
			if err == nil || os.IsNotExist(err) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", dir, err)
				return
			}
		}
	})
	if _, err := os.Stat(filepath.Join(dir, limitFile)); err != nil {
		t.Skipf("no memory controller in %s: %v", dir, err)
	}
	return dir, limitFile
}
