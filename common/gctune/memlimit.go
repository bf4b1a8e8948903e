package gctune

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
)

// LimitFraction is the share of the cgroup's memory limit given to the Go
// runtime: the rest is headroom for what the kernel charges to the cgroup
// beyond the runtime's own count (page cache of the data directory, socket
// buffers).
const LimitFraction = 0.9

// Limit is what LimitToCgroup did.
type Limit struct {
	// Cgroup is the cgroup's memory limit in bytes, 0 when it has none.
	Cgroup int64
	// Set is the memory limit given to the runtime, 0 when none was.
	Set int64
	// Why says why none was set, or where the limit came from.
	Why string
}

// LimitToCgroup caps the Go runtime's memory (debug.SetMemoryLimit) at
// LimitFraction of the memory limit of the process's cgroup, unless
// GOMEMLIMIT is set (the operator's word wins). A container or a systemd
// unit with MemoryMax= that holds a super peer would otherwise see the
// process killed for memory that was only garbage: Tune lets the heap grow
// to at least twice its live size, and up to ServerHeap, before it
// collects, whatever the limit; with the runtime told the limit, it
// collects harder as the heap nears it instead.
func LimitToCgroup() (Limit, error) {
	if v, set := os.LookupEnv("GOMEMLIMIT"); set {
		return Limit{Why: "GOMEMLIMIT=" + v + " set"}, nil
	}
	max, where, err := cgroupMemoryMax(os.DirFS("/"))
	if err != nil {
		return Limit{}, fmt.Errorf("gctune: cgroup memory limit: %w", err)
	}
	if max <= 0 {
		return Limit{Why: "no cgroup memory limit"}, nil
	}
	set := int64(float64(max) * LimitFraction)
	debug.SetMemoryLimit(set)
	return Limit{Cgroup: max, Set: set, Why: where}, nil
}

// unlimited is above any real limit: cgroup v1 writes "no limit" as the
// largest page-aligned int64.
const unlimited = 1 << 62

// cgroupMemoryMax reads the memory limit of this process's cgroup from
// root (the file system root): cgroup v2's memory.max of the unified
// hierarchy, else cgroup v1's memory.limit_in_bytes of the memory
// controller. It returns 0 when there is no limit or no cgroup memory
// controller, and the file it read.
func cgroupMemoryMax(root fs.FS) (int64, string, error) {
	b, err := fs.ReadFile(root, "proc/self/cgroup")
	if errors.Is(err, fs.ErrNotExist) {
		return 0, "", nil // not Linux
	}
	if err != nil {
		return 0, "", err
	}
	var v1, v2 string // cgroup paths; they start with '/' when present
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		id, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		ctrls, p, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		switch {
		case id == "0" && ctrls == "":
			v2 = p
		case hasController(ctrls, "memory"):
			v1 = p
		}
	}
	// A v1 memory controller wins on a hybrid host: the v2 hierarchy then
	// has no memory controller.
	var candidates []string
	if v1 != "" {
		candidates = append(candidates, path.Join("sys/fs/cgroup/memory", v1, "memory.limit_in_bytes"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes") // a cgroup namespace shows the own cgroup at the top
	}
	if v2 != "" {
		candidates = append(candidates, path.Join("sys/fs/cgroup", v2, "memory.max"), "sys/fs/cgroup/memory.max")
	}
	for _, f := range candidates {
		raw, err := fs.ReadFile(root, f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, "", err
		}
		s := strings.TrimSpace(string(raw))
		if s == "max" {
			return 0, "/" + f, nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, "", fmt.Errorf("/%s: %q: %w", f, s, err)
		}
		if n <= 0 || n >= unlimited {
			return 0, "/" + f, nil
		}
		return n, "/" + f, nil
	}
	return 0, "", nil
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}
