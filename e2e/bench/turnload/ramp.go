package turnload

import "time"

// Ramp configures MaxRate.
type Ramp struct {
	// Through is how many of the allocations carry the packets.
	Through int
	// Start is the first offered rate (packets/s in all); it doubles
	// while steps pass, up to Limit; then Bisect steps between the last
	// pass and the first failure.
	Start, Limit, Bisect int
	// Step and Hold are the durations of a ramp step and of the
	// confirming run at the rate found (lowered by 20 % when it fails,
	// HoldTries runs at most).
	Step, Hold time.Duration
	HoldTries  int
	Log        func(format string, args ...any)
}

// MaxRate finds the highest offered rate relayed with no loss. It returns
// the passing hold (Rate 0 when none passed) and every step.
func (l *Load) MaxRate(name string, c Ramp) (best Step, steps []Step) {
	run := func(rate int, d time.Duration) Step {
		s := l.Send(c.Through, rate, d)
		steps = append(steps, s)
		if c.Log != nil {
			c.Log("%s: %v", name, s)
		}
		return s
	}
	lastOK, firstFail := 0, 0
	for rate := c.Start; rate <= c.Limit; rate *= 2 {
		if !run(rate, c.Step).OK() {
			firstFail = rate
			break
		}
		lastOK = rate
	}
	for range c.Bisect {
		if lastOK == 0 || firstFail == 0 || firstFail-lastOK <= lastOK/8 {
			break
		}
		mid := round2((lastOK + firstFail) / 2)
		if run(mid, c.Step).OK() {
			lastOK = mid
		} else {
			firstFail = mid
		}
	}
	rate := lastOK
	for try := 0; try < c.HoldTries && rate > 0; try++ {
		if s := run(rate, c.Hold); s.OK() {
			return s, steps
		}
		rate = round2(rate * 80 / 100)
	}
	return Step{}, steps
}

// round2 rounds down to two significant digits.
func round2(r int) int {
	m := 1
	for r/m >= 100 {
		m *= 10
	}
	return max(r/m*m, 1)
}
