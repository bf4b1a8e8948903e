// Package gctune sets the garbage collector's pace for p2psip's processes
// (issue 7): a floor under the heap's growth between collections.
package gctune

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Headroom is the least the heap may grow between two collections when
// GOGC is unset.
const Headroom = 64 << 20

// Tune lets the heap grow between collections by the larger of its live
// size (Go's default, GOGC=100) and Headroom, unless GOGC is set. The
// SIP path allocates about 150 KB per call across its nodes with a live
// heap of a few tens of MiB, so with the default a node carrying calls
// collects several times a second and the GC takes a fifth of its CPU
// (issue 7). The floor bounds the extra memory to 64 MiB, and a super peer
// whose live heap is large anyway (100,000 attached agents) keeps Go's
// default, so its memory per agent is unchanged. An operator's GOGC wins,
// and GOMEMLIMIT, which Go applies itself, still caps the total.
//
// The benchmarks call it too, so that the overlay they run in their own
// process collects as the binary does. Calls after the first do nothing.
func Tune() { once.Do(tune) }

var once sync.Once

func tune() {
	if _, set := os.LookupEnv("GOGC"); set {
		return
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	cur := 100
	var onGC func(*gcSentinel)
	onGC = func(s *gcSentinel) {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			if p := percentFor(sample[0].Value.Uint64(), Headroom); p != cur {
				debug.SetGCPercent(p)
				cur = p
			}
		}
		// Re-arming resurrects s until the next collection: one call per
		// GC cycle, on the finalizer goroutine, with no goroutine of ours.
		runtime.SetFinalizer(s, onGC)
	}
	runtime.SetFinalizer(&gcSentinel{p: new(int)}, onGC)
}

// gcSentinel is unreachable garbage whose finalizer runs once per GC
// cycle. The pointer keeps it out of the tiny allocator, whose objects'
// finalizers may never run.
type gcSentinel struct{ p *int }

// percentFor is the GOGC that gives a heap of live bytes headroom bytes
// to grow: at least 100, rounded to tens so that small changes of the live
// heap do not reset it every cycle, at most 1000 (a near-empty heap).
func percentFor(live, headroom uint64) int {
	if live == 0 {
		return 1000
	}
	p := headroom * 100 / live
	switch {
	case p <= 100:
		return 100
	case p >= 1000:
		return 1000
	}
	return int(p+9) / 10 * 10
}
