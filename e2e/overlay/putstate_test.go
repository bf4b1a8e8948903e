package overlay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/e2e/harness"
)

// TestPutStateSeesOtherWriters: a write asked to echo (StoreReq.Echo, what
// registrars use to answer REGISTER without a second quorum read) returns
// the record as the write quorum holds it: the entries other writers
// stored through other super peers before it, and its own; a write that
// removes the last live entry returns no record.
func TestPutStateSeesOtherWriters(t *testing.T) {
	o := harness.New(t)
	sps := []*harness.SP{o.Start(), o.Start(), o.Start()}
	o.WaitConverged(15 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	rec := func(host string, expires time.Time) *record.Record {
		uri := "sip:dana@" + host + ":5060"
		return &record.Record{Kind: record.KindLocation, Name: "sip:dana@" + o.Name, Entries: []record.Entry{{
			Key: uri, CallID: "c-" + host, CSeq: 1, Expires: expires.Unix(),
			Contact: &record.Contact{URI: uri, Q: 1000},
		}}}
	}
	exp := time.Now().Add(time.Hour)
	// Two devices registered through two other super peers.
	for i, host := range []string{"192.0.2.1", "192.0.2.2"} {
		if _, err := o.Client(sps[i+1], "dana").Put(ctx, rec(host, exp)); err != nil {
			t.Fatalf("put via sp%d: %v", i+1, err)
		}
	}
	resp, err := o.Client(sps[0], "dana").PutState(ctx, rec("192.0.2.3", exp))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Record == nil {
		t.Fatal("no state echoed")
	}
	var uris []string
	for _, e := range resp.Record.Entries {
		uris = append(uris, e.Contact.URI)
	}
	if len(uris) != 3 {
		t.Fatalf("echoed state has %d contacts, want 3: %v", len(uris), uris)
	}
	for _, h := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"} {
		if !strings.Contains(strings.Join(uris, " "), h) {
			t.Errorf("echoed state lacks %s: %v", h, uris)
		}
	}
	// Tombstones for the three leave nothing live to echo.
	for _, h := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"} {
		r := rec(h, exp)
		r.Entries[0].CSeq = 2
		r.Entries[0].Removed = true
		resp, err = o.Client(sps[0], "dana").PutState(ctx, r)
		if err != nil {
			t.Fatalf("remove %s: %v", h, err)
		}
	}
	if resp.Record != nil {
		t.Errorf("state after removing every contact: %+v", resp.Record.Entries)
	}
}
