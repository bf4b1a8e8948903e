package logx

import (
	"bytes"
	"encoding/json"
	"log"
	"log/slog"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/rs/zerolog"
)

// Lines logged through slog.Default (sipgo's package-level logger) and the
// standard log package come out as the process's JSON lines, at their
// level, not as bare text on stderr.
func TestSetDefault(t *testing.T) {
	prev := slog.Default()
	t.Cleanup(func() { slog.SetDefault(prev) })
	var buf bytes.Buffer
	l, err := New(Options{Format: "json", Level: "info", Out: &buf, Sample: "off"})
	if err != nil {
		t.Fatal(err)
	}
	SetDefault(l)
	sip.DefaultLogger().Warn("TCP ref went negative", "ref", -1)
	sip.DefaultLogger().Debug("below the level")
	log.Print("from the log package")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %d:\n%s", len(lines), buf.String())
	}
	for i, want := range []struct{ level, msg string }{{"warn", "TCP ref went negative"}, {"info", "from the log package"}} {
		var m map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &m); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", i, err, lines[i])
		}
		if m["level"] != want.level || m["message"] != want.msg || m["lib"] != "default" {
			t.Errorf("line %d: %v, want level %s, message %q, lib default", i, m, want.level, want.msg)
		}
	}
}

// A library that logs what strangers send (sipgo: each malformed datagram
// at error, with its bytes) writes few and short lines through Slog and
// Throttle, whatever the flood.
func TestLibraryLinesClippedAndSampled(t *testing.T) {
	var buf bytes.Buffer
	l := Slog(Throttle(zerolog.New(&buf))).With("conn", strings.Repeat("c", 2000))
	junk := strings.Repeat("x", 10000)
	for range 5000 {
		l.Error("failed to parse", "data", junk, "caller", "Transport<UDP>")
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) < 20 || len(lines) > 30 {
		t.Errorf("%d lines for 5000 in a burst, want the 20 of the burst and about 1 in 1000 after", len(lines))
	}
	for _, line := range lines {
		if len(line) > 2*MaxAttrLen+200 {
			t.Fatalf("line of %d bytes: %.200s...", len(line), line)
		}
		if !strings.Contains(line, "(10000 bytes)") || !strings.Contains(line, "(2000 bytes)") || !strings.Contains(line, `"caller":"Transport<UDP>"`) {
			t.Fatalf("line lost what it says: %.300s", line)
		}
	}
}
