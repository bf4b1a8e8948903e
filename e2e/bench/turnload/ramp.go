package turnload

import (
	"time"

	"github.com/p2psip/p2psip/e2e/bench/ramp"
)

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
	var last Step
	held, _ := ramp.Search(ramp.Config{Start: c.Start, Limit: c.Limit, Bisect: c.Bisect, Step: c.Step, Hold: c.Hold, HoldTries: c.HoldTries},
		func(rate int, d time.Duration) bool {
			last = l.Send(c.Through, rate, d)
			steps = append(steps, last)
			if c.Log != nil {
				c.Log("%s: %v", name, last)
			}
			return last.OK()
		})
	if held == 0 {
		return Step{}, steps
	}
	return last, steps
}
