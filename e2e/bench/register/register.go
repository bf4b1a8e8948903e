// Package register measures registrations with digest authentication
// (REGISTER, 401, REGISTER with credentials, 200, each a new Call-ID)
// driven by SIPp: at the SIP edge of an overlay or at Kamailio as
// registrar with the same auth_ephemeral credentials. SIPp 3.6 cannot take
// per-call credentials from an injection file, so a step runs Users SIPp
// processes, one user each, sharing the offered rate.
package register

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/e2e/harness/sipp"
)

//go:embed register_bench.xml
var scenario string

// Scenario writes the SIPp scenario into dir and returns its path; with
// noAuth, the scenario without the challenge (for a registrar without
// auth_ephemeral).
func Scenario(dir string, noAuth bool) (string, error) {
	s := scenario
	if noAuth {
		start := strings.Index(s, `<recv response="401"`)
		end := strings.LastIndex(s, `<recv response="200"/>`)
		s = s[:start] + s[end:]
	}
	p := filepath.Join(dir, "register_bench.xml")
	if noAuth {
		p = filepath.Join(dir, "register_noauth.xml")
	}
	return p, os.WriteFile(p, []byte(s), 0o644)
}

// Load is a registration load against one registrar.
type Load struct {
	Name   string
	Target string // host:port of the registrar
	Domain string
	// Secret issues each user's TURN-REST style credentials
	// (auth.Issue): the edge and Kamailio's auth_ephemeral check the same.
	Secret []byte
	// Scenario is the path from Scenario.
	Scenario string
	// Users is the number of SIPp processes, one user each (default 8).
	Users int
}

// Step is one run at a fixed offered rate (REGISTER/s in all, each a
// whole authenticated registration).
type Step struct {
	Rate     int
	Duration time.Duration
	Stats    sipp.Stats // summed over the processes
	Err      error      // the first process's failure
}

// OK says every registration of the step succeeded.
func (s Step) OK() bool { return s.Err == nil }

func (s Step) String() string {
	status := "ok"
	if s.Err != nil {
		status = "FAILED: " + s.Err.Error()
	}
	return fmt.Sprintf("%6d REGISTER/s for %v: %s: %s", s.Rate, s.Duration, s.Stats, status)
}

// Run registers at rate for d.
func (l Load) Run(tb testing.TB, rate int, d time.Duration) Step {
	tb.Helper()
	users := l.Users
	if users <= 0 {
		users = 8
	}
	users = min(users, max(rate, 1))
	per := max(rate/users, 1)
	n := max(int(float64(per)*d.Seconds()), 1)
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	procs := make([]*sipp.Proc, users)
	for i := range procs {
		user := "load" + strconv.Itoa(i)
		cred, err := auth.Issue(l.Secret, user, time.Hour, time.Now())
		if err != nil {
			tb.Fatal(err)
		}
		procs[i] = sipp.Start(ctx, tb, fmt.Sprintf("%s-%d-%s", l.Name, rate, user), "", l.Target,
			"-sf", l.Scenario, "-s", user, "-au", cred.Username, "-ap", cred.Password, "-set", "domain", l.Domain,
			"-r", strconv.Itoa(per), "-m", strconv.Itoa(n), "-l", strconv.Itoa(2*per+10),
			"-recv_timeout", "5000", "-buff_size", "4194304",
			// No default behaviours: SIPp "aborts" a failed registration
			// with a BYE, which a registrar forwards to the contact just
			// registered — this SIPp, which drops it — and which then
			// waits out Timer F there, retransmitting: load of the bench's
			// own making that a Kamailio registrar, answering BYE itself,
			// never sees.
			"-nd")
	}
	s := Step{Rate: per * users, Duration: d}
	for _, p := range procs {
		err := p.Wait(d + 25*time.Second)
		st, serr := p.Stats()
		p.Kill()
		s.Stats.Created += st.Created
		s.Stats.Successful += st.Successful
		s.Stats.Failed += st.Failed
		s.Stats.Retransmissions += st.Retransmissions
		if (err != nil || serr != nil || st.Failed != 0 || st.Successful != n) && s.Err == nil {
			s.Err = fmt.Errorf("%s: %s (exit %v, stats %v)%s", p.Name, st, err, serr, firstError(p))
		}
	}
	return s
}

// Ramp runs the rates in order, d each, until a step fails, then holds
// the best rate for hold (lowering it by 15 % up to four times when the hold
// fails). It returns the passing hold (Rate 0 if none) and every step.
func (l Load) Ramp(tb testing.TB, rates []int, d, hold time.Duration, log func(string, ...any)) (best Step, steps []Step) {
	tb.Helper()
	run := func(rate int, d time.Duration) Step {
		s := l.Run(tb, rate, d)
		steps = append(steps, s)
		if log != nil {
			log("%s: %v", l.Name, s)
		}
		// Let the retransmission timers of the step end.
		time.Sleep(500 * time.Millisecond)
		return s
	}
	lastOK := 0
	for _, rate := range rates {
		if !run(rate, d).OK() {
			break
		}
		lastOK = rate
	}
	for try := 0; try < 5 && lastOK > 0; try++ {
		if s := run(lastOK, hold); s.OK() {
			return s, steps
		}
		lastOK = lastOK * 85 / 100
	}
	return Step{}, steps
}

// firstError is the first message SIPp logged as unexpected or an error,
// which names what the registrar answered instead.
func firstError(p *sipp.Proc) string {
	b, err := os.ReadFile(filepath.Join(p.Dir, "errors.log"))
	if err != nil || len(b) == 0 {
		return ""
	}
	s := string(b)
	// The log's first entry: a timestamped line, then the message.
	if i := strings.Index(s, "\n\n"); i > 0 {
		s = s[:i]
	}
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return "; SIPp: " + s
}
