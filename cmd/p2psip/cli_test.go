package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/e2e/harness/sipp"
)

// bin is the p2psip binary TestMain builds; the tests run it as operators
// do, as separate processes.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "p2psip-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "p2psip")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build p2psip:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// baseEnv is the test's environment without P2PSIP_* variables, so that a
// developer's shell cannot change what the tests see.
func baseEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "P2PSIP_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// result is one finished run of the binary.
type result struct {
	stdout, stderr string
	err            error
}

func (r result) String() string {
	return fmt.Sprintf("err=%v\nstdout:\n%s\nstderr:\n%s", r.err, r.stdout, r.stderr)
}

// run runs the binary in dir with args and extra environment variables.
func run(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = baseEnv(env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return result{stdout: out.String(), stderr: errb.String(), err: err}
}

// mustRun runs the binary and fails the test unless it exits 0.
func mustRun(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	r := run(t, dir, env, args...)
	if r.err != nil {
		t.Fatalf("p2psip %s: %v", strings.Join(args, " "), r)
	}
	return r
}

// mustFail runs the binary, expects a non-zero exit and stderr holding
// want, and returns stderr.
func mustFail(t *testing.T, dir string, env []string, want string, args ...string) string {
	t.Helper()
	r := run(t, dir, env, args...)
	var ee *exec.ExitError
	if !errors.As(r.err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("p2psip %s: want a non-zero exit, got %v", strings.Join(args, " "), r)
	}
	if !strings.Contains(r.stderr, want) {
		t.Fatalf("p2psip %s: stderr lacks %q: %v", strings.Join(args, " "), want, r)
	}
	if !strings.HasPrefix(r.stderr, "p2psip: ") || strings.Count(r.stderr, "\n") != 1 {
		t.Fatalf("p2psip %s: want the reason once, on one line 'p2psip: ...': %q", strings.Join(args, " "), r.stderr)
	}
	return r.stderr
}

// freePort returns a port that was free on 127.0.0.1 for TCP a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// process is a running super peer.
type process struct {
	cmd    *exec.Cmd
	stderr *sipp.OutputBuffer
	done   chan struct{}
	err    error // valid after done
}

// startSuperpeer starts `p2psip superpeer args...` in dir. Cleanup stops
// it with SIGTERM and kills it if it has not exited 5s later.
func startSuperpeer(t *testing.T, dir string, env []string, args ...string) *process {
	t.Helper()
	return startCommand(t, exec.Command(bin, append([]string{"superpeer"}, args...)...), dir, env, args)
}

// startCommand is startSuperpeer for a command that runs the super peer
// in a way of its own (args are what the log on failure names it by).
func startCommand(t *testing.T, cmd *exec.Cmd, dir string, env []string, args []string) *process {
	t.Helper()
	cmd.Dir = dir
	cmd.Env = baseEnv(env...)
	p := &process{cmd: cmd, stderr: &sipp.OutputBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stderr, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(5 * time.Second)
		if t.Failed() {
			t.Logf("super peer %v output:\n%s", args, p.stderr)
		}
	})
	return p
}

// waitOutput reports whether the process's output holds s within
// timeout. A line the process wrote before it answered on the network may
// not be in the buffer yet: os/exec copies the pipe in a goroutine of its
// own.
func (p *process) waitOutput(s string, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); !strings.Contains(p.stderr.String(), s); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// stop sends SIGTERM and waits up to grace, then kills. It returns the
// exit error, or an error if the process had to be killed.
func (p *process) stop(grace time.Duration) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck // it may have exited meanwhile
	select {
	case <-p.done:
		return p.err
	case <-time.After(grace):
		p.cmd.Process.Kill() //nolint:errcheck
		<-p.done
		return fmt.Errorf("killed after %v without exiting on SIGTERM", grace)
	}
}

// statusDoc is what `p2psip status --json` prints.
type statusDoc struct {
	Status struct {
		PeerID     string `json:"peer_id"`
		Overlay    string `json:"overlay"`
		PeerAddr   string `json:"peer_addr"`
		GossipAddr string `json:"gossip_addr"`
		Ready      bool   `json:"ready"`
	} `json:"status"`
	Members []struct {
		PeerID   string `json:"peer_id"`
		PeerAddr string `json:"peer_addr"`
	} `json:"members"`
}

// waitReady polls `p2psip status` (with args, e.g. --admin ADDR, and env)
// until the super peer reports ready, and returns the status.
func waitReady(t *testing.T, p *process, dir string, env []string, args ...string) statusDoc {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	args = append([]string{"status", "--json"}, args...)
	for {
		r := run(t, dir, env, args...)
		if r.err == nil {
			var doc statusDoc
			if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
				t.Fatalf("status --json: %v\n%s", err, r.stdout)
			}
			if doc.Status.Ready {
				return doc
			}
		}
		select {
		case <-p.done:
			t.Fatalf("super peer exited: %v\n%s", p.err, p.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("super peer not ready in time; last status: %v", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestClientCommands runs a super peer and drives it with credentials
// issue, record put/get/rm and status, as the contract describes them.
func TestClientCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	peerPort, admin := freePort(t), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	sp := startSuperpeer(t, dir, nil, "--data-dir", data, "--peer-port", strconv.Itoa(peerPort),
		"--gossip-port", strconv.Itoa(freePort(t)), "--admin", admin, "--overlay", "p2psip.test", "--log-format", "json",
		"--sip-port", "0", "--sips-port", "0", "--turn-port", "0")
	st := waitReady(t, sp, dir, nil, "--admin", admin)
	server := fmt.Sprintf("127.0.0.1:%d", peerPort)
	if st.Status.PeerAddr != server || st.Status.Overlay != "p2psip.test" || len(st.Members) != 1 {
		t.Fatalf("status: %+v", st)
	}
	if !sp.waitOutput("p2psip credentials issue --secret-file "+filepath.Join(data, "overlay.secret"), 5*time.Second) {
		t.Errorf("no attach hint in the log:\n%s", sp.stderr)
	}
	table := mustRun(t, dir, nil, "status", "--admin", admin)
	if !strings.Contains(table.stdout, st.Status.PeerID) || !strings.Contains(table.stdout, "READY      true") {
		t.Errorf("status table:\n%s", table.stdout)
	}

	secret, ca := filepath.Join(data, "overlay.secret"), filepath.Join(data, "ca.pem")
	issued := mustRun(t, dir, nil, "credentials", "issue", "--secret-file", secret, "--user", "alice", "-o", "alice.json")
	if issued.stdout != "" || !strings.Contains(issued.stderr, "alice.json") {
		t.Errorf("credentials issue -o: %v", issued)
	}
	if fi, err := os.Stat(filepath.Join(dir, "alice.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("alice.json: %v %v", fi, err)
	}
	mustRun(t, dir, nil, "credentials", "issue", "--secret-file", secret, "--user", "bob", "-o", "bob.json")

	const aor, contact = "sip:alice@p2psip.test", "sip:alice@192.0.2.7:5060"
	conn := []string{"--server", server, "--ca-file", ca}
	alice := append([]string{"--credentials-file", "alice.json"}, conn...)
	bob := append([]string{"--credentials-file", "bob.json"}, conn...)
	cmd := func(sub string, who []string, rest ...string) []string {
		return append(append([]string{"record", sub}, who...), rest...)
	}
	mustRun(t, dir, nil, cmd("put", alice, aor, contact, "--expires", "600")...)

	// get with a flag after the AoR (hoistFlags).
	getJSON := func() record.Record {
		t.Helper()
		r := mustRun(t, dir, nil, cmd("get", alice, aor, "--json")...)
		var rec record.Record
		if err := json.Unmarshal([]byte(r.stdout), &rec); err != nil {
			t.Fatalf("record get --json: %v\n%s", err, r.stdout)
		}
		return rec
	}
	rec := getJSON()
	if rec.Name != aor || len(rec.Entries) != 1 || rec.Entries[0].Contact == nil ||
		rec.Entries[0].Contact.URI != contact || rec.Entries[0].Contact.Q != 1000 || rec.Entries[0].Writer != "alice" {
		t.Fatalf("record get: %+v", rec)
	}
	if left := time.Until(time.Unix(rec.Entries[0].Expires, 0)); left < 590*time.Second || left > 601*time.Second {
		t.Errorf("contact expires in %v, want about 600s", left)
	}
	tbl := mustRun(t, dir, nil, cmd("get", alice, aor)...)
	if !strings.Contains(tbl.stdout, contact) || !strings.Contains(tbl.stdout, "1.0") {
		t.Errorf("record get table:\n%s", tbl.stdout)
	}

	// bob may not write alice's location; her record stays as it was.
	mustFail(t, dir, nil, `403 user "bob" may not write the location of sip:alice@p2psip.test`,
		cmd("put", bob, aor, "sip:bob@192.0.2.8")...)
	if again := getJSON(); !reflect.DeepEqual(again, rec) {
		t.Fatalf("alice's record changed after bob's refused put:\n%+v\n%+v", again, rec)
	}

	// A CA of another overlay secret does not verify this super peer.
	otherSecret := filepath.Join(dir, "other.secret")
	sec, err := auth.CreateSecretFile(otherSecret)
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := auth.OverlayCA(sec, "p2psip.test")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "other-ca.pem"), otherCA.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	mustFail(t, dir, nil, "failed to verify certificate",
		"record", "get", "--server", server, "--credentials-file", "alice.json", "--ca-file", "other-ca.pem", aor)
	// Neither --ca-file nor --insecure: told what to pass.
	mustFail(t, dir, nil, "--ca-file", "record", "get", "--server", server, "--credentials-file", "alice.json", aor)
	// Credentials from another secret are refused at Hello.
	mustRun(t, dir, nil, "credentials", "issue", "--secret-file", otherSecret, "--user", "alice", "-o", "forged.json")
	mustFail(t, dir, nil, "401", cmd("get", append([]string{"--credentials-file", "forged.json"}, conn...), aor)...)

	mustFail(t, dir, nil, "has no contact sip:nobody@192.0.2.99", cmd("rm", alice, aor, "sip:nobody@192.0.2.99")...)
	r := mustRun(t, dir, nil, cmd("rm", alice, aor, contact)...)
	if !strings.Contains(r.stdout, "removed") {
		t.Errorf("record rm: %v", r)
	}
	mustFail(t, dir, nil, "404", cmd("get", alice, aor)...)
}

// TestCredentialsJSON checks `credentials issue --json` against the
// contract and the credentials verifier.
func TestCredentialsJSON(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "overlay.secret")
	secret, err := auth.CreateSecretFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r := mustRun(t, dir, nil, "credentials", "issue", "--secret-file", path, "--user", "alice", "--ttl", "1h", "--json")
	var doc map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("--json output: %v\n%s", err, r.stdout)
	}
	for _, k := range []string{"user", "username", "password", "expires"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("--json output lacks %q: %s", k, r.stdout)
		}
	}
	var c auth.Credentials
	if err := json.Unmarshal([]byte(r.stdout), &c); err != nil {
		t.Fatal(err)
	}
	if want := strconv.FormatInt(c.Expires.Unix(), 10) + ":alice"; c.User != "alice" || c.Username != want {
		t.Errorf("credentials %+v, want username %q", c, want)
	}
	if left := time.Until(c.Expires); left < 59*time.Minute || left > time.Hour+time.Second {
		t.Errorf("expires in %v, want 1h", left)
	}
	if _, _, err := auth.Verify(secret, c.Username, c.Password, time.Now()); err != nil {
		t.Errorf("issued credentials do not verify: %v", err)
	}
	// The environment stands in for flags.
	r = mustRun(t, dir, []string{"P2PSIP_SECRET_FILE=" + path, "P2PSIP_USER=bob"}, "credentials", "issue")
	if !strings.Contains(r.stdout, ":bob") {
		t.Errorf("credentials issue from env: %v", r)
	}
	mustFail(t, dir, nil, "--user", "credentials", "issue", "--secret-file", path)
	mustFail(t, dir, nil, "bad user name", "credentials", "issue", "--secret-file", path, "--user", "a@b")
}

// TestSuperpeerConfigFile starts a super peer from a YAML file and checks
// the precedence flag > env > file > default, P2PSIP_ADMIN for `status`,
// and a graceful exit on SIGTERM.
func TestSuperpeerConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	envPeer, flagGossip := freePort(t), freePort(t)
	conf := fmt.Sprintf(`# every key is a flag name
overlay: conf.test
data-dir: data          # relative to this file
admin: %s
peer-port: %d           # overridden by P2PSIP_PEER_PORT
gossip-port: %d         # overridden by P2PSIP_GOSSIP_PORT, itself overridden by --gossip-port
replicas: 1
log-format: console
log-level: info
sip-port: 0             # a free port, like sips-port
sips-port: 0
turn-port: 0
`, admin, freePort(t), freePort(t))
	confDir := filepath.Join(dir, "etc")
	if err := os.Mkdir(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(confDir, "superpeer.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	sp := startSuperpeer(t, dir, []string{
		fmt.Sprintf("P2PSIP_PEER_PORT=%d", envPeer),
		fmt.Sprintf("P2PSIP_GOSSIP_PORT=%d", freePort(t)),
	}, "--config", confPath, "--gossip-port", strconv.Itoa(flagGossip))

	// status finds the admin API through the environment alone.
	st := waitReady(t, sp, dir, []string{"P2PSIP_ADMIN=" + admin})
	if st.Status.Overlay != "conf.test" {
		t.Errorf("overlay %q, want the file's conf.test", st.Status.Overlay)
	}
	if want := fmt.Sprintf("127.0.0.1:%d", envPeer); st.Status.PeerAddr != want {
		t.Errorf("peer addr %s, want %s (env beats file)", st.Status.PeerAddr, want)
	}
	if want := fmt.Sprintf("127.0.0.1:%d", flagGossip); st.Status.GossipAddr != want {
		t.Errorf("gossip addr %s, want %s (flag beats env and file)", st.Status.GossipAddr, want)
	}
	if _, err := os.Stat(filepath.Join(confDir, "data", "ca.pem")); err != nil {
		t.Errorf("data-dir of the file is not relative to the file: %v", err)
	}
	sp.waitOutput("INF", 5*time.Second)
	if out := sp.stderr.String(); strings.Contains(out, `{"level"`) || !strings.Contains(out, "INF") {
		t.Errorf("log-format console from the file not honoured:\n%s", out)
	}
	if err := sp.stop(5 * time.Second); err != nil {
		t.Fatalf("SIGTERM: want exit status 0, got %v", err)
	}
	if !strings.Contains(sp.stderr.String(), "left the overlay") {
		t.Errorf("no graceful leave on SIGTERM")
	}

	// A misspelt key is an error, not silently ignored.
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("peer_port: 6084\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustFail(t, dir, nil, "unknown keys peer_port", "superpeer", "--config", bad)
	mustFail(t, dir, nil, "want a .yaml, .yml or .toml file", "superpeer", "--config", filepath.Join(dir, "x.ini"))
}

// TestConfigFileFormats runs the superpeer flags and loadConfig in
// process, with a stand-in Action, for TOML and YAML and the precedence.
func TestConfigFileFormats(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct{ body, overlay string }{
		"c.toml": {"overlay = \"toml.test\"\npeer-port = 7001\njoin = [\"192.0.2.1:7946\", \"192.0.2.2:7946\"]\nsecret-file = \"s/overlay.secret\"\n", "toml.test"},
		"c.yml":  {"overlay: yaml.test\npeer-port: 7001\njoin: [192.0.2.1:7946, 192.0.2.2:7946]\nsecret-file: s/overlay.secret\n", "yaml.test"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name)
			if err := os.WriteFile(path, []byte(tc.body), 0o644); err != nil {
				t.Fatal(err)
			}
			got := map[string]any{}
			flags := superpeerFlags()
			app := &cli.App{Name: "p2psip", Commands: []*cli.Command{{
				Name: "superpeer", Flags: append(flags, configFlag()), Before: loadConfig(flags),
				Action: func(c *cli.Context) error {
					got["overlay"], got["peer-port"], got["gossip-port"] = c.String("overlay"), c.Int("peer-port"), c.Int("gossip-port")
					got["join"], got["secret-file"] = c.StringSlice("join"), c.Path("secret-file")
					return nil
				},
			}}}
			t.Setenv("P2PSIP_PEER_PORT", "7002")
			if err := app.Run([]string{"p2psip", "superpeer", "--config", path}); err != nil {
				t.Fatal(err)
			}
			want := map[string]any{
				"overlay":     tc.overlay,
				"peer-port":   7002, // env beats file
				"gossip-port": 7946, // default
				"join":        []string{"192.0.2.1:7946", "192.0.2.2:7946"},
				"secret-file": filepath.Join(dir, "s", "overlay.secret"), // relative to the file
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got %v\nwant %v", got, want)
			}
		})
	}
}

func TestHoistFlags(t *testing.T) {
	app := newApp()
	for _, tc := range []struct{ in, want string }{
		{"p2psip record get --server X sip:a@b --json", "p2psip record get --server X --json sip:a@b"},
		{"p2psip record get sip:a@b --server X --ca-file C", "p2psip record get --server X --ca-file C sip:a@b"},
		{"p2psip record put sip:a@b sip:c@d --expires 60", "p2psip record put --expires 60 sip:a@b sip:c@d"},
		{"p2psip record put sip:a@b --expires=60 sip:c@d", "p2psip record put --expires=60 sip:a@b sip:c@d"},
		{"p2psip record rm sip:a@b -- --odd", "p2psip record rm -- sip:a@b --odd"},
		{"p2psip record get sip:a@b --bogus", "p2psip record get --bogus sip:a@b"},
		{"p2psip service find turn --json --overlay o", "p2psip service find --json --overlay o turn"},
		{"p2psip credentials issue --user a -o f.json", "p2psip credentials issue --user a -o f.json"},
		{"p2psip nosuch a --b", "p2psip nosuch a --b"},
		{"p2psip record", "p2psip record"},
		{"p2psip", "p2psip"},
	} {
		if got := strings.Join(hoistFlags(app, strings.Fields(tc.in)), " "); got != tc.want {
			t.Errorf("hoistFlags(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestUsageErrors checks that mistakes exit non-zero with one reason line.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mustFail(t, dir, nil, "flag provided but not defined: -bogus", "record", "get", "sip:a@b.c", "--bogus")
	mustFail(t, dir, nil, `unknown command "nosuch"`, "nosuch")
	mustFail(t, dir, nil, `unknown command "nosuch"`, "record", "nosuch")
	mustFail(t, dir, nil, "--credentials-file", "record", "get", "sip:a@b.c")
	mustFail(t, dir, nil, "--overlay", "service", "find", "turn", "--credentials-file", "x.json")
	mustFail(t, dir, nil, "connection refused", "status", "--admin", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
}

// A contact is removed by its URI or by its entry's key, which is the
// phone's +sip.instance when it sent one.
func TestContactKeys(t *testing.T) {
	const inst = "<urn:uuid:00000000-0000-0000-0000-000000000001>"
	rec := &record.Record{Kind: record.KindLocation, Name: "sip:alice@p2psip.test", Entries: []record.Entry{
		{Key: inst, Contact: &record.Contact{URI: "sip:alice@192.0.2.10:5060"}},
		{Key: "sip:alice@192.0.2.11:5060", Contact: &record.Contact{URI: "sip:alice@192.0.2.11:5060"}},
	}}
	for contact, want := range map[string][]string{
		"sip:alice@192.0.2.10:5060": {inst},
		inst:                        {inst},
		"sip:alice@192.0.2.11:5060": {"sip:alice@192.0.2.11:5060"},
		"sip:alice@192.0.2.12:5060": nil,
	} {
		if got := contactKeys(rec, contact); !reflect.DeepEqual(got, want) {
			t.Errorf("contactKeys(%s) = %v, want %v", contact, got, want)
		}
	}
}
