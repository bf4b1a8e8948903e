package overlay

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/client"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/superpeer"
)

// BenchmarkStore measures quorum writes and fetches through the peer
// protocol on a 3-super-peer loopback overlay (replicas 3, quorum 2),
// beside the same operations against one unreplicated super peer in the
// same run: the reference that shows what replication costs.
func BenchmarkStore(b *testing.B) {
	for _, c := range []struct {
		name     string
		sps      int
		replicas int
	}{{"single-unreplicated", 1, 1}, {"replicated-3of3", 3, 3}} {
		b.Run(c.name, func(b *testing.B) {
			o := harness.New(b)
			o.Log = o.Log.Level(zerolog.WarnLevel) // logging is not what we measure
			o.Tune = func(cfg *superpeer.Config) { cfg.Replicas = c.replicas }
			for range c.sps {
				o.Start()
			}
			o.WaitConverged(10 * time.Second)
			// One session per worker, spread over the super peers.
			const workers = 16
			sessions := make([]*client.Session, workers)
			for i := range sessions {
				sessions[i] = o.Client(o.Alive()[i%c.sps], fmt.Sprintf("u%d", i))
			}
			b.Run("put", func(b *testing.B) {
				runOps(b, workers, func(w, i int) error {
					rec := locationRecord(w, time.Now().Add(time.Hour))
					rec.Entries[0].CSeq = uint32(i + 1)
					_, err := sessions[w].Put(context.Background(), rec)
					return err
				})
			})
			b.Run("get", func(b *testing.B) {
				runOps(b, workers, func(w, i int) error {
					_, err := sessions[w].Get(context.Background(), record.KindLocation, fmt.Sprintf("sip:u%d@example.net", (w+i)%workers))
					return err
				})
			})
		})
	}
}

// runOps spreads b.N operations over workers and reports ops/s and the
// latency percentiles.
func runOps(b *testing.B, workers int, op func(worker, i int) error) {
	var next atomic.Int64
	lat := make([][]time.Duration, workers)
	var wg sync.WaitGroup
	var failed atomic.Int64
	b.ResetTimer()
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				t0 := time.Now()
				if err := op(w, i); err != nil {
					failed.Add(1)
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
}
