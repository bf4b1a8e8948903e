package overlay

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/superpeer/store"
)

func locationRecord(i int, expires time.Time) *record.Record {
	aor := fmt.Sprintf("sip:u%d@example.net", i)
	uri := fmt.Sprintf("sip:u%d@192.0.2.%d:5060;transport=udp", i, i%250+1)
	return &record.Record{Kind: record.KindLocation, Name: aor, Entries: []record.Entry{{
		Key: uri, CallID: fmt.Sprintf("call-%d", i), CSeq: 1, Expires: expires.Unix(),
		Contact: &record.Contact{URI: uri, Q: 1000},
	}}}
}

// waitReplicated waits until every record is held by each member of its
// replica set under the current view.
func waitReplicated(t *testing.T, o *harness.Overlay, n int, timeout time.Duration) {
	t.Helper()
	harness.Eventually(t, timeout, func() error {
		alive := o.Alive()
		byID := map[ids.PeerID]*harness.SP{}
		var members []ids.PeerID
		for _, sp := range alive {
			byID[sp.Node.ID()] = sp
			members = append(members, sp.Node.ID())
		}
		missing := 0
		for i := range n {
			rid := locationRecord(i, time.Time{}).ResourceID()
			for _, p := range store.Place(rid, members, 3) {
				if !byID[p].Node.Store().HoldsForTest(rid) {
					missing++
				}
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d replica copies missing", missing)
		}
		return nil
	})
}

// putRecords stores records 0..n-1 (expiring at expires), record i
// through via[i%len(via)], and waits until every replica holds its copy.
func putRecords(t *testing.T, o *harness.Overlay, via []*harness.SP, n int, expires time.Time) {
	t.Helper()
	for i := range n {
		if _, err := via[i%len(via)].Node.Store().Put(context.Background(), store.Writer{User: userOf(i)}, locationRecord(i, expires)); err != nil {
			t.Fatal(err)
		}
	}
	waitReplicated(t, o, n, 20*time.Second)
}

func fetchAll(t *testing.T, o *harness.Overlay, n int, via []*harness.SP) {
	t.Helper()
	ctx := context.Background()
	var failed atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				want := locationRecord(i, time.Time{})
				sp := via[i%len(via)]
				got, err := sp.Node.Store().Get(ctx, record.KindLocation, want.Name)
				if err == nil && (len(got.Entries) != 1 || got.Entries[0].Contact.URI != want.Entries[0].Contact.URI) {
					err = fmt.Errorf("contacts changed: %+v", got.Entries)
				}
				if err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, fmt.Sprintf("%s via %s: %v", want.Name, sp.Node.ID().Short(), err))
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d of %d records not fetchable; first: %v", failed.Load(), n, first.Load())
	}
}

// The acceptance scenario: 5 super peers, 10,000 records stored
// through different super peers, two crashes with re-replication in
// between, then a sixth super peer that takes its share.
func TestStoreSurvivesCrashesAndRebalances(t *testing.T) {
	const n = 10000
	o := harness.New(t)
	for range 5 {
		o.Start()
	}
	o.WaitConverged(10 * time.Second)
	sps := o.Alive()
	ctx := context.Background()
	expires := time.Now().Add(time.Hour)
	var wg sync.WaitGroup
	var failed atomic.Int64
	next := atomic.Int64{}
	start := time.Now()
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				rec := locationRecord(i, expires)
				sp := sps[i%len(sps)]
				res, err := sp.Node.Store().Put(ctx, store.Writer{User: userOf(i)}, rec)
				if err != nil || res.Acks < 2 {
					failed.Add(1)
					t.Errorf("put %s via %s: %v (acks %d)", rec.Name, sp.Node.ID().Short(), err, res.Acks)
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.FailNow()
	}
	t.Logf("stored %d records in %s", n, time.Since(start))
	waitReplicated(t, o, n, 20*time.Second)

	for k := range 2 {
		victim := o.Alive()[k]
		t.Logf("killing %s", victim.Node.ID().Short())
		killed := time.Now()
		o.Kill(victim)
		o.WaitConverged(15 * time.Second)
		waitReplicated(t, o, n, 30*time.Second)
		t.Logf("re-replicated after crash %d in %s", k+1, time.Since(killed))
		fetchAll(t, o, n, o.Alive())
	}

	sixth := o.Start()
	o.WaitConverged(10 * time.Second)
	waitReplicated(t, o, n, 30*time.Second)
	held := sixth.Node.Store().Held()["location"]
	if held < n/4 {
		t.Fatalf("new super peer holds %d records, want its share (about %d)", held, n*3/4)
	}
	t.Logf("sixth super peer holds %d records", held)
	fetchAll(t, o, n, []*harness.SP{sixth})
}

func userOf(i int) string { return fmt.Sprintf("u%d", i) }
