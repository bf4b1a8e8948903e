package turnload

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

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
	cmd := exec.Command("turnserver", "-n",
		"--listening-ip", "127.0.0.1", "--listening-port", strconv.Itoa(port),
		"--relay-ip", "127.0.0.1", "--min-port", "40000", "--max-port", "48999",
		"--use-auth-secret", "--static-auth-secret", string(secret), "--realm", realm,
		"--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls",
		"--pidfile", filepath.Join(dir, "turnserver.pid"), "--userdb", filepath.Join(dir, "turndb"),
		"--log-file", "stdout", "--simple-log", "--no-software-attribute")
	cmd.Dir = dir
	sipp.StartServer(tb, "turnserver", cmd, port)
	return &Coturn{Addr: fmt.Sprintf("127.0.0.1:%d", port), Realm: realm, Secret: secret}
}
