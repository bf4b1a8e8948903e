//go:build e2e

package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a long-running process in a namespace, with its stdout and
// stderr in LogDir/NAME.log.
type Proc struct {
	Name string
	Host string
	// Log is the path of its output.
	Log string

	cmd   *exec.Cmd
	start time.Time
	done  chan struct{}
	err   error // valid after done
}

// setProcAttrs gives a command its own process group (so a kill reaches
// whatever it forks) and a parent-death signal (so it dies with the test
// binary even when that is killed before its cleanup runs). `ip netns
// exec` execs the command in place, so both apply to the command itself.
// Start such commands with startCmd.
func setProcAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroupOnCancel makes a command made by exec.CommandContext kill its
// whole process group when the context ends.
func killGroupOnCancel(cmd *exec.Cmd) {
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
}

// Start runs argv in host's namespace as NAME (unique within the test: it
// names the log file). The process is killed at the test's cleanup, if it
// has not ended before.
func (tp *Topology) Start(host, name string, argv ...string) *Proc {
	tp.t.Helper()
	p, err := tp.start(host, name, "", argv...)
	if err != nil {
		tp.t.Fatalf("start %s: %v", name, err)
	}
	return p
}

func (tp *Topology) start(host, name, dir string, argv ...string) (*Proc, error) {
	logPath := filepath.Join(tp.LogDir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fmt.Fprintf(f, "# %s [%s] %s\n", time.Now().Format(time.RFC3339Nano), host, strings.Join(argv, " "))
	cmd := exec.Command("ip", append([]string{"netns", "exec", tp.NS(host)}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = dir
	setProcAttrs(cmd)
	p := &Proc{Name: name, Host: host, Log: logPath, cmd: cmd, done: make(chan struct{})}
	tp.mu.Lock()
	if tp.destroyed {
		tp.mu.Unlock()
		return nil, errors.New("topology already torn down")
	}
	if err := startCmd(cmd); err != nil {
		tp.mu.Unlock()
		return nil, err
	}
	p.start = time.Now()
	tp.procs = append(tp.procs, p)
	tp.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// The parent-death signal is sent when the *thread* that forked the child
// ends, and Go ends threads (those of goroutines that exit while locked to
// them, as InNamespace's do). So every child is forked by one goroutine
// locked to its thread for the life of the test binary.
var spawner = sync.OnceValue(func() chan<- spawnReq {
	reqs := make(chan spawnReq)
	go func() {
		runtime.LockOSThread()
		for r := range reqs {
			r.errc <- r.cmd.Start()
		}
	}()
	return reqs
})

type spawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

// startCmd starts cmd from the spawner thread.
func startCmd(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	spawner() <- spawnReq{cmd, errc}
	return <-errc
}

// Pid is the process id (also its process group id).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has ended.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode is the exit status once the process has ended (-1 if killed by
// a signal or still running).
func (p *Proc) ExitCode() int {
	if !p.Exited() || p.cmd.ProcessState == nil {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Kill SIGKILLs the process group and waits for the process to end.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	syscall.Kill(-p.Pid(), syscall.SIGKILL) //nolint:errcheck // it may have just ended
	<-p.done
}

// Wait waits up to timeout for the process to end on its own; after that
// it kills it and says so.
func (p *Proc) Wait(ctx context.Context, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		p.Kill()
		return ctx.Err()
	case <-t.C:
		p.Kill()
		return fmt.Errorf("%s did not end within %s; killed", p.Name, timeout)
	}
}

// Eventually polls f every 50 ms until it returns nil, or fails the test
// with f's last error once timeout has passed.
func Eventually(t interface {
	Helper()
	Fatalf(string, ...any)
}, timeout time.Duration, what string, f func() error) {
	t.Helper()
	if err := poll(timeout, 50*time.Millisecond, f); err != nil {
		t.Fatalf("%s: not within %s: %v", what, timeout, err)
	}
}

// poll calls f every interval until it returns nil or timeout passes; it
// returns f's last error then.
func poll(timeout, interval time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(interval)
	}
}
