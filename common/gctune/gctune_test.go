package gctune

import (
	"os"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestGCPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 1000},
		{1 * mib, 1000},  // 6400 %, capped
		{8 * mib, 800},   // exactly 64 MiB of headroom
		{20 * mib, 320},  // rounded up to tens
		{64 * mib, 100},  // the default gives as much
		{500 * mib, 100}, // a large live heap keeps Go's default
		{30 * mib, 220},  // 213 → 220
		{7 * mib, 920},   // 914 → 920
		{6500 * 1024, 1000},
	} {
		if got := percentFor(c.live, Headroom); got != c.want {
			t.Errorf("percentFor(%d MiB) = %d, want %d", c.live/mib, got, c.want)
		}
	}
}

// The tuner raises GOGC for a small heap once a collection has run. (It
// stays installed for the rest of this test binary, which only changes
// how often the other tests collect.)
func TestTune(t *testing.T) {
	if _, set := os.LookupEnv("GOGC"); set {
		t.Skip("GOGC is set in the environment")
	}
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	Tune()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		// SetGCPercent returns the previous value; put it back at once.
		p := debug.SetGCPercent(-1)
		debug.SetGCPercent(p)
		if p > 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GOGC still %d after collections with a small heap", p)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
