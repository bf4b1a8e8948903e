package report

import (
	"encoding/xml"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAssemble(t *testing.T) {
	in, out := t.TempDir(), t.TempDir()
	frags := []Fragment{
		{Source: "turn", Results: []Result{Compare("TURN relay", "relayed pkts/s at 0 loss", "pkts/s", 90000, 100000, "coturn").AtLeast(1).WithNote("pion's per-allocation read loop")}},
		{Source: "calls", Results: []Result{
			Compare("Call rate", "overlay calls/s", "calls/s", 1600, 3200, "Kamailio").AtLeast(0.5),
			Value("Call rate", "direct calls/s", "calls/s", 19200),
			Value("Failover", "max", "s", 1.5).ValueAtMost(2),
		}, Series: []Series{
			{Plot: "call-latency", Title: "INVITE→200 <p99>", XLabel: "calls/s", YLabel: "ms", Name: "overlay p99", Points: [][2]float64{{200, 1}, {400, 1.5}, {800, 3}}},
			{Plot: "call-latency", Name: "kamailio p99", Points: [][2]float64{{200, 0.5}, {400, 0.7}}},
		}, Lines: []string{"step 200: ok"}, Duration: 3 * time.Second},
	}
	for _, f := range frags {
		if err := WriteFragment(in, f); err != nil {
			t.Fatal(err)
		}
	}
	gb := filepath.Join(in, "gobench.out")
	if err := os.WriteFile(gb, []byte("BenchmarkX 1 2 ns/op\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir, err := Assemble(Options{In: in, Out: out, GoBench: gb})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Join(out, "latest")} {
		rep, err := Load(filepath.Join(d, "report.json"))
		if err != nil {
			t.Fatal(err)
		}
		if rep.Fragments[0].Source != "calls" || len(rep.Results()) != 4 || rep.Machine.Cores < 1 || rep.Machine.Mode != "smoke" {
			t.Fatalf("report: %+v", rep)
		}
		md, err := os.ReadFile(filepath.Join(d, "report.md"))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"| Call rate | overlay calls/s | 1,600 calls/s | 3,200 calls/s (Kamailio) | 0.5 | ≥ 0.5 × Kamailio | ✅ pass |",
			"❌ **fail**", "pion's per-allocation read loop", "![call-latency](call-latency.svg)", "step 200: ok", "≤ 2 s", "gobench.txt"} {
			if !strings.Contains(string(md), want) {
				t.Errorf("report.md lacks %q:\n%s", want, md)
			}
		}
		checkSVG(t, filepath.Join(d, "call-latency.svg"))
	}
}

// checkSVG parses the file as XML.
func checkSVG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := xml.NewDecoder(f)
	n := 0
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		n++
	}
	if n < 10 {
		t.Fatalf("%s: %d tokens", path, n)
	}
}

func TestFragmentValidate(t *testing.T) {
	for name, f := range map[string]Fragment{
		"no source":  {Results: []Result{Value("s", "n", "u", 1)}},
		"no name":    {Source: "x", Results: []Result{Value("s", "", "u", 1)}},
		"bad plot":   {Source: "x", Series: []Series{{Plot: "A b"}}},
		"NaN value":  {Source: "x", Results: []Result{Compare("s", "n", "u", 1, 0, "r").AtLeast(1), Value("s", "n", "u", nan())}},
		"inf ratio":  {Source: "x", Results: []Result{{Section: "s", Name: "n", Ratio: inf()}}},
		"NaN points": {Source: "x", Series: []Series{{Plot: "p", Points: [][2]float64{{nan(), 1}}}}},
	} {
		if err := f.Validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
		if err := WriteFragment(t.TempDir(), f); err == nil {
			t.Errorf("%s: written", name)
		}
	}
	if _, err := Assemble(Options{In: t.TempDir(), Out: t.TempDir()}); err == nil {
		t.Error("assembled a report from no fragments")
	}
}

func TestNum(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 19200: "19,200", 1234567: "1,234,567", 512: "512", 12.5: "12.5", 1.25: "1.25", 0.5: "0.5", 0.0123: "0.0123", -4500: "-4,500"} {
		if got := num(v); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
}

func nan() float64 { var z float64; return z / z }
func inf() float64 { var z float64; return 1 / z }
