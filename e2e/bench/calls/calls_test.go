package calls

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A SIPp message trace: an INVITE sent twice (a retransmission), its 180
// and 200, a BYE's 200 that must not count, and a second call with no 200.
const trace = `----------------------------------------------- 2026-11-25 17:34:01.475413
UDP message sent (511 bytes):

INVITE sip:bob@example.net SIP/2.0
Call-ID: 1-1@127.0.0.1
CSeq: 1 INVITE

----------------------------------------------- 2026-11-25 17:34:01.975413
UDP message sent (511 bytes):

INVITE sip:bob@example.net SIP/2.0
Call-ID: 1-1@127.0.0.1
CSeq: 1 INVITE

----------------------------------------------- 2026-11-25 17:34:01.976000
UDP message received [309] bytes :

SIP/2.0 180 Ringing
Call-ID: 1-1@127.0.0.1
CSeq: 1 INVITE

----------------------------------------------- 2026-11-25 17:34:01.977613
UDP message received [309] bytes :

SIP/2.0 200 OK
Call-ID: 1-1@127.0.0.1
CSeq: 1 INVITE

----------------------------------------------- 2026-11-25 17:34:01.977700
UDP message received [309] bytes :

SIP/2.0 200 OK
Call-ID: 1-1@127.0.0.1
CSeq: 1 INVITE

----------------------------------------------- 2026-11-25 17:34:02.000000
UDP message sent (300 bytes):

INVITE sip:bob@example.net SIP/2.0
Call-ID: 2-1@127.0.0.1
CSeq: 1 INVITE

----------------------------------------------- 2026-11-25 17:34:02.100000
UDP message received [200] bytes :

SIP/2.0 200 OK
Call-ID: 2-1@127.0.0.1
CSeq: 2 BYE
`

func TestTraceLatencies(t *testing.T) {
	p := filepath.Join(t.TempDir(), "messages.log")
	if err := os.WriteFile(p, []byte(trace), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := traceLatencies(p)
	if err != nil {
		t.Fatal(err)
	}
	// From the first sending of the INVITE to the first 200.
	if want := 502200 * time.Microsecond; len(got) != 1 || got[0] != want {
		t.Fatalf("latencies %v, want [%v]", got, want)
	}
	if err := os.WriteFile(p, []byte("----------------------------------------------- not a time\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := traceLatencies(p); err == nil {
		t.Fatal("a bad timestamp parsed")
	}
}

func TestPercentile(t *testing.T) {
	d := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if Percentile(d, 50) != 5 || Percentile(d, 99) != 10 || Percentile(nil, 50) != 0 {
		t.Fatal("percentiles")
	}
}

// Pool takes percentiles over the runs' samples together, not an average
// of each run's: one slow run of three moves p99 only as far as its share
// of the calls does.
func TestPool(t *testing.T) {
	run := func(calls int, cpu time.Duration, lat ...time.Duration) Step {
		return Step{Rate: 500, Calls: calls, Duration: time.Second, Traced: true, CPU: cpu, Achieved: 500, Latencies: lat}
	}
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	var fast, slow []time.Duration
	for i := range 100 {
		fast = append(fast, ms(1))
		slow = append(slow, ms(2+i/50))
	}
	p := Pool(run(100, 2*time.Millisecond, fast...), run(100, 2*time.Millisecond, fast...), run(100, 5*time.Millisecond, slow...))
	if p.Calls != 300 || p.Duration != 3*time.Second || len(p.Latencies) != 300 || !p.Traced {
		t.Fatalf("pooled: %+v", p)
	}
	if p.P50 != ms(1) || p.P99 != ms(3) {
		t.Errorf("p50 %v p99 %v, want 1ms and 3ms", p.P50, p.P99)
	}
	if p.CPU != 3*time.Millisecond {
		t.Errorf("CPU per call %v, want the calls-weighted 3ms", p.CPU)
	}
	if p.Achieved != 500 {
		t.Errorf("answered %v/s, want 500", p.Achieved)
	}
	if one := Pool(run(100, time.Millisecond, slow...)); one.P99 != ms(3) || one.P50 != ms(2) {
		t.Errorf("one run: p50 %v p99 %v", one.P50, one.P99)
	}
}
