package store

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWorkers: every job runs, concurrent jobs do not wait for each
// other, idle workers are reused, and all of them end with the context.
func TestWorkers(t *testing.T) {
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	w := newWorkers(ctx)
	// Concurrent: 8 jobs that only finish together.
	var wg sync.WaitGroup
	var ran atomic.Int32
	release := make(chan struct{})
	for range 8 {
		wg.Add(1)
		w.run(func() {
			defer wg.Done()
			ran.Add(1)
			<-release
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for ran.Load() < 8 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 8 concurrent jobs started", ran.Load())
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	// Reused: sequential jobs start no more goroutines.
	deadline = time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		done := make(chan struct{})
		w.run(func() { close(done) })
		<-done
		if runtime.NumGoroutine() <= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an idle worker was not reused")
		}
	}
	cancel()
	deadline = time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after the context ended, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
}
