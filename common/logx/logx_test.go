package logx

import (
	"bytes"
	"encoding/json"
	"log"
	"log/slog"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
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
