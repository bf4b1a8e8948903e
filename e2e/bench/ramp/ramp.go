// Package ramp is the rate search the benchmarks share (calls, TURN
// relay): double the offered rate while short steps pass, bisect between
// the last pass and the first failure, then confirm with a longer hold.
package ramp

import "time"

// Config configures Search.
type Config struct {
	// Start is the first offered rate; it doubles while steps pass, up to
	// Limit; then Bisect steps between the last pass and the first failure.
	Start, Limit, Bisect int
	// Step and Hold are the durations of a ramp step and of the
	// confirming run at the rate found (lowered by HoldCut per cent when
	// it fails, HoldTries runs at most; HoldCut 0 means 20).
	Step, Hold         time.Duration
	HoldTries, HoldCut int
}

// Search runs the steps through run, which reports whether the offered
// rate passed for the duration. It returns the rate of the passing hold
// (0 when none passed; it was then the last run) and the best rate of the
// short steps.
func Search(c Config, run func(rate int, d time.Duration) bool) (held, ramped int) {
	lastOK, firstFail := 0, 0
	for rate := c.Start; rate <= c.Limit; rate *= 2 {
		if !run(rate, c.Step) {
			firstFail = rate
			break
		}
		lastOK = rate
	}
	for range c.Bisect {
		if lastOK == 0 || firstFail == 0 || firstFail-lastOK <= lastOK/8 {
			break
		}
		mid := Round((lastOK + firstFail) / 2)
		if run(mid, c.Step) {
			lastOK = mid
		} else {
			firstFail = mid
		}
	}
	cut := c.HoldCut
	if cut <= 0 || cut >= 100 {
		cut = 20
	}
	rate := lastOK
	for try := 0; try < c.HoldTries && rate > 0; try++ {
		if run(rate, c.Hold) {
			return rate, lastOK
		}
		rate = Round(rate * (100 - cut) / 100)
	}
	return 0, lastOK
}

// Round rounds down to two significant digits (at least 1), for readable
// steps.
func Round(r int) int {
	m := 1
	for r/m >= 100 {
		m *= 10
	}
	return max(r/m*m, 1)
}
