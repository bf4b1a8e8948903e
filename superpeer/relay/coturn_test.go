package relay

import (
	"context"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// coturn's own clients against our server: turnutils_stunclient and
// turnutils_uclient (Debian package coturn; e2e/setup-deps.sh installs it).

func needCoturn(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: install the Debian package coturn (e2e/setup-deps.sh) to run the interop test", tool)
		}
	}
}

// runTool runs a coturn tool bounded by timeout (killed when it passes or
// the test ends) and returns its combined output and exit error.
func runTool(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: timed out after %v\n%s", name, strings.Join(args, " "), timeout, out)
	}
	t.Logf("%s %s:\n%s", name, strings.Join(args, " "), out)
	return string(out), err
}

// echoPeer answers every datagram with itself, like coturn's
// turnutils_peer.
func echoPeer(t testing.TB) *net.UDPAddr {
	p := peer(t)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := p.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = p.WriteTo(buf[:n], from)
		}
	}()
	return p.LocalAddr().(*net.UDPAddr)
}

func TestCoturnSTUNClient(t *testing.T) {
	needCoturn(t, "turnutils_stunclient")
	ts := startServer(t, nil)
	out, err := runTool(t, 20*time.Second, "turnutils_stunclient", "-p", strconv.Itoa(ts.udp.Port), "127.0.0.1")
	if err != nil {
		t.Fatalf("turnutils_stunclient: %v", err)
	}
	if !strings.Contains(out, "UDP reflexive addr: 127.0.0.1:") {
		t.Fatal("turnutils_stunclient printed no reflexive address")
	}
}

func TestCoturnUClient(t *testing.T) {
	needCoturn(t, "turnutils_uclient")
	ts := startServer(t, func(c *Config) { c.AllowLoopback = true })
	echo := echoPeer(t)
	alice := issue(t, "alice")
	udpPort, tcpPort := strconv.Itoa(ts.udp.Port), strconv.Itoa(ts.tcp.Port)
	// -c: no RTCP allocation (it would send to the echo port + 1);
	// -n 5 messages per client; -e/-r the echo peer.
	toEcho := []string{"-c", "-n", "5", "-m", "1", "-e", "127.0.0.1", "-r", strconv.Itoa(echo.Port)}
	cases := map[string]struct {
		args     []string
		wantRecv string // a line uclient prints on success
	}{
		"udp, EXPIRY:USER and password": {
			append([]string{"-p", udpPort, "-u", alice.Username, "-w", alice.Password}, toEcho...),
			"tot_recv_msgs=5",
		},
		"udp, REST secret (-W)": {
			append([]string{"-p", udpPort, "-W", string(testSecret), "-u", "bob"}, toEcho...),
			"tot_recv_msgs=5",
		},
		"tcp": {
			append([]string{"-t", "-p", tcpPort, "-u", alice.Username, "-w", alice.Password}, toEcho...),
			"tot_recv_msgs=5",
		},
		"client to client through two relays": {
			[]string{"-p", udpPort, "-u", alice.Username, "-w", alice.Password, "-c", "-y", "-n", "5", "-m", "2"},
			"tot_recv_msgs=10",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			out, err := runTool(t, 30*time.Second, "turnutils_uclient", append(tc.args, "127.0.0.1")...)
			if err != nil {
				t.Fatalf("turnutils_uclient: %v", err)
			}
			if !strings.Contains(out, tc.wantRecv) || !strings.Contains(out, "Total lost packets 0 ") {
				t.Fatalf("turnutils_uclient did not relay every message (want %q and no loss)", tc.wantRecv)
			}
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		t.Parallel()
		before := ts.refused(reasonAuth)
		out, err := runTool(t, 30*time.Second, "turnutils_uclient",
			append([]string{"-p", udpPort, "-u", alice.Username, "-w", "wrong"}, append(toEcho, "127.0.0.1")...)...)
		if err == nil || !strings.Contains(out, "Cannot complete Allocation") {
			t.Fatalf("turnutils_uclient with a wrong password: %v", err)
		}
		if ts.refused(reasonAuth) <= before {
			t.Fatal("no auth refusal counted")
		}
	})
	// uclient exits without deallocating; Run closes what it left.
}
