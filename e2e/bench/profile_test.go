package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
)

// profiler takes a CPU profile of this process (our super peers and
// agents; for TURN also the load client) while our side runs at its limit,
// and sums it into the shares the report's notes name as the bottleneck.
type profiler struct {
	t    *testing.T
	path string
	f    *os.File
}

// startProfile starts a CPU profile named name (in P2PSIP_BENCH_CPUPROFILE
// when set). Only the full run profiles; the smoke run returns nil.
func startProfile(t *testing.T, p benchParams, name string) *profiler {
	t.Helper()
	if !p.full {
		return nil
	}
	dir := p.profileDir
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name+".pprof")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		t.Logf("no CPU profile: %v", err)
		return nil
	}
	pr := &profiler{t: t, path: path, f: f}
	t.Cleanup(pr.stopProfile) // when the part fails before stop
	return pr
}

func (pr *profiler) stopProfile() {
	if pr == nil || pr.f == nil {
		return
	}
	pprof.StopCPUProfile()
	pr.f.Close()
	pr.f = nil
}

// category is a share of CPU the notes name: the largest cumulative share
// of any function matching re.
type category struct {
	name string
	re   *regexp.Regexp
}

// stop ends the profile and returns the shares of the categories found
// ("sipgo 41 %, ...") and the profile's top functions by flat CPU.
func (pr *profiler) stop(cats []category) (shares string, top []string) {
	if pr == nil {
		return "", nil
	}
	pr.stopProfile()
	// make puts /usr/local/go/bin on PATH; so does `go test` itself.
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "no profile summary: " + err.Error(), nil
	}
	cum, err := exec.Command(gobin, "tool", "pprof", "-top", "-cum", "-nodecount=400", pr.path).Output()
	if err != nil {
		return "no profile summary: " + err.Error(), nil
	}
	best := map[string]float64{}
	for _, l := range strings.Split(string(cum), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || !strings.HasSuffix(f[4], "%") {
			continue
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(f[4], "%"), 64)
		if err != nil {
			continue
		}
		fn := strings.Join(f[5:], " ")
		for _, c := range cats {
			if c.re.MatchString(fn) && pct > best[c.name] {
				best[c.name] = pct
			}
		}
	}
	var parts []string
	for _, c := range cats {
		parts = append(parts, fmt.Sprintf("%s %.0f %%", c.name, best[c.name]))
	}
	flat, err := exec.Command(gobin, "tool", "pprof", "-top", "-nodecount=12", pr.path).Output()
	if err == nil {
		for _, l := range strings.Split(strings.TrimSpace(string(flat)), "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "flat") || strings.Contains(l, "%") {
				top = append(top, "  "+l)
			}
		}
	}
	return "pprof (cumulative CPU of this process at the limit): " + strings.Join(parts, ", "), top
}
