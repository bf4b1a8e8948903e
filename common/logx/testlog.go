package logx

import (
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
)

// ForTest is a logger writing to t.Log until the test's cleanup, then
// dropping lines: library goroutines (pion, vnet, memberlist) may log after
// the test returned, and t.Log would then panic.
func ForTest(t testing.TB, lvl zerolog.Level) zerolog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}

type testWriter struct {
	mu   sync.Mutex // guards done and serializes t.Log
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
