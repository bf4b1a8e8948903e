package overlay

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/superpeer/store"
)

// TestRoutingRead: GetOne (the routing read of every call's lookup)
// answers from this super peer's own copy when it is a replica, from one
// replica when it is not, and falls back to a quorum read when that copy
// has nothing live or the replica is gone — so a lost copy or a dead
// replica never turns into a 404.
func TestRoutingRead(t *testing.T) {
	o := harness.New(t)
	for range 5 {
		o.Start()
	}
	o.WaitConverged(10 * time.Second)
	sps := o.Alive()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	byID := map[ids.PeerID]*harness.SP{}
	var members []ids.PeerID
	for _, sp := range sps {
		byID[sp.Node.ID()] = sp
		members = append(members, sp.Node.ID())
	}
	const n = 40
	expires := time.Now().Add(time.Hour)
	putRecords(t, o, sps, n, expires)

	check := func(sp *harness.SP, i int, what string) {
		t.Helper()
		want := locationRecord(i, expires)
		got, err := sp.Node.Store().GetOne(ctx, record.KindLocation, want.Name)
		if err != nil {
			t.Fatalf("%s: GetOne %s via %s: %v", what, want.Name, sp.Node.ID().Short(), err)
		}
		if len(got.Entries) != 1 || got.Entries[0].Contact.URI != want.Entries[0].Contact.URI {
			t.Fatalf("%s: GetOne %s via %s: entries %+v", what, want.Name, sp.Node.ID().Short(), got.Entries)
		}
	}
	for i := range n {
		rid := locationRecord(i, expires).ResourceID()
		replicas := store.Place(rid, members, 3)
		for _, sp := range sps {
			what := "non-replica"
			if slices.Contains(replicas, sp.Node.ID()) {
				what = "replica"
			}
			check(sp, i, what)
		}
	}
	if _, err := sps[0].Node.Store().GetOne(ctx, record.KindLocation, "sip:nobody@example.net"); err == nil {
		t.Fatal("GetOne of a record nobody wrote succeeded")
	}

	// A replica that lost its copy answers through the quorum read.
	rid := locationRecord(0, expires).ResourceID()
	replicas := store.Place(rid, members, 3)
	lost := byID[replicas[1]]
	lost.Node.Store().DropForTest(rid)
	check(lost, 0, "replica without its copy")

	// A non-replica whose replica to ask is dead (not yet noticed by the
	// mesh) answers through the quorum read of the others.
	var reader *harness.SP
	for _, sp := range sps {
		if !slices.Contains(replicas, sp.Node.ID()) {
			reader = sp
			break
		}
	}
	o.Kill(byID[replicas[0]])
	check(reader, 0, "non-replica, first replica killed")
}
