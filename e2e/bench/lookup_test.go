package bench

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
	"github.com/p2psip/p2psip/e2e/bench/report"
	"github.com/p2psip/p2psip/e2e/harness"
)

const secLookup = "Lookup"

// benchLookup is issue 7 item 3: the latency of fetching a location record
// from a super peer that is not one of its replicas (so the fetch crosses
// the overlay), under a background load of registrations and fetches,
// beside the same fetch from a replica (answered from its own store) in
// the same run. Four super peers, replicas 3: every record has exactly one
// super peer that does not hold it.
func benchLookup(t *testing.T, p benchParams, sink *fragments) {
	start := time.Now()
	log := &lines{t: t}
	o := harness.New(t)
	o.Log = o.Log.Level(zerolog.WarnLevel)
	sps := []*harness.SP{o.Start(), o.Start(), o.Start(), o.Start()}
	o.WaitConverged(15 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), p.lookupDuration+2*time.Minute)
	defer cancel()

	// The records, and for each the super peer that is not a replica and
	// one that is.
	type target struct {
		aor             string
		outside, inside int // indexes into sps
	}
	var targets []target
	for i := range p.lookupRecords {
		user := fmt.Sprintf("lk%d", i)
		rec := locationRecord(user, 1)
		s := o.Client(sps[i%len(sps)], user)
		if _, err := s.Put(ctx, rec); err != nil {
			t.Fatalf("put %s: %v", rec.Name, err)
		}
		reps := sps[0].Node.Store().Replicas(rec.ResourceID())
		tg := target{aor: rec.Name, outside: -1, inside: -1}
		for j, sp := range sps {
			if slices.Contains(reps, sp.Node.ID()) {
				if tg.inside < 0 {
					tg.inside = j
				}
			} else {
				tg.outside = j
			}
		}
		if tg.outside < 0 || tg.inside < 0 {
			t.Fatalf("%s: replicas %v of %d super peers: want exactly one outside", rec.Name, reps, len(sps))
		}
		targets = append(targets, tg)
	}

	// Background load: loaders re-register their own AoR and fetch a
	// random target, paced to lookupLoadRate operations/s in all, spread
	// over the super peers.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var loadOps, loadErrs atomic.Int64
	for w := range p.lookupLoaders {
		user := fmt.Sprintf("bg%d", w)
		s := o.Client(sps[w%len(sps)], user)
		wg.Add(1)
		go func() {
			defer wg.Done()
			every := time.Duration(float64(time.Second) * float64(p.lookupLoaders) / float64(p.lookupLoadRate))
			tick := time.NewTicker(every)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				var err error
				if i%2 == 0 {
					_, err = s.Put(ctx, locationRecord(user, uint32(i+1)))
				} else {
					_, err = s.Get(ctx, record.KindLocation, targets[(w+i)%len(targets)].aor)
				}
				loadOps.Add(1)
				if err != nil {
					loadErrs.Add(1)
				}
			}
		}()
	}

	// Measurers: closed loops fetching targets, from outside and from
	// inside the replica set at the same time, and routing reads (what a
	// call's lookup makes: one replica's copy) from outside.
	type kind int
	const (
		fromOutside kind = iota
		fromInside
		routingOutside
	)
	measure := func(k kind, w int) ([]time.Duration, error) {
		inside := k == fromInside
		sessions := make([]*client.Session, len(sps))
		for j := range sps {
			sessions[j] = o.Client(sps[j], fmt.Sprintf("m%d-%d", k, w))
		}
		var lat []time.Duration
		deadline := time.Now().Add(p.lookupDuration)
		for i := w; time.Now().Before(deadline); i++ {
			tg := targets[i%len(targets)]
			s := sessions[tg.outside]
			if inside {
				s = sessions[tg.inside]
			}
			get := s.Get
			if k == routingOutside {
				get = s.GetOne
			}
			t0 := time.Now()
			rec, err := get(ctx, record.KindLocation, tg.aor)
			if err != nil {
				return lat, fmt.Errorf("get %s: %w", tg.aor, err)
			}
			lat = append(lat, time.Since(t0))
			if len(rec.Entries) == 0 {
				return lat, fmt.Errorf("get %s: no entry", tg.aor)
			}
		}
		return lat, nil
	}
	var mu sync.Mutex
	lats := make([][]time.Duration, 3)
	var errs []error
	var mwg sync.WaitGroup
	loadStart := time.Now()
	for w := range p.lookupMeasurers {
		for _, k := range []kind{fromOutside, fromInside, routingOutside} {
			mwg.Add(1)
			go func() {
				defer mwg.Done()
				lat, err := measure(k, w)
				mu.Lock()
				defer mu.Unlock()
				lats[k] = append(lats[k], lat...)
				if err != nil {
					errs = append(errs, err)
				}
			}()
		}
	}
	mwg.Wait()
	close(stop)
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	outside, inside, routing := lats[fromOutside], lats[fromInside], lats[routingOutside]
	if len(outside) == 0 || len(inside) == 0 || len(routing) == 0 {
		t.Fatal("no fetch measured")
	}
	slices.Sort(outside)
	slices.Sort(inside)
	slices.Sort(routing)
	pct := func(l []time.Duration, p int) time.Duration { return l[min(len(l)*p/100, len(l)-1)] }
	loadRate := float64(loadOps.Load()) / time.Since(loadStart).Seconds()
	log.logf("background load %.0f ops/s (half quorum writes, half fetches), %d errors", loadRate, loadErrs.Load())
	log.logf("from a non-replica: %d fetches, p50 %v p99 %v", len(outside), pct(outside, 50), pct(outside, 99))
	log.logf("from a replica:     %d fetches, p50 %v p99 %v", len(inside), pct(inside, 50), pct(inside, 99))
	log.logf("routing reads from a non-replica: %d, p50 %v p99 %v", len(routing), pct(routing, 50), pct(routing, 99))
	if n := loadErrs.Load(); n > 0 {
		t.Errorf("background load: %d errors", n)
	}
	how := fmt.Sprintf("4 super peers, replicas 3; %d closed-loop fetchers of each kind while %d clients add %.0f ops/s (quorum writes and fetches); %d, %d and %d fetches. A fetch is a quorum read (every replica asked, the answer after a quorum); the routing read is what a call's lookup makes (one replica's copy, a quorum read only when it has nothing live).",
		p.lookupMeasurers, p.lookupLoaders, loadRate, len(outside), len(inside), len(routing))
	ref := "fetch from a replica"
	rs := []report.Result{
		report.Compare(secLookup, "fetch p50 from a non-replica, under load", "ms", ms(pct(outside, 50)), ms(pct(inside, 50)), ref).WithNote("%s", how),
		report.Compare(secLookup, "fetch p99 from a non-replica, under load", "ms", ms(pct(outside, 99)), ms(pct(inside, 99)), ref),
		report.Compare(secLookup, "routing read p50 from a non-replica, under load", "ms", ms(pct(routing, 50)), ms(pct(outside, 50)), "fetch from a non-replica"),
		report.Compare(secLookup, "routing read p99 from a non-replica, under load", "ms", ms(pct(routing, 99)), ms(pct(outside, 99)), "fetch from a non-replica"),
	}
	sink.emit(t, report.Fragment{Source: "lookup", Results: rs, Lines: log.all(), Duration: time.Since(start)})
}

// locationRecord is user's location record at example.net with one
// contact, CSeq cseq, an hour to live.
func locationRecord(user string, cseq uint32) *record.Record {
	aor := "sip:" + user + "@example.net"
	uri := "sip:" + user + "@192.0.2.10:5060;transport=udp"
	return &record.Record{Kind: record.KindLocation, Name: aor, Entries: []record.Entry{{
		Key: uri, CallID: "call-" + user, CSeq: cseq, Expires: time.Now().Add(time.Hour).Unix(),
		Contact: &record.Contact{URI: uri, Q: 1000},
	}}}
}
