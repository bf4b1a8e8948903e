package store

import (
	"context"
	"time"
)

// workerIdle is how long a replica-request goroutine waits for the next
// request before it ends.
const workerIdle = 5 * time.Second

// workers runs the replica requests of reads and writes on goroutines
// that outlive one request. A replica request goes deep (link, CBOR), and
// a fresh goroutine grew its stack several times on the way, copying it
// each time: about half the CPU of sending a write to a replica in the
// register benchmark's profile. The number of goroutines is not bounded
// (no more than one per request in flight, as with a go statement); idle
// ones end after workerIdle, and all of them once ctx ends.
type workers struct {
	ctx  context.Context
	jobs chan func() // unbuffered: a send succeeds only to an idle worker
}

func newWorkers(ctx context.Context) *workers {
	return &workers{ctx: ctx, jobs: make(chan func())}
}

// run runs f on an idle worker, or on a new one.
func (w *workers) run(f func()) {
	select {
	case w.jobs <- f:
	default:
		go w.loop(f)
	}
}

func (w *workers) loop(f func()) {
	f()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		select {
		case f := <-w.jobs:
			f()
			idle.Reset(workerIdle)
		case <-idle.C:
			return
		case <-w.ctx.Done():
			return
		}
	}
}
