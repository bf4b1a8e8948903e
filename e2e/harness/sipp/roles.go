package sipp

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// bufSize is SIPp's socket buffer size (-buff_size): its default of 64 KiB
// drops bursts at a few thousand calls per second.
const bufSize = "4194304"

// Register makes SIPp register sip:user@domain at proxy (host:port) with
// its contact on 127.0.0.1:port, the port a UAS started afterwards listens
// on; it waits for the 200.
func Register(ctx context.Context, t testing.TB, proxy, user, domain string, port int) error {
	t.Helper()
	p := Start(ctx, t, "register-"+user, "register.xml", proxy, "-s", user, "-set", "domain", domain,
		"-m", "1", "-p", strconv.Itoa(port), "-timeout", "10s", "-timeout_error")
	if err := p.Wait(20 * time.Second); err != nil {
		return &Error{Proc: p, Err: err}
	}
	return nil
}

// UAS starts a UAS on 127.0.0.1:port that answers calls (180, then 200
// copying Record-Route, then waits for ACK and BYE) and exits after calls
// calls (0: runs until killed). It returns once the port is bound.
func UAS(ctx context.Context, t testing.TB, port, calls int) *Proc {
	t.Helper()
	args := []string{"-p", strconv.Itoa(port), "-default_behaviors", "all,-abortunexp", "-buff_size", bufSize}
	if calls > 0 {
		args = append(args, "-m", strconv.Itoa(calls))
	}
	p := Start(ctx, t, "uas", "uas.xml", args...)
	deadline := time.Now().Add(10 * time.Second)
	for !Bound(port) {
		select {
		case <-p.Done():
			t.Fatalf("sipp uas exited at start: %v\n%s", p.err, p.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sipp uas not listening on %d after 10s\n%s", port, p.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

// Calls describes a UAC run.
type Calls struct {
	// Target is where SIPp sends its INVITEs (host:port): the caller's
	// agent, or a UAS directly.
	Target string
	// From calls To, both users of Domain.
	From, To, Domain string
	// Port is the UAC's local port (0: any).
	Port int
	// N calls at Rate calls per second, at most Limit at once (default
	// 4×Rate).
	N, Rate, Limit int
}

// UAC starts a UAC placing c.N calls (INVITE, 200, ACK, BYE) and exits
// when they are done; its exit status is 0 only when every call succeeded.
// It keeps the 180 optional and turns off SIPp's abort on unexpected
// messages (a 180 overtaken by its 200 is not a failure), with a 10 s
// receive timeout so lost messages still fail calls (notes/TESTING.md).
func UAC(ctx context.Context, t testing.TB, c Calls) *Proc {
	t.Helper()
	if c.Limit <= 0 {
		c.Limit = 4 * c.Rate
	}
	args := []string{c.Target, "-s", c.To, "-set", "user", c.From, "-set", "domain", c.Domain,
		"-m", strconv.Itoa(c.N), "-r", strconv.Itoa(c.Rate), "-l", strconv.Itoa(c.Limit),
		"-default_behaviors", "all,-abortunexp", "-recv_timeout", "10000", "-buff_size", bufSize}
	if c.Port > 0 {
		args = append(args, "-p", strconv.Itoa(c.Port))
	}
	return Start(ctx, t, "uac", "uac.xml", args...)
}

// Error is a SIPp run that failed, with its output.
type Error struct {
	Proc *Proc
	Err  error
}

func (e *Error) Error() string { return e.Err.Error() + "\n" + e.Proc.Output() }

func (e *Error) Unwrap() error { return e.Err }
