package bench

import (
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/registrar"
	"github.com/p2psip/p2psip/e2e/bench/kamailio"
	"github.com/p2psip/p2psip/e2e/bench/register"
	"github.com/p2psip/p2psip/e2e/bench/report"
	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/e2e/harness/sipp"
)

var registerCategories = []category{
	{"sipgo", regexp.MustCompile(`^github\.com/emiago/sipgo`)},
	{"edge", regexp.MustCompile(`p2psip/superpeer/edge\.`)},
	{"store (quorum writes)", regexp.MustCompile(`p2psip/superpeer/store\.`)},
	{"crypto", regexp.MustCompile(`^crypto/`)},
	{"syscalls", regexp.MustCompile(`^syscall\.|^internal/runtime/syscall|^internal/poll\.`)},
	{"GC", regexp.MustCompile(`^runtime\.gcBgMarkWorker$`)},
}

const secRegister = "Registrations"

// benchRegister is issue 7 item 2: REGISTER/s with digest authentication
// at the SIP edge of a 3-super-peer overlay (replicas 3, write quorum 2)
// at 0 failures, against Kamailio as registrar with the same
// auth_ephemeral credentials.
func benchRegister(t *testing.T, p benchParams, sink *fragments) {
	sipp.Bin(t)
	start := time.Now()
	log := &lines{t: t}
	o := harness.New(t)
	o.Log = o.Log.Level(zerolog.WarnLevel) // logging is not what we measure
	// An ASCII secret, so that Kamailio's configuration can carry it.
	o.Secret = []byte(hex.EncodeToString(o.Secret))
	ca, err := auth.OverlayCA(o.Secret, o.Name)
	if err != nil {
		t.Fatal(err)
	}
	o.CA = ca
	sps := []*harness.SP{o.Start(), o.Start(), o.Start()}
	o.WaitConverged(15 * time.Second)
	dir := t.TempDir()
	scenario, err := register.Scenario(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	edge := register.Load{Name: "edge", Target: sps[0].Node.SIPAddr(), Domain: o.Name, Secret: o.Secret, Scenario: scenario}
	// After each step, which limit refused REGISTERs: the edge's overload
	// control (--sip-max-inflight), the registrar's per-AoR queue, or the
	// store; and how many REGISTERs each quorum write carried.
	var last registrarCounts
	edgeLog := func(format string, args ...any) {
		log.logf(format, args...)
		now := countsOf(sps[0])
		log.logf("  edge: %s", now.since(last))
		last = now
	}
	prof := startProfile(t, p, "register-edge")
	be, se := edge.Ramp(t, p.regRates, p.regStep, p.regHold, edgeLog)
	shares, top := prof.stop(registerCategories)
	if shares != "" {
		log.logf("edge at its limit, %s", shares)
		for _, l := range top {
			log.logf("%s", l)
		}
	}
	if !p.full && !be.OK() {
		t.Errorf("edge at the smoke rate: %v", se)
	}

	name := "REGISTER/s with digest, 3 super peers (replicas 3, quorum 2), 0 failures"
	var r report.Result
	var sk []register.Step
	if why := kamailio.Available(); why != "" {
		r = report.Value(secRegister, name, "REGISTER/s", float64(be.Rate)).WithNote("no Kamailio reference: %s", why)
	} else {
		k := kamailio.Start(t, kamailio.Config{Role: kamailio.Registrar, Domain: o.Name, Secret: string(o.Secret)})
		kscen := scenario
		refName := "Kamailio registrar (auth_ephemeral, usrloc in memory)"
		if k.Auth != "auth_ephemeral" {
			if kscen, err = register.Scenario(dir, true); err != nil {
				t.Fatal(err)
			}
			refName = "Kamailio registrar WITHOUT auth (auth_ephemeral module missing)"
		}
		kl := register.Load{Name: "kamailio", Target: k.Addr, Domain: o.Name, Secret: o.Secret, Scenario: kscen}
		var bk register.Step
		bk, sk = kl.Ramp(t, p.regRates, p.regStep, p.regHold, log.logf)
		r = report.Compare(secRegister, name, "REGISTER/s", float64(be.Rate), float64(bk.Rate), refName).AtLeast(0.5)
		r.Note = "Each registration is REGISTER, 401, REGISTER with credentials, 200 (SIPp, " + itoa(8) + " users); rates stepped, the best held for " + p.regHold.String() + "."
		for _, st := range se {
			if st.Err != nil && strings.Contains(st.Err.Error(), "503 Service Unavailable") {
				r.Note += " The edge's first failures were its own 503s, at " + itoa(st.Rate) + " REGISTER/s (the step's log line names their source)."
				break
			}
		}
		if r.Pass != nil && !*r.Pass {
			r.Note += " Bottleneck: the edge's CPU per registration (digest check, then a quorum write to 2 of 3 replicas over the peer protocol; all three super peers and SIPp share 2 cores). " + shares
		}
	}
	var series []report.Series
	for _, x := range []struct {
		name  string
		steps []register.Step
	}{{"edge (3 super peers)", se}, {"Kamailio", sk}} {
		var pts [][2]float64
		steps := slices.Clone(x.steps)
		slices.SortStableFunc(steps, func(a, b register.Step) int { return a.Rate - b.Rate })
		for _, s := range steps {
			ok := 0.0
			if s.Stats.Created > 0 {
				ok = float64(s.Rate) * float64(s.Stats.Successful) / float64(s.Stats.Created)
			}
			pts = append(pts, [2]float64{float64(s.Rate), ok})
		}
		if len(pts) > 0 {
			series = append(series, report.Series{Plot: "register-rate", Title: "Successful against offered registrations (digest)",
				XLabel: "offered REGISTER/s", YLabel: "successful REGISTER/s", Name: x.name, Points: pts})
		}
	}
	sink.emit(t, report.Fragment{Source: "register", Results: []report.Result{r}, Series: series, Lines: log.all(), Duration: time.Since(start)})
}

// registrarCounts are the edge's counters that tell where REGISTERs went.
type registrarCounts struct {
	overload uint64 // 503s of the edge's overload control
	reg      registrar.Stats
}

func countsOf(sp *harness.SP) registrarCounts {
	e := sp.Node.Edge()
	return registrarCounts{overload: e.Stats().Overload, reg: e.Registrar().Stats()}
}

func (c registrarCounts) since(p registrarCounts) string {
	writes, batched := c.reg.Writes-p.reg.Writes, c.reg.Batched-p.reg.Batched
	per := 0.0
	if writes > 0 {
		per = float64(batched) / float64(writes)
	}
	return fmt.Sprintf("%d REGISTERs in %d quorum writes (%.1f each); 503s: %d overload (max in-flight), %d per-AoR queue full, %d store failures",
		batched, writes, per, c.overload-p.overload, c.reg.Busy-p.reg.Busy, c.reg.StoreFailed-p.reg.StoreFailed)
}
