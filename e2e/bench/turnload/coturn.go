package turnload

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/p2psip/p2psip/e2e/harness/sipp"
)

// Coturn is a running coturn (Debian package coturn) on 127.0.0.1 with
// TURN-REST authentication (use-auth-secret), started by StartCoturn.
type Coturn struct {
	// Addr is its UDP host:port.
	Addr string
	// Realm and Secret are what clients authenticate with.
	Realm  string
	Secret []byte
}

// CoturnAvailable says why coturn cannot run here, or "" when it can.
func CoturnAvailable() string {
	if _, err := exec.LookPath("turnserver"); err != nil {
		return "turnserver not installed (Debian package coturn; make deps installs it)"
	}
	return ""
}

// StartCoturn runs turnserver in the foreground as a child process in
// its own process group: UDP and TCP on a free loopback port, no TLS, DTLS
// or CLI, relays on 127.0.0.1, loopback peers allowed, no configuration
// file or database outside the test's directory. It is killed, with
// anything it started, at test cleanup; it skips tb when coturn is not
// installed.
func StartCoturn(tb testing.TB, realm string, secret []byte) *Coturn {
	tb.Helper()
	if why := CoturnAvailable(); why != "" {
		tb.Skip(why)
	}
	dir := tb.TempDir()
	port := sipp.FreeUDPPort(tb)
	out := &sipp.OutputBuffer{}
	cmd := exec.Command("turnserver", "-n",
		"--listening-ip", "127.0.0.1", "--listening-port", strconv.Itoa(port),
		"--relay-ip", "127.0.0.1", "--min-port", "40000", "--max-port", "48999",
		"--use-auth-secret", "--static-auth-secret", string(secret), "--realm", realm,
		"--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls",
		"--pidfile", filepath.Join(dir, "turnserver.pid"), "--userdb", filepath.Join(dir, "turndb"),
		"--log-file", "stdout", "--simple-log", "--no-software-attribute")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start turnserver: %v", err)
	}
	done := make(chan struct{})
	var werr error
	go func() {
		werr = cmd.Wait()
		close(done)
	}()
	tb.Cleanup(func() {
		pgid := cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGTERM) //nolint:errcheck // may have exited
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-pgid, syscall.SIGKILL) //nolint:errcheck
			<-done
		}
		syscall.Kill(-pgid, syscall.SIGKILL) //nolint:errcheck // leftovers, usually none
	})
	deadline := time.Now().Add(10 * time.Second)
	for !sipp.Bound(port) {
		select {
		case <-done:
			tb.Fatalf("turnserver exited: %v\n%s", werr, tail(out.String()))
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("turnserver not listening after 10s\n%s", tail(out.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &Coturn{Addr: fmt.Sprintf("127.0.0.1:%d", port), Realm: realm, Secret: secret}
}

func tail(s string) string {
	if len(s) > 4000 {
		return "..." + s[len(s)-4000:]
	}
	return s
}
