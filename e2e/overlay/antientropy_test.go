package overlay

import (
	"fmt"
	"testing"
	"time"

	"github.com/p2psip/p2psip/e2e/harness"
)

// A replica that lost records (a missed message) gets them back from
// anti-entropy, without any read touching them.
func TestAntiEntropyRepairsAReplica(t *testing.T) {
	o := harness.New(t)
	for range 3 {
		o.Start()
	}
	o.WaitConverged(10 * time.Second)
	sps := o.Alive()
	const n = 200
	putRecords(t, o, sps[:1], n, time.Now().Add(time.Hour))
	victim := sps[2]
	for i := range n {
		victim.Node.Store().DropForTest(locationRecord(i, time.Time{}).ResourceID())
	}
	if victim.Node.Store().Held()["location"] != 0 {
		t.Fatal("drop failed")
	}
	// The pushing side counts its repairs once the victim has answered,
	// so both conditions are awaited together.
	harness.Eventually(t, 15*time.Second, func() error {
		if got := victim.Node.Store().Held()["location"]; got != n {
			return fmt.Errorf("victim holds %d of %d records", got, n)
		}
		repaired := 0.0
		for _, sp := range sps {
			repaired += counter(t, sp, "p2psip_store_repairs_total", "anti_entropy")
		}
		if repaired < n {
			return fmt.Errorf("%v repairs counted as anti-entropy, want %d", repaired, n)
		}
		return nil
	})
}
