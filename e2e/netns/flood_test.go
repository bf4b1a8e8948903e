//go:build e2e

package netns

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/p2psip/p2psip/e2e/harness/promtext"
)

// TestEdgeFlood: a stranger on the public segment (the phone host) floods
// the SIP edge of alice's super peer with hostile and malformed SIP
// (testdata/flood.xml: 4 datagrams a "call") while alice calls bob across
// both NATs through that super peer. Every call must succeed, the super
// peer must stay up and ready, its /metrics must count the refusals, and
// its log must stay small: sipgo logs each unparsable datagram at error
// with its bytes, and before its lines were throttled a flood like this
// wrote one line or more per datagram.
func TestEdgeFlood(t *testing.T) {
	const calls, rate = 100, 10 // 10 s of calls
	const floodRate, floodFor = 500, 15 * time.Second
	o, alice, bob := callsWorld(t, nil)
	ctx := context.Background()
	sp := alice.SuperPeer(t)
	linesBefore := countLines(t, sp.Proc.Log)

	name := fmt.Sprintf("sipp-flood-%s-%d", Phone, sippSeq.Add(1))
	args, err := o.sippArgs("flood.xml", name, PhoneIP, UACPort)
	if err != nil {
		t.Fatal(err)
	}
	n := floodRate * int(floodFor/time.Second)
	args = append(args, "-set", "domain", o.Name, "-set", "fake", "[::ffff:100.64.0.1]", "-m", strconv.Itoa(n), "-r", strconv.Itoa(floodRate), "-l", strconv.Itoa(2*floodRate),
		"-nd", "-trace_stat", "-stf", filepath.Join(o.LogDir, name+".stat.csv"), "-fd", "1", sp.SIPAddr())
	flood, err := o.start(Phone, name, o.LogDir, args...)
	if err != nil {
		t.Fatal(err)
	}
	res, err := o.RunUAC(ctx, alice.Caller(bob, calls, rate))
	requireAllOK(t, "alice → bob during the flood", res, err, calls, bob)
	if err := flood.Wait(ctx, floodFor+30*time.Second); err != nil {
		t.Fatalf("flood: %v\n%s", err, tail(flood.Log, 20))
	}
	st, err := o.Progress(name)
	if err != nil || st.Created < n {
		t.Fatalf("flood sent %d of %d (%v)", st.Created, n, err)
	}
	datagrams := 4 * st.Created

	if s, err := o.Status(sp); err != nil || !s.Ready {
		t.Fatalf("%s after the flood: %+v %v", sp.Host, s, err)
	}
	m := scrape(t, o, sp)
	rejected, unauthorized := m["p2psip_sip_rejected_total"], m[`p2psip_registrar_registers_total{outcome="unauthorized"}`]
	if rejected < float64(st.Created) || unauthorized < float64(st.Created) {
		t.Errorf("%s counted %v rejected requests and %v unauthorized REGISTERs for %d INVITEs and REGISTERs each",
			sp.Host, rejected, unauthorized, st.Created)
	}
	lines := countLines(t, sp.Proc.Log) - linesBefore
	// The super peers run at debug here: per-message lines are sampled
	// (100 a second, then 1 in 100), sipgo's throttled (20 a second, then
	// 1 in 1,000); the calls add their own.
	if lines > datagrams/4 {
		t.Errorf("%s wrote %d log lines for %d hostile datagrams and %d calls", sp.Host, lines, datagrams, calls)
	}
	t.Logf("SUMMARY %s: calls attempted %d succeeded %d failed %d during a flood of %d datagrams at %d/s at %s's edge; "+
		"it answered %v rejections and %v challenges, wrote %d log lines, stayed ready",
		t.Name(), res.Created, res.Successful, res.Failed, datagrams, 4*floodRate, sp.Host, rejected, unauthorized, lines)
}

// countLines is the number of lines of a process's log file.
func countLines(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	r := bufio.NewReaderSize(f, 1<<16)
	for {
		_, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			continue // the rest of a long line
		}
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
}

// scrape reads sp's /metrics into sample name (with labels) → value.
func scrape(t *testing.T, o *Overlay, sp *SuperPeer) map[string]float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, sp.AdminURL()+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := httpClientIn(o.NS(sp.Host)).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m, err := promtext.Parse(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
