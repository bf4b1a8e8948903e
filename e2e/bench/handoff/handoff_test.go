// Package handoff measures how fast records stream to a super peer that
// joins a loaded overlay (issue 7, item 6).
package handoff

import (
	"fmt"
	"os"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/e2e/bench/report"
	"github.com/p2psip/p2psip/e2e/bench/spproc"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/superpeer"
)

// record i: a registration of user h<i> as a phone would make it.
func locationRecord(i int, expires time.Time) record.Record {
	user := fmt.Sprintf("h%d", i)
	uri := fmt.Sprintf("sip:%s@192.0.2.%d:5060;transport=udp", user, i%250+1)
	return record.Record{Kind: record.KindLocation, Name: "sip:" + user + "@example.net", Entries: []record.Entry{{
		Key: uri, CallID: fmt.Sprintf("call-%d", i), CSeq: 1, Version: uint64(expires.UnixNano()), Expires: expires.Unix(),
		Writer: user, Contact: &record.Contact{URI: uri, Q: 1000},
	}}}
}

// TestBenchHandoff loads two super peers (replicas 3, so both hold every
// record) and starts a third: it is a replica of every record, so all of
// them are handed to it. Measured: join to the last record held, and the
// records/s of the stream. Smoke: 3,000 records; full (P2PSIP_BENCH=full):
// 100,000. Anti-entropy is off so only the hand-off counts.
// P2PSIP_HANDOFF_CPUPROFILE=FILE writes a CPU profile of the hand-off.
func TestBenchHandoff(t *testing.T) {
	start := time.Now()
	n := 3000
	if report.Full() {
		n = 100000
	}
	o := harness.New(t)
	o.Log = o.Log.Level(zerolog.WarnLevel)
	o.Tune = func(cfg *superpeer.Config) {
		cfg.Replicas = 3
		cfg.AntiEntropyInterval = time.Hour
	}
	a, b := o.Start(), o.Start()
	o.WaitConverged(10 * time.Second)

	// Load both holders directly, as replicas receiving a hand-off would:
	// what is measured is the stream to the newcomer, not client writes.
	expires := time.Now().Add(time.Hour)
	const batch = 512
	for lo := 0; lo < n; lo += batch {
		req := &wire.ReplicateReq{}
		for i := lo; i < min(lo+batch, n); i++ {
			req.Records = append(req.Records, locationRecord(i, expires))
		}
		for _, sp := range []*harness.SP{a, b} {
			resp, err := sp.Node.Store().HandleReplicate(ids.PeerID{}, req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Applied != len(req.Records) {
				t.Fatalf("loaded %d of %d records", resp.Applied, len(req.Records))
			}
		}
	}
	for _, sp := range []*harness.SP{a, b} {
		if got := sp.Node.Store().Held()["location"]; got != int64(n) {
			t.Fatalf("a holder has %d records, want %d", got, n)
		}
	}
	if path := os.Getenv("P2PSIP_HANDOFF_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}

	cpu0, err := spproc.CPU(0)
	if err != nil {
		t.Fatal(err)
	}
	joined := time.Now()
	c := o.Start()
	ready := time.Since(joined)
	var first time.Duration
	deadline := time.Now().Add(2 * time.Minute)
	for {
		held := c.Node.Store().Held()["location"]
		if held > 0 && first == 0 {
			first = time.Since(joined)
		}
		if held >= int64(n) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("newcomer holds %d of %d records after %v", held, n, time.Since(joined))
		}
		time.Sleep(2 * time.Millisecond)
	}
	all := time.Since(joined)
	cpu1, err := spproc.CPU(0)
	if err != nil {
		t.Fatal(err)
	}
	cpu := cpu1 - cpu0
	stream := all - first
	rate := float64(n) / all.Seconds()
	t.Logf("%d records: newcomer ready after %v, first record at %v, all at %v (%.0f records/s from the join, %.0f/s while streaming); %v CPU",
		n, ready.Round(time.Millisecond), first.Round(time.Millisecond), all.Round(time.Millisecond), rate, float64(n)/stream.Seconds(), cpu.Round(time.Millisecond))
	per100k := all.Seconds() * 100000 / float64(n)

	const section = "Rejoin/hand-off"
	res := report.Value(section, fmt.Sprintf("time to hand %d records to a joining super peer", n), "s", all.Seconds())
	if n == 100000 {
		res = res.ValueAtMost(5)
	}
	frag := report.Fragment{
		Source: "handoff",
		Results: []report.Result{
			res,
			report.Value(section, "hand-off rate, join to last record", "records/s", rate),
			report.Value(section, "hand-off time for 100,000 records (at this rate)", "s", per100k).ValueAtMost(5),
			report.Value(section, "hand-off CPU per 100,000 records (pushers and newcomer, join included)", "s", cpu.Seconds()*100000/float64(n)),
		},
		Lines: []string{
			fmt.Sprintf("3 super peers in one process on loopback, replicas 3: the newcomer is a replica of all %d records; "+
				"ready %v after start, first record at %v (the pushers learn of it by gossip), last at %v; %v CPU in all",
				n, ready.Round(time.Millisecond), first.Round(time.Millisecond), all.Round(time.Millisecond), cpu.Round(time.Millisecond)),
		},
		Duration: time.Since(start),
	}
	if err := report.Emit(frag); err != nil {
		t.Fatal(err)
	}
}
