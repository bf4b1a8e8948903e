// Package wait is how tests wait for a condition: poll it until it holds,
// with a deadline, instead of sleeping for a guessed time.
package wait

import (
	"testing"
	"time"
)

// every is the polling interval: short against the conditions' deadlines,
// long enough not to load the host it polls.
const every = 5 * time.Millisecond

// For polls cond until it holds; if it still does not after within, it
// fails t, naming what it waited for.
func For(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(every)
	}
}
