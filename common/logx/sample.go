package logx

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// DefaultSample is the --log-sample default: at most 100 per-message
// (debug and trace) lines a second, then one in 100 of the rest.
const DefaultSample = "100/1s,1/100"

// Sample is a sampling policy for per-message lines: Burst lines per
// Period pass, then one in Every of the rest (Every 0: none of the rest).
// The zero Sample (or "off") keeps every line.
type Sample struct {
	Burst  uint32
	Period time.Duration
	Every  uint32
}

// Off reports whether s keeps every line.
func (s Sample) Off() bool { return s.Burst == 0 && s.Every == 0 }

// ParseSample reads "off" or "BURST/PERIOD[,1/EVERY]", e.g. "100/1s,1/100"
// (PERIOD is a Go duration; "s" alone means 1s).
func ParseSample(v string) (Sample, error) {
	v = strings.TrimSpace(v)
	if v == "off" {
		return Sample{}, nil
	}
	burstPart, rest, hasRest := strings.Cut(v, ",")
	n, per, ok := strings.Cut(burstPart, "/")
	if !ok {
		return Sample{}, fmt.Errorf("want off or BURST/PERIOD[,1/EVERY] (e.g. %s)", DefaultSample)
	}
	burst, err := strconv.ParseUint(strings.TrimSpace(n), 10, 32)
	if err != nil || burst == 0 {
		return Sample{}, fmt.Errorf("burst %q: want a whole number ≥ 1", n)
	}
	per = strings.TrimSpace(per)
	if per != "" && (per[0] < '0' || per[0] > '9') {
		per = "1" + per // "100/s"
	}
	period, err := time.ParseDuration(per)
	if err != nil || period <= 0 {
		return Sample{}, fmt.Errorf("period %q: want a positive duration such as 1s", per)
	}
	s := Sample{Burst: uint32(burst), Period: period}
	if hasRest {
		one, m, ok := strings.Cut(strings.TrimSpace(rest), "/")
		every, err := strconv.ParseUint(strings.TrimSpace(m), 10, 32)
		if !ok || strings.TrimSpace(one) != "1" || err != nil || every == 0 {
			return Sample{}, fmt.Errorf("%q after the comma: want 1/EVERY with EVERY ≥ 1", rest)
		}
		s.Every = uint32(every)
	}
	return s, nil
}

func (s Sample) String() string {
	if s.Off() {
		return "off"
	}
	v := fmt.Sprintf("%d/%s", s.Burst, s.Period)
	if s.Every > 0 {
		v += fmt.Sprintf(",1/%d", s.Every)
	}
	return v
}

// sampler applies a Sample to debug and trace lines, the per-message
// levels (a SIP message routed, a tunnel frame forwarded or dropped, a
// store operation's detail). Info and above (lifecycle, warnings, errors)
// always pass: they are not sampled at all. Once a period, if lines were
// dropped, it says how many, at info, so a reader knows the log is thinned.
type sampler struct {
	inner   zerolog.Sampler
	period  time.Duration
	report  zerolog.Logger // unsampled
	dropped atomic.Uint64

	mu         sync.Mutex
	lastReport time.Time
}

func newSampler(s Sample, report zerolog.Logger) *sampler {
	var next zerolog.Sampler = never{}
	if s.Every > 0 {
		next = &zerolog.BasicSampler{N: s.Every}
	}
	return &sampler{
		inner:      &zerolog.BurstSampler{Burst: s.Burst, Period: s.Period, NextSampler: next},
		period:     s.Period,
		report:     report,
		lastReport: time.Now(),
	}
}

type never struct{}

func (never) Sample(zerolog.Level) bool { return false }

func (s *sampler) Sample(lvl zerolog.Level) bool {
	if lvl > zerolog.DebugLevel {
		return true
	}
	if s.inner.Sample(lvl) {
		s.maybeReport()
		return true
	}
	s.dropped.Add(1)
	s.maybeReport()
	return false
}

// maybeReport logs the lines dropped since the last report, at most once
// a period (and only when there were any).
func (s *sampler) maybeReport() {
	if s.dropped.Load() == 0 {
		return
	}
	s.mu.Lock()
	now := time.Now()
	if now.Sub(s.lastReport) < s.period {
		s.mu.Unlock()
		return
	}
	s.lastReport = now
	n := s.dropped.Swap(0)
	s.mu.Unlock()
	if n > 0 {
		s.report.Info().Uint64("dropped", n).Msg("log sampling: per-message debug/trace lines dropped")
	}
}
