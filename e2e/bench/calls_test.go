package bench

import (
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/p2psip/p2psip/e2e/bench/calls"
	"github.com/p2psip/p2psip/e2e/bench/kamailio"
	"github.com/p2psip/p2psip/e2e/bench/report"
)

var callCategories = []category{
	{"sipgo", regexp.MustCompile(`^github\.com/emiago/sipgo`)},
	{"siproute", regexp.MustCompile(`p2psip/common/siproute\.`)},
	{"syscalls", regexp.MustCompile(`^syscall\.|^internal/runtime/syscall|^internal/poll\.`)},
	{"GC", regexp.MustCompile(`^runtime\.gcBgMarkWorker$`)},
	{"malloc", regexp.MustCompile(`^runtime\.mallocgc$`)},
}

const secCalls = "Call rate"

// benchCalls is issue 7 item 1: the highest call rate with no failed call
// through the overlay, through one Kamailio stateful proxy and directly,
// and INVITE→200 at a fixed moderate rate.
func benchCalls(t *testing.T, p benchParams, sink *fragments) {
	start := time.Now()
	log := &lines{t: t}
	ov := calls.NewOverlay(t) // skips without SIPp
	direct := calls.NewDirect(t)
	var kam *calls.Rig
	if why := kamailio.Available(); why == "" {
		kam = calls.NewKamailio(t)
	} else {
		log.logf("no Kamailio reference: %s", why)
	}

	// Latency at a fixed moderate rate, before any overload.
	lat := map[string]calls.Step{}
	for _, r := range []*calls.Rig{ov, kam, direct} {
		if r == nil {
			continue
		}
		s := r.Run(t, p.latencyRate, p.callLatency)
		log.logf("%s latency: %v", r.Name, s)
		lat[r.Name] = s
		if !p.full && !s.OK() {
			// At the smoke rate every call must pass, or the rig is broken.
			t.Errorf("%s at %d calls/s: %v", r.Name, p.latencyRate, s)
		}
	}

	ramp := calls.Ramp{Start: p.callStart, Limit: p.callLimit, Step: p.callStep, Bisect: p.callBisect,
		Hold: p.callHold, HoldTries: p.callHoldTries, Log: log.logf}
	prof := startProfile(t, p, "calls-overlay")
	bo, so := ov.MaxRate(t, ramp)
	shares, top := prof.stop(callCategories)
	var bk calls.Step
	var sk []calls.Step
	if kam != nil {
		bk, sk = kam.MaxRate(t, ramp)
	}
	// Direct is the machine's ceiling: start where the others stopped.
	dr := ramp
	dr.Start = max(p.callStart, bo.Rate, bk.Rate)
	bd, sd := direct.MaxRate(t, dr)
	if shares != "" {
		log.logf("overlay at its limit, %s", shares)
		for _, l := range top {
			log.logf("%s", l)
		}
	}

	hold := p.callHold.String()
	var rs []report.Result
	lo, lk, ld := lat["overlay"], lat["kamailio"], lat["direct"]
	short := "bottleneck: the overlay's own CPU (4 processes' worth of SIP work in one: both agents parse and route every message, " +
		"both super peers relay it; SIPp shares the 2 cores). " + shares
	cpu := func(s calls.Step) string {
		if s.CPU == 0 {
			return ""
		}
		return "; " + s.CPU.Round(time.Microsecond).String() + " CPU per call at that rate"
	}
	if kam != nil {
		r := report.Compare(secCalls, "overlay calls/s, 0 failed over "+hold, "calls/s", float64(bo.Rate), float64(bk.Rate), "Kamailio stateful proxy").AtLeast(0.5)
		r.Note = "SIPp UAC → agent → super peer → super peer → agent → SIPp UAS" + cpu(bo) + "; Kamailio" + cpu(bk) + "."
		if r.Pass != nil && !*r.Pass {
			r.Note += " " + short
		}
		rs = append(rs, r)
	} else {
		rs = append(rs, report.Value(secCalls, "overlay calls/s, 0 failed over "+hold, "calls/s", float64(bo.Rate)).
			WithNote("no Kamailio reference: %s", kamailio.Available()))
	}
	rs = append(rs, report.Compare(secCalls, "overlay calls/s vs SIPp direct", "calls/s", float64(bo.Rate), float64(bd.Rate), "SIPp UAC → UAS direct"))
	if kam != nil {
		rs = append(rs, report.Compare(secCalls, "Kamailio calls/s vs SIPp direct", "calls/s", float64(bk.Rate), float64(bd.Rate), "SIPp UAC → UAS direct"))
	}
	// SIPp's response times have 1 ms resolution: a 0 reads "< 1 ms", and a
	// ratio to it is taken against 1 ms.
	const resolution = "SIPp's response times have 1 ms resolution (a sub-millisecond one reads 0), so the ratio uses at least 1 ms for the reference; the mean of many is finer."
	at := " at " + itoa(p.latencyRate) + " calls/s"
	if kam != nil {
		r := report.Compare(secCalls, "INVITE→200 p99"+at, "ms", ms(lo.P99), ms(max(lk.P99, time.Millisecond)), "Kamailio").AtMost(2)
		r.Note = resolution + " Measured p99: overlay " + lo.P99.String() + ", Kamailio " + lk.P99.String() + "."
		if r.Pass != nil && !*r.Pass {
			r.Note += " " + short
		}
		rs = append(rs,
			report.Compare(secCalls, "INVITE→200 p50"+at, "ms", ms(lo.P50), ms(max(lk.P50, time.Millisecond)), "Kamailio").
				WithNote("%s Measured p50: overlay %v, Kamailio %v.", resolution, lo.P50, lk.P50),
			r,
			report.Compare(secCalls, "INVITE→200 mean"+at, "ms", ms(lo.Mean), ms(lk.Mean), "Kamailio"))
	} else {
		rs = append(rs, report.Value(secCalls, "INVITE→200 p50"+at, "ms", ms(lo.P50)),
			report.Value(secCalls, "INVITE→200 p99"+at, "ms", ms(lo.P99)))
	}
	rs = append(rs, report.Compare(secCalls, "INVITE→200 mean"+at+" vs direct", "ms", ms(lo.Mean), ms(ld.Mean), "SIPp direct"))

	// Plots: latency and answered rate against the offered rate, every
	// step of the ramps (holds included).
	var series []report.Series
	for _, x := range []struct {
		name  string
		lat   calls.Step
		steps []calls.Step
	}{{"overlay", lo, so}, {"Kamailio", lk, sk}, {"direct", ld, sd}} {
		if len(x.steps) == 0 {
			continue
		}
		all := append([]calls.Step{x.lat}, x.steps...)
		slices.SortStableFunc(all, func(a, b calls.Step) int { return a.Rate - b.Rate })
		var mean, p99, ans [][2]float64
		for _, s := range all {
			if s.Stats.Successful == 0 {
				continue
			}
			mean = append(mean, [2]float64{float64(s.Rate), ms(s.Mean)})
			p99 = append(p99, [2]float64{float64(s.Rate), ms(s.P99)})
			ans = append(ans, [2]float64{float64(s.Rate), s.Achieved})
		}
		if x.name != "direct" {
			series = append(series,
				report.Series{Plot: "call-latency", Title: "INVITE→200 against offered call rate (SIPp, 1 ms resolution)",
					XLabel: "offered calls/s", YLabel: "INVITE→200 (ms)", Name: x.name + " p99", Points: p99},
				report.Series{Plot: "call-latency", Name: x.name + " mean", Points: mean})
		}
		series = append(series, report.Series{Plot: "call-rate", Title: "Answered against offered call rate",
			XLabel: "offered calls/s", YLabel: "answered calls/s", Name: x.name, Points: ans})
	}
	sink.emit(t, report.Fragment{Source: "calls", Results: rs, Series: series, Lines: log.all(), Duration: time.Since(start)})
}
