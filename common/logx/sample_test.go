package logx

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestParseSample(t *testing.T) {
	for in, want := range map[string]Sample{
		DefaultSample:  {Burst: 100, Period: time.Second, Every: 100},
		"50/s":         {Burst: 50, Period: time.Second},
		"10/250ms,1/3": {Burst: 10, Period: 250 * time.Millisecond, Every: 3},
		"off":          {},
	} {
		got, err := ParseSample(in)
		if err != nil || got != want {
			t.Errorf("ParseSample(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if err == nil && in != "50/s" && got.String() != in {
			t.Errorf("Sample(%q).String() = %q", in, got.String())
		}
	}
	for _, bad := range []string{"", "100", "0/1s", "x/1s", "10/0s", "10/-1s", "10/1s,2/3", "10/1s,1/0", "10/1s,1/x", "10/fast"} {
		if _, err := ParseSample(bad); err == nil {
			t.Errorf("ParseSample(%q): want an error", bad)
		}
	}
	if _, err := New(Options{Sample: "nope"}); err == nil || !strings.Contains(err.Error(), "log sample") {
		t.Errorf("New with a bad sample: %v", err)
	}
}

// TestSamplingBoundsFlood floods a debug logger with per-message lines
// (as a busy super peer's SIP router would) mixed with warnings: the
// debug lines written stay within the burst plus one in EVERY, every
// warning and info line is written, and a line says how many were dropped.
func TestSamplingBoundsFlood(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(Options{Level: "debug", Out: &buf, Sample: "100/1h,1/100"})
	if err != nil {
		t.Fatal(err)
	}
	sip := Component(log, "siproute") // children share the parent's budget
	const flood, warns = 100_000, 500
	start := time.Now()
	for i := range flood {
		sip.Debug().Str("call_id", "c").Int("i", i).Msg("request routed")
		if i%(flood/warns) == 0 {
			sip.Warn().Int("i", i).Msg("something to look at")
		}
	}
	took := time.Since(start)
	out := buf.String()
	debug := strings.Count(out, `"message":"request routed"`)
	if max := 100 + (flood-100)/100 + 1; debug > max || debug < 100 {
		t.Errorf("%d debug lines written of %d, want 100..%d", debug, flood, max)
	}
	if got := strings.Count(out, `"message":"something to look at"`); got != warns {
		t.Errorf("%d warnings written, want all %d", got, warns)
	}
	t.Logf("%d of %d debug lines written in %s", debug, flood, took)

	// Off keeps everything; a period reports what it dropped.
	buf.Reset()
	log, _ = New(Options{Level: "trace", Out: &buf, Sample: "off"})
	for range 1000 {
		log.Trace().Msg("x")
	}
	if got := strings.Count(buf.String(), `"message":"x"`); got != 1000 {
		t.Errorf("sampling off: %d of 1000 lines", got)
	}
	buf.Reset()
	log, _ = New(Options{Level: "debug", Out: &buf, Sample: "5/20ms"})
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), "log sampling") && time.Now().Before(deadline) {
		log.Debug().Msg("y")
		time.Sleep(time.Millisecond)
	}
	if !strings.Contains(buf.String(), `"dropped":`) {
		t.Errorf("no report of dropped lines:\n%.2000s", buf.String())
	}
}
