//go:build e2e

package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
	m, err := promtext.Get(ctx, httpClientIn(o.NS(sp.Host)), sp.AdminURL()+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestEdgeConnFlood: a stranger on the public segment (the phone host)
// opens TCP and TLS connections to a super peer's SIP edge and says
// nothing, far more than one address may hold. The edge closes those past
// its per-address limit at once and the admitted ones once they stay
// silent past --sip-conn-silence, so they hold no descriptors, goroutines
// or read buffers; meanwhile a phone on another public host registers
// over TCP with digest authentication, and once the silent ones are gone
// the stranger may connect again.
func TestEdgeConnFlood(t *testing.T) {
	const (
		tcpConns, tlsConns = 200, 50
		perIP              = 64
		silence            = 2 * time.Second
	)
	RequireAgent(t)
	o := StartOverlayWith(t, NewTopology(t), []string{"--sip-max-conns-per-ip", strconv.Itoa(perIP),
		"--sip-conn-silence", silence.String()}, SP1, SP2, SP3)
	sp := o.SP(SP1)
	ctx := context.Background()
	linesBefore := countLines(t, sp.Proc.Log)

	// The stranger's connections, each held open and silent.
	var conns, all []net.Conn
	t.Cleanup(func() {
		for _, c := range all {
			c.Close()
		}
	})
	open := func(n int, port int) {
		t.Helper()
		for range n {
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			c, err := DialIn(dctx, o.NS(Phone), "tcp", net.JoinHostPort(sp.IP, strconv.Itoa(port)))
			cancel()
			if err != nil {
				t.Fatalf("connect from %s: %v", Phone, err)
			}
			conns = append(conns, c)
			all = append(all, c)
		}
	}
	start := time.Now()
	open(tcpConns, EdgeSIP)
	open(tlsConns, EdgeSIPS)
	// closedNow counts the stranger's connections the edge has closed
	// (a read returns at once with EOF or a reset; a live one times out).
	closedNow := func() int {
		n := 0
		for _, c := range conns {
			c.SetReadDeadline(time.Now().Add(time.Millisecond))
			_, err := c.Read(make([]byte, 1))
			var ne net.Error
			if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
				n++
			}
		}
		return n
	}
	Eventually(t, 5*time.Second, "the connections past the per-address limit closed", func() error {
		if n := closedNow(); n < tcpConns+tlsConns-perIP {
			return fmt.Errorf("%d of %d closed", n, tcpConns+tlsConns)
		}
		return nil
	})
	refused := time.Since(start)

	// A phone on another host is served meanwhile.
	username, password := o.Secrets(t, "dave")
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := o.register(rctx, "register_auth.xml", Public, PublicIP, UASPort, "dave", o.Name, sipAddr(sp.IP, EdgeSIP),
		"-au", username, "-ap", password, "-t", "t1")
	cancel()
	if err != nil {
		t.Fatalf("phone registering over TCP during the flood: %v", err)
	}
	m := scrape(t, o, sp)
	if got := m[`p2psip_sip_connections_refused_total{limit="per_ip"}`]; got < tcpConns+tlsConns-perIP {
		t.Errorf("%s counted %v connections refused per address, want at least %d", sp.Host, got, tcpConns+tlsConns-perIP)
	}

	// The admitted ones go once silent past the bound.
	Eventually(t, silence+10*time.Second, "the silent connections closed", func() error {
		if n := closedNow(); n < len(conns) {
			return fmt.Errorf("%d of %d closed", n, len(conns))
		}
		return nil
	})
	m = scrape(t, o, sp)
	if got := m["p2psip_sip_connections_silent_total"]; got < perIP {
		t.Errorf("%s counted %v silent connections, want at least %d", sp.Host, got, perIP)
	}
	if got := m["p2psip_sip_connections"]; got != 0 {
		t.Errorf("%s holds %v phone connections after the flood, want 0", sp.Host, got)
	}
	// Their places are free again: as many new connections are admitted
	// (none refused; later closed as silent in their turn, which only an
	// admitted connection can be), whatever the host's timing.
	refusedBefore := m[`p2psip_sip_connections_refused_total{limit="per_ip"}`]
	silentBefore := m["p2psip_sip_connections_silent_total"]
	conns = conns[:0]
	open(perIP, EdgeSIP)
	Eventually(t, silence+10*time.Second, "the new connections admitted, then closed as silent", func() error {
		if got := scrape(t, o, sp)["p2psip_sip_connections_silent_total"]; got < silentBefore+perIP {
			return fmt.Errorf("%v silent closes, want %v", got, silentBefore+perIP)
		}
		return nil
	})
	if got := scrape(t, o, sp)[`p2psip_sip_connections_refused_total{limit="per_ip"}`]; got != refusedBefore {
		t.Fatalf("%v of the %d connections made after the flood were refused", got-refusedBefore, perIP)
	}
	if s, err := o.Status(sp); err != nil || !s.Ready {
		t.Fatalf("%s after the flood: %+v %v", sp.Host, s, err)
	}
	lines := countLines(t, sp.Proc.Log) - linesBefore
	if lines > 200 {
		t.Errorf("%s wrote %d log lines for %d refused or silent connections", sp.Host, lines, tcpConns+tlsConns)
	}
	t.Logf("SUMMARY %s: %d TCP + %d TLS silent connections from one address to %s's edge: %v refused at accept within %s (limit %d per address), %v closed silent after %s; a TCP phone from another host registered meanwhile; %d log lines",
		t.Name(), tcpConns, tlsConns, sp.Host, m[`p2psip_sip_connections_refused_total{limit="per_ip"}`], refused.Round(time.Millisecond),
		perIP, m["p2psip_sip_connections_silent_total"], silence, lines)
}
