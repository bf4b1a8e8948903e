// Package report is the benchmark report of issue 7: what `make bench`
// hands an operator, each figure beside its reference measured in the same
// run on the same machine.
//
// How a benchmark adds its figures:
//
//   - Write it as a Go test named TestBench... in any package (make bench
//     runs `go test -run '^TestBench' ./...`). Under plain `go test` (and so
//     `make test`) it must run as a smoke run of a few seconds at most, or
//     skip with a message when a tool it needs is missing; with
//     P2PSIP_BENCH=full (Full() is true) it measures for real. The whole
//     full run must stay within about 15 minutes on 2 cores.
//   - At the end it calls Emit(Fragment{...}): its Results (one row of the
//     report each: value, reference, ratio, target, pass, and a Note naming
//     the bottleneck when it falls short), optional Series (lines of a plot,
//     grouped by Series.Plot into one SVG) and Lines (free text, e.g. the
//     steps of a ramp). Emit writes a JSON file into the directory named by
//     P2PSIP_BENCH_OUT, or does nothing when that is unset.
//   - The final step, `go run ./e2e/bench/report/assemble -in DIR -out
//     e2e/bench/results`, reads every fragment of DIR and writes
//     results/<UTC timestamp>/report.md, report.json and one SVG per plot,
//     then copies that directory to results/latest.
//
// Set a target with AtLeast/AtMost (on the ratio to the reference) or
// ValueAtLeast/ValueAtMost (on the absolute value, e.g. failover ≤ 2 s).
package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Environment variables of the protocol above.
const (
	// EnvOut names the directory fragments are written into.
	EnvOut = "P2PSIP_BENCH_OUT"
	// EnvMode is "full" for a real measurement; anything else is a smoke run.
	EnvMode = "P2PSIP_BENCH"
)

// Full reports whether this is a real benchmark run (P2PSIP_BENCH=full)
// rather than a smoke run.
func Full() bool { return os.Getenv(EnvMode) == "full" }

// Result is one figure of the report.
type Result struct {
	// Section groups rows in the report ("Call rate", "TURN relay", ...).
	Section string `json:"section"`
	// Name says what was measured ("overlay calls/s at 0 failures").
	Name string `json:"name"`
	// Unit of Value and Reference ("calls/s", "ms", "KiB").
	Unit  string  `json:"unit"`
	Value float64 `json:"value"`
	// Reference is the same measurement of RefName in the same run; 0 and
	// RefName "" when there is none.
	Reference float64 `json:"reference,omitempty"`
	RefName   string  `json:"ref_name,omitempty"`
	// Ratio is Value/Reference (0 without a reference).
	Ratio float64 `json:"ratio,omitempty"`
	// Target is the goal in words ("≥ 0.5 × Kamailio"), "" for none.
	Target string `json:"target,omitempty"`
	// Pass is whether Target is met; nil when there is no target or it
	// could not be judged (e.g. the reference is missing).
	Pass *bool `json:"pass,omitempty"`
	// Note explains the figure: the bottleneck when it falls short, how it
	// was measured, why a reference is missing.
	Note string `json:"note,omitempty"`
}

// Compare makes a Result with a reference and the ratio between them.
func Compare(section, name, unit string, value, reference float64, refName string) Result {
	r := Result{Section: section, Name: name, Unit: unit, Value: value, Reference: reference, RefName: refName}
	if reference != 0 {
		r.Ratio = value / reference
	}
	return r
}

// Value makes a Result without a reference.
func Value(section, name, unit string, value float64) Result {
	return Result{Section: section, Name: name, Unit: unit, Value: value}
}

// AtLeast sets the target Ratio ≥ min and judges it (not judged without a
// reference).
func (r Result) AtLeast(min float64) Result {
	r.Target = fmt.Sprintf("≥ %s × %s", num(min), refOr(r.RefName))
	if r.Reference != 0 {
		r.Pass = boolp(r.Ratio >= min)
	}
	return r
}

// AtMost sets the target Ratio ≤ max and judges it.
func (r Result) AtMost(max float64) Result {
	r.Target = fmt.Sprintf("≤ %s × %s", num(max), refOr(r.RefName))
	if r.Reference != 0 {
		r.Pass = boolp(r.Ratio <= max)
	}
	return r
}

// ValueAtLeast sets the target Value ≥ min (in Unit) and judges it.
func (r Result) ValueAtLeast(min float64) Result {
	r.Target = fmt.Sprintf("≥ %s %s", num(min), r.Unit)
	r.Pass = boolp(r.Value >= min)
	return r
}

// ValueAtMost sets the target Value ≤ max (in Unit) and judges it.
func (r Result) ValueAtMost(max float64) Result {
	r.Target = fmt.Sprintf("≤ %s %s", num(max), r.Unit)
	r.Pass = boolp(r.Value <= max)
	return r
}

// WithNote sets Note.
func (r Result) WithNote(format string, args ...any) Result {
	r.Note = fmt.Sprintf(format, args...)
	return r
}

func refOr(name string) string {
	if name == "" {
		return "reference"
	}
	return name
}

func boolp(b bool) *bool { return &b }

// Series is one line of a plot: Points are (x, y) pairs.
type Series struct {
	// Plot is the plot this line belongs to, also its file name (letters,
	// digits and '-'): "call-latency" gives call-latency.svg.
	Plot   string `json:"plot"`
	Title  string `json:"title"`
	XLabel string `json:"x_label"`
	YLabel string `json:"y_label"`
	// Name labels the line in the legend.
	Name   string       `json:"name"`
	Points [][2]float64 `json:"points"`
}

// Fragment is what one benchmark contributes.
type Fragment struct {
	// Source names the benchmark ("calls", "turn"); it orders fragments
	// in the report together with the order of their sections.
	Source  string   `json:"source"`
	Results []Result `json:"results,omitempty"`
	Series  []Series `json:"series,omitempty"`
	// Lines are free text kept in the report under the source's name.
	Lines []string `json:"lines,omitempty"`
	// Duration is how long the benchmark took.
	Duration time.Duration `json:"duration_ns,omitempty"`
	// Mode is "full" or "smoke", set by WriteFragment from P2PSIP_BENCH.
	Mode string `json:"mode,omitempty"`
}

var plotName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// Validate checks what the report needs of a fragment.
func (f Fragment) Validate() error {
	var errs []error
	if f.Source == "" {
		errs = append(errs, errors.New("fragment without source"))
	}
	for i, r := range f.Results {
		if r.Name == "" || r.Section == "" {
			errs = append(errs, fmt.Errorf("result %d: name and section required", i))
		}
		if math.IsNaN(r.Value) || math.IsInf(r.Value, 0) || math.IsNaN(r.Ratio) || math.IsInf(r.Ratio, 0) {
			errs = append(errs, fmt.Errorf("result %q: not a finite number", r.Name))
		}
	}
	for _, s := range f.Series {
		if !plotName.MatchString(s.Plot) {
			errs = append(errs, fmt.Errorf("series %q: plot name %q: want [a-z0-9-]", s.Name, s.Plot))
		}
		for _, p := range s.Points {
			if math.IsNaN(p[0]) || math.IsNaN(p[1]) || math.IsInf(p[0], 0) || math.IsInf(p[1], 0) {
				errs = append(errs, fmt.Errorf("series %q: not a finite point", s.Name))
				break
			}
		}
	}
	return errors.Join(errs...)
}

// Emit writes f into the directory named by P2PSIP_BENCH_OUT; without it,
// it does nothing.
func Emit(f Fragment) error {
	dir := os.Getenv(EnvOut)
	if dir == "" {
		return nil
	}
	return WriteFragment(dir, f)
}

// WriteFragment writes f as DIR/<source>-<nanoseconds>.json.
func WriteFragment(dir string, f Fragment) error {
	if err := f.Validate(); err != nil {
		return fmt.Errorf("bench fragment: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bench fragment: %w", err)
	}
	f.Mode = "smoke"
	if Full() {
		f.Mode = "full"
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("bench fragment: %w", err)
	}
	name := fmt.Sprintf("%s-%d.json", strings.Map(safeRune, f.Source), time.Now().UnixNano())
	tmp := filepath.Join(dir, "."+name)
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("bench fragment: %w", err)
	}
	// Renamed into place, so an assembler never reads half a file.
	return os.Rename(tmp, filepath.Join(dir, name))
}

func safeRune(r rune) rune {
	if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
		return r
	}
	return '_'
}

// ReadFragments reads every fragment in dir (files *.json), in name order.
func ReadFragments(dir string) ([]Fragment, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []Fragment
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		var f Fragment
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if err := f.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		out = append(out, f)
	}
	return out, nil
}

// num formats a figure with a sensible number of digits.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case a >= 1000:
		return addCommas(fmt.Sprintf("%.0f", v))
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return trimZeros(fmt.Sprintf("%.1f", v))
	case a >= 1:
		return trimZeros(fmt.Sprintf("%.2f", v))
	default:
		return trimZeros(fmt.Sprintf("%.3g", v))
	}
}

func trimZeros(s string) string {
	if strings.Contains(s, ".") && !strings.ContainsAny(s, "e") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

func addCommas(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
