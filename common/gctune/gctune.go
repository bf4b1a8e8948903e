// Package gctune sets the garbage collector's pace for p2psip's processes
// (issue 7): a floor under the heap size at which a collection starts.
package gctune

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// The least heap (live data and garbage) a process lets grow before it
// collects, by role. A super peer carrying calls allocates about 150 KB
// per call with a live heap of a few tens of MiB, so with Go's default
// (collect when the heap has doubled) it collects several times a second
// and the GC takes about a tenth of its CPU; letting the heap reach
// 256 MiB first takes that to a few per cent (issue 7's call benchmark:
// 8–12 % of the process's CPU in the GC at GOGC=100, 2.5–4.5 % at 300).
// A server has the memory to spare. An agent runs on an endpoint and
// carries one user's calls: its floor is small.
const (
	ServerHeap   = 256 << 20
	EndpointHeap = 32 << 20
)

// Tune makes the heap grow to the larger of twice its live size (Go's
// default, GOGC=100) and minHeap before a collection, unless GOGC is set:
// an operator's GOGC wins, and GOMEMLIMIT, which Go applies itself, still
// caps the total. A heap whose live part is half of minHeap or more is
// paced as Go's default would (a super peer holding 100,000 attached
// agents), so the floor costs at most minHeap of memory.
//
// The benchmarks call it too, so that the overlay they run in their own
// process collects as the binary does. Calls after the first do nothing.
func Tune(minHeap uint64) { once.Do(func() { tune(minHeap) }) }

var once sync.Once

func tune(minHeap uint64) {
	if _, set := os.LookupEnv("GOGC"); set {
		return
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	cur := 100
	var onGC func(*gcSentinel)
	onGC = func(s *gcSentinel) {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			if p := percentFor(sample[0].Value.Uint64(), minHeap); p != cur {
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

// percentFor is the GOGC that lets a heap of live bytes grow to minHeap
// before the next collection: at least 100, rounded to tens so that small
// changes of the live heap do not reset it every cycle, at most 1000 (a
// near-empty heap).
func percentFor(live, minHeap uint64) int {
	if live == 0 {
		return 1000
	}
	if minHeap <= 2*live {
		return 100
	}
	p := (minHeap - live) * 100 / live
	if p >= 1000 {
		return 1000
	}
	return int(p+9) / 10 * 10
}
