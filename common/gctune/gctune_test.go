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
		live, min uint64
		want      int
	}{
		{0, ServerHeap, 1000},
		{1 * mib, ServerHeap, 1000},  // 25,500 %, capped
		{16 * mib, ServerHeap, 1000}, // 1,500 %, capped
		{32 * mib, ServerHeap, 700},  // 32 + 224 = 256 MiB
		{64 * mib, ServerHeap, 300},
		{100 * mib, ServerHeap, 160}, // 156 → 160
		{128 * mib, ServerHeap, 100}, // twice the live heap reaches the floor
		{500 * mib, ServerHeap, 100}, // a large live heap keeps Go's default
		{8 * mib, EndpointHeap, 300},
		{16 * mib, EndpointHeap, 100},
	} {
		if got := percentFor(c.live, c.min); got != c.want {
			t.Errorf("percentFor(%d MiB, %d MiB) = %d, want %d", c.live/mib, c.min/mib, got, c.want)
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
	Tune(ServerHeap)
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
