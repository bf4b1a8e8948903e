package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Machine describes where and what was measured.
type Machine struct {
	Cores     int    `json:"cores"`
	CPU       string `json:"cpu,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	Kernel    string `json:"kernel,omitempty"`
	GoVersion string `json:"go_version"`
	// Commit is `git describe --always --dirty` of the tree measured.
	Commit string `json:"commit,omitempty"`
	// Mode is "full", "smoke" or "mixed" (of the fragments).
	Mode string    `json:"mode"`
	Date time.Time `json:"date"`
}

// Report is report.json.
type Report struct {
	Machine   Machine    `json:"machine"`
	Fragments []Fragment `json:"fragments"`
	// Plots are the SVG files written beside the report.
	Plots []string `json:"plots,omitempty"`
	// GoBench is the file holding `go test -bench` of every package, if any.
	GoBench string `json:"go_bench,omitempty"`
	// Notes are lines shown under the header.
	Notes []string `json:"notes,omitempty"`
}

// Results lists the results of every fragment in order.
func (r *Report) Results() []Result {
	var out []Result
	for _, f := range r.Fragments {
		out = append(out, f.Results...)
	}
	return out
}

// Options of Assemble.
type Options struct {
	// In is the directory of fragments.
	In string
	// Out is the results directory: the report goes to Out/<timestamp>
	// and is copied to Out/latest.
	Out string
	// GoBench, if set, is a file with the output of `go test -bench`,
	// copied beside the report as gobench.txt.
	GoBench string
	// Order lists fragment sources to put first, in this order (the
	// sections of issue 7); the others follow by name.
	Order []string
	// Now is the report's date (default time.Now).
	Now time.Time
	// Commit, if set, is the commit measured (default: git describe now;
	// set it when the tree may change while the benchmarks run).
	Commit string
	// Notes are lines printed under the report's header (e.g. the load
	// average when the run started).
	Notes []string
}

// DefaultOrder is the order of issue 7's sections.
var DefaultOrder = []string{"calls", "register", "lookup", "attach", "failover", "handoff", "turn"}

// Assemble reads the fragments and writes the report. It returns the
// directory written.
func Assemble(o Options) (string, error) {
	frags, err := ReadFragments(o.In)
	if err != nil {
		return "", err
	}
	if len(frags) == 0 {
		return "", fmt.Errorf("no bench fragments in %s", o.In)
	}
	if o.Order == nil {
		o.Order = DefaultOrder
	}
	rank := func(s string) int {
		if i := slices.Index(o.Order, s); i >= 0 {
			return i
		}
		return len(o.Order)
	}
	slices.SortStableFunc(frags, func(a, b Fragment) int {
		if ra, rb := rank(a.Source), rank(b.Source); ra != rb {
			return ra - rb
		}
		return strings.Compare(a.Source, b.Source)
	})
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	rep := &Report{Machine: Describe(o.Now), Fragments: frags, Notes: o.Notes}
	if o.Commit != "" {
		rep.Machine.Commit = o.Commit
	}
	// The mode is the fragments': the assembler itself runs without
	// P2PSIP_BENCH.
	rep.Machine.Mode = frags[0].Mode
	for _, f := range frags[1:] {
		if f.Mode != rep.Machine.Mode {
			rep.Machine.Mode = "mixed (smoke and full)"
		}
	}
	dir := filepath.Join(o.Out, o.Now.UTC().Format("20060102T150405Z"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	plots := map[string][]Series{}
	var order []string
	for _, f := range frags {
		for _, s := range f.Series {
			if _, ok := plots[s.Plot]; !ok {
				order = append(order, s.Plot)
			}
			plots[s.Plot] = append(plots[s.Plot], s)
		}
	}
	for _, p := range order {
		name := p + ".svg"
		if err := os.WriteFile(filepath.Join(dir, name), SVG(plots[p]), 0o644); err != nil {
			return "", err
		}
		rep.Plots = append(rep.Plots, name)
	}
	if o.GoBench != "" {
		b, err := os.ReadFile(o.GoBench)
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, "gobench.txt"), b, 0o644); err != nil {
			return "", err
		}
		rep.GoBench = "gobench.txt"
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), js, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), Markdown(rep), 0o644); err != nil {
		return "", err
	}
	// latest is a copy, not a symlink: it is committed and read on web
	// views that do not follow links.
	latest := filepath.Join(o.Out, "latest")
	if err := os.RemoveAll(latest); err != nil {
		return "", err
	}
	if err := copyDir(dir, latest); err != nil {
		return "", err
	}
	return dir, nil
}

// Load reads a report.json.
func Load(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, f := range r.Fragments {
		if err := f.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return &r, nil
}

// Describe is the machine this process runs on.
func Describe(now time.Time) Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), Date: now.UTC()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			m.MemoryMiB = kb / 1024
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	return m
}

// Markdown renders the report.
func Markdown(r *Report) []byte {
	var b bytes.Buffer
	m := r.Machine
	fmt.Fprintf(&b, "# p2psip benchmark report\n\n")
	fmt.Fprintf(&b, "%s run of %s, commit `%s`, on %d cores (%s), %d MiB, Linux %s, %s.\n\n",
		m.Mode, m.Date.Format("2006-01-02 15:04 UTC"), orDash(m.Commit), m.Cores, orDash(m.CPU), m.MemoryMiB, orDash(m.Kernel), m.GoVersion)
	b.WriteString("Every reference ran in the same run on the same machine, sharing its cores with the load generators " +
		"(SIPp, the TURN load client), so the ratios hold better than the absolute figures. " +
		"Reproduce with `make bench` (see the README).\n\n")
	for _, n := range r.Notes {
		b.WriteString(n + "\n\n")
	}
	if m.Mode != "full" {
		b.WriteString("**Not a full run: smoke figures come from tiny durations and mean nothing.**\n\n")
	}
	results := r.Results()
	pass, fail := 0, 0
	for _, x := range results {
		if x.Pass != nil && *x.Pass {
			pass++
		} else if x.Pass != nil {
			fail++
		}
	}
	fmt.Fprintf(&b, "%d figures; %d targets met, %d missed.\n\n", len(results), pass, fail)

	b.WriteString("| section | figure | value | reference | ratio | target | pass |\n|---|---|---:|---:|---:|---|---|\n")
	var notes []string
	for _, x := range results {
		ref := "—"
		if x.RefName != "" {
			ref = fmt.Sprintf("%s %s (%s)", num(x.Reference), x.Unit, x.RefName)
		}
		ratio := "—"
		if x.Ratio != 0 {
			ratio = num(x.Ratio)
		}
		p := "—"
		if x.Pass != nil {
			p = "✅ pass"
			if !*x.Pass {
				p = "❌ **fail**"
			}
		}
		name := x.Name
		if x.Note != "" {
			notes = append(notes, fmt.Sprintf("**%s — %s**: %s", x.Section, x.Name, x.Note))
			name += fmt.Sprintf(" [^%d]", len(notes))
		}
		fmt.Fprintf(&b, "| %s | %s | %s %s | %s | %s | %s | %s |\n", cell(x.Section), cell(name), num(x.Value), x.Unit, cell(ref), ratio, cell(orDash(x.Target)), p)
	}
	if len(notes) > 0 {
		b.WriteString("\n## Notes\n\n")
		for i, n := range notes {
			fmt.Fprintf(&b, "[^%d]: %s\n\n", i+1, n)
		}
	}
	if len(r.Plots) > 0 {
		b.WriteString("## Plots\n\n")
		for _, p := range r.Plots {
			fmt.Fprintf(&b, "![%s](%s)\n\n", strings.TrimSuffix(p, ".svg"), p)
		}
	}
	b.WriteString("## Details\n\n")
	for _, f := range r.Fragments {
		if len(f.Lines) == 0 {
			continue
		}
		fmt.Fprintf(&b, "### %s", f.Source)
		if f.Duration > 0 {
			fmt.Fprintf(&b, " (%s)", f.Duration.Round(time.Second))
		}
		b.WriteString("\n\n```\n")
		for _, l := range f.Lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
		b.WriteString("```\n\n")
	}
	if r.GoBench != "" {
		fmt.Fprintf(&b, "Go micro-benchmarks of every package (`go test -bench . ./...`): [%s](%s).\n", r.GoBench, r.GoBench)
	}
	return b.Bytes()
}

func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func copyDir(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		in, err := os.Open(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		out, err := os.Create(filepath.Join(dst, e.Name()))
		if err != nil {
			in.Close()
			return err
		}
		_, err = io.Copy(out, in)
		in.Close()
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}
