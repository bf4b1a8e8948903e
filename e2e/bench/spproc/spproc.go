// Package spproc runs real `p2psip superpeer` processes for benchmarks:
// it builds the binary once, starts super peers on free loopback ports,
// waits for /readyz, and reads what an operator would watch from outside:
// the resident set size from /proc and the Go runtime figures from
// /metrics. A kill -9 is a real one.
package spproc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/e2e/harness/promtext"
)

var (
	buildOnce sync.Once
	binPath   string
	errBuild  error
)

// Binary builds cmd/p2psip once per test process and returns its path
// (in a temporary directory removed by Cleanup).
func Binary() (string, error) {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "p2psip-bench-bin-")
		if err != nil {
			errBuild = err
			return
		}
		binPath = filepath.Join(dir, "p2psip")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/p2psip/p2psip/cmd/p2psip")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			errBuild = fmt.Errorf("build p2psip: %w\n%s", err, out.String())
		}
	})
	return binPath, errBuild
}

// Cleanup removes the built binary (call it from TestMain).
func Cleanup() {
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
}

// Config describes one super peer.
type Config struct {
	// Dir is its data directory (created).
	Dir string
	// SecretFile is the overlay secret shared by the overlay's super peers.
	SecretFile string
	Overlay    string
	// Join lists gossip addresses of running super peers.
	Join []string
	// Args are more flags (e.g. --replicas 2).
	Args []string
	// Env is added to the environment (e.g. GOGC=...).
	Env []string
}

// Process is a running super peer.
type Process struct {
	PeerAddr   string // peer protocol, 127.0.0.1:port
	GossipAddr string
	Admin      string
	Dir        string

	cmd    *exec.Cmd
	stderr *tailBuffer
	done   chan struct{}
	err    error
}

// NewSecret writes a fresh overlay secret into dir and returns its path
// and bytes.
func NewSecret(dir string) (string, []byte, error) {
	path := filepath.Join(dir, "overlay.secret")
	secret, err := auth.CreateSecretFile(path)
	if err != nil {
		return "", nil, err
	}
	return path, secret, nil
}

// Start starts a super peer and waits until it is ready.
func Start(ctx context.Context, cfg Config) (*Process, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	ports, err := freePorts(6)
	if err != nil {
		return nil, err
	}
	p := &Process{
		PeerAddr:   fmt.Sprintf("127.0.0.1:%d", ports[0]),
		GossipAddr: fmt.Sprintf("127.0.0.1:%d", ports[1]),
		Admin:      fmt.Sprintf("127.0.0.1:%d", ports[5]),
		Dir:        cfg.Dir,
		stderr:     &tailBuffer{max: 64 << 10},
		done:       make(chan struct{}),
	}
	args := []string{"superpeer", "--overlay", cfg.Overlay, "--data-dir", cfg.Dir, "--secret-file", cfg.SecretFile,
		"--bind", "127.0.0.1", "--peer-port", strconv.Itoa(ports[0]), "--gossip-port", strconv.Itoa(ports[1]),
		"--sip-port", strconv.Itoa(ports[2]), "--sips-port", strconv.Itoa(ports[3]), "--turn-port", strconv.Itoa(ports[4]),
		"--turn-relay-ports", fmt.Sprintf("%d-%d", 40000+ports[4]%20000, 40000+ports[4]%20000+20),
		"--admin", p.Admin, "--log-format", "json", "--log-level", "warn"}
	for _, j := range cfg.Join {
		args = append(args, "--join", j)
	}
	args = append(args, cfg.Args...)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = cfg.Dir
	p.cmd.Env = append(cleanEnv(), cfg.Env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start super peer: %w", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	if err := p.waitReady(ctx); err != nil {
		p.Kill()
		return nil, err
	}
	return p, nil
}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "P2PSIP_") {
			env = append(env, kv)
		}
	}
	return env
}

func (p *Process) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Admin+"/readyz", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("super peer exited: %v\n%s", p.err, p.stderr)
		case <-ctx.Done():
			return fmt.Errorf("super peer not ready: %w\n%s", ctx.Err(), p.stderr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Output is the tail of its log.
func (p *Process) Output() string { return p.stderr.String() }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// RSS is the process's resident set size in bytes (/proc/PID/status VmRSS).
func (p *Process) RSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.PID()))
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// Metrics reads the admin /metrics page: every sample without labels,
// plus labelled ones under their full "name{labels}" text.
func (p *Process) Metrics(ctx context.Context) (map[string]float64, error) {
	m, err := promtext.Get(ctx, http.DefaultClient, "http://"+p.Admin+"/metrics")
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return m, nil
}

// Kill sends SIGKILL (kill -9) and waits for the exit.
func (p *Process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL) //nolint:errcheck // it may have exited meanwhile
	<-p.done
}

// Stop sends SIGTERM, waits up to grace, then kills.
func (p *Process) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Kill()
	}
}

// freePorts returns n ports that were free a moment ago for TCP and UDP
// on 127.0.0.1 (SIP and TURN use both).
func freePorts(n int) ([]int, error) {
	var ports []int
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		held = append(held, l)
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		held = append(held, u)
		ports = append(ports, port)
	}
	return ports, nil
}

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// CPU is the processor time a process (pid; 0 for this one) has used,
// summed over its threads from /proc/PID/task/*/schedstat, which is
// accurate where /proc/stat is not (see TESTING.md).
func CPU(pid int) (time.Duration, error) {
	if pid == 0 {
		pid = os.Getpid()
	}
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("cpu of %d: no schedstat", pid)
	}
	var total int64
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // a thread that just ended
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cpu of %d: %w", pid, err)
		}
		total += ns
	}
	return time.Duration(total), nil
}

// WaitMembers waits until every process's mesh has n members (its
// p2psip_mesh_members gauge), polling until ctx ends.
func WaitMembers(ctx context.Context, procs []*Process, n int) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		short := 0
		for _, p := range procs {
			mctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			m, err := p.Metrics(mctx)
			cancel()
			if err != nil || int(m["p2psip_mesh_members"]) < n {
				short++
			}
		}
		if short == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d super peers see fewer than %d members: %w", short, len(procs), n, ctx.Err())
		case <-tick.C:
		}
	}
}

// Mesh is n super peers of one overlay started by StartMesh.
type Mesh struct {
	Procs  []*Process
	Secret []byte
	CA     *auth.CA // verifies the super peers (agents' Roots)
}

// StartMesh starts n super peers of overlay with a fresh secret, their
// data directories under dir, each joining the ones before it, and waits
// (at most 30 s) until every one sees all n members. On error the ones
// started are stopped; otherwise the caller stops them (Process.Stop).
func StartMesh(ctx context.Context, dir, overlay string, n int) (*Mesh, error) {
	secretFile, secret, err := NewSecret(dir)
	if err != nil {
		return nil, err
	}
	ca, err := auth.OverlayCA(secret, overlay)
	if err != nil {
		return nil, err
	}
	m := &Mesh{Secret: secret, CA: ca}
	fail := func(err error) (*Mesh, error) {
		for _, p := range m.Procs {
			p.Stop(5 * time.Second)
		}
		return nil, err
	}
	for i := range n {
		cfg := Config{Dir: filepath.Join(dir, fmt.Sprintf("sp%d", i)), SecretFile: secretFile, Overlay: overlay}
		for _, p := range m.Procs {
			cfg.Join = append(cfg.Join, p.GossipAddr)
		}
		p, err := Start(ctx, cfg)
		if err != nil {
			return fail(err)
		}
		m.Procs = append(m.Procs, p)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := WaitMembers(wctx, m.Procs, n); err != nil {
		return fail(err)
	}
	return m, nil
}
