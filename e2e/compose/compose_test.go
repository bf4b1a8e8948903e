// Package compose starts deploy/compose/compose.yaml on the local Docker
// engine, puts a phone on each agent's LAN and places calls across the
// overlay. There is no image registry here: both images (the p2psip one
// from deploy/docker/Dockerfile, and the phone's) are FROM scratch around
// static binaries this test builds.
package compose

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

const domain = "p2psip.lab"

// TestComposeStack brings the lab overlay up (three super peers on the
// backbone, the agents of alice and bob each on its own internal LAN), adds
// a phone on each LAN that registers through its agent, and places calls
// both ways: bob's phone can reach alice's only through the agents and
// the overlay. Then `docker stop` drains super peer 1 and the calls are
// placed again. Everything it creates (containers, networks, volumes,
// images) is removed at the end, also on failure.
func TestComposeStack(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the Docker compose stack")
	}
	compose := composeCommand(t)
	removeStale(t)
	repo := repoRoot(t)
	start := time.Now()

	id := randHex(t, 4)
	project := "p2psip-e2e-" + id
	image := "p2psip-e2e-" + id + ":compose"
	phoneImage := "p2psip-e2e-phone-" + id + ":latest"

	// The build context: bin/p2psip and deploy/docker as in the repository,
	// so the real Dockerfile builds the image.
	ctxDir := t.TempDir()
	mustMkdir(t, filepath.Join(ctxDir, "bin"), filepath.Join(ctxDir, "deploy", "docker", "data"),
		filepath.Join(ctxDir, "deploy", "compose"), filepath.Join(ctxDir, "phone"))
	copyFile(t, filepath.Join(repo, "deploy", "docker", "Dockerfile"), filepath.Join(ctxDir, "deploy", "docker", "Dockerfile"))
	writeFile(t, filepath.Join(ctxDir, "deploy", "docker", "data", ".keep"), nil, 0o644)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, b := range []struct{ pkg, out string }{
		{"./cmd/p2psip", filepath.Join(ctxDir, "bin", "p2psip")},
		{"./e2e/compose/phone", filepath.Join(ctxDir, "phone", "phone")},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = goBuildStatic(repo, b.pkg, b.out)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(ctxDir, "phone", "Dockerfile"),
		[]byte("FROM scratch\nCOPY phone /phone\nUSER 65532:65532\nENTRYPOINT [\"/phone\"]\n"), 0o644)
	t.Logf("static binaries built in %s", time.Since(start).Round(time.Millisecond))

	// Teardown first, so it runs whatever fails below.
	file := filepath.Join(ctxDir, "deploy", "compose", "compose.yaml")
	run := func(timeout time.Duration, args ...string) (string, error) {
		return runCmd(timeout, append(append(compose[1:len(compose):len(compose)], "-p", project, "-f", file), args...), compose[0])
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := run(30*time.Second, "logs", "--no-color", "--tail", "60")
			t.Logf("compose logs:\n%s", out)
		}
		out, err := run(90*time.Second, "down", "--volumes", "--remove-orphans", "--rmi", "all", "-t", "5")
		if err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
		// down removes the images services use; these catch an image whose
		// service never got created.
		for _, img := range []string{image, phoneImage} {
			runCmd(30*time.Second, []string{"rmi", "-f", img}, "docker") //nolint:errcheck // usually gone already
		}
		if out, _ := runCmd(10*time.Second, []string{"ps", "-aq", "--filter", "label=com.docker.compose.project=" + project}, "docker"); strings.TrimSpace(out) != "" {
			t.Errorf("containers of %s left: %s", project, out)
		}
	})

	for _, b := range []struct{ img, dockerfile, dir string }{
		{image, filepath.Join(ctxDir, "deploy", "docker", "Dockerfile"), ctxDir},
		{phoneImage, filepath.Join(ctxDir, "phone", "Dockerfile"), filepath.Join(ctxDir, "phone")},
	} {
		if out, err := runCmd(2*time.Minute, []string{"build", "-q", "-f", b.dockerfile, "-t", b.img, b.dir}, "docker"); err != nil {
			t.Fatalf("docker build %s: %v\n%s", b.img, err, out)
		}
	}

	subnet := freeSubnet(t)
	writeComposeFile(t, filepath.Join(repo, "deploy", "compose", "compose.yaml"), file, image, phoneImage, subnet)
	// The secret must be readable by the containers' uid 65532 (a lab).
	writeFile(t, filepath.Join(ctxDir, "deploy", "compose", "overlay.secret"), []byte(randHex(t, 32)+"\n"), 0o644)

	// up -d returns once the super peers are healthy and everything else
	// has started.
	if out, err := run(3*time.Minute, "up", "-d", "--no-build"); err != nil {
		t.Fatalf("compose up: %v\n%s", err, out)
	}
	t.Logf("stack up in %s (subnet %s.0/24)", time.Since(start).Round(time.Millisecond), subnet)

	for _, p := range []string{"phone-alice", "phone-bob"} {
		waitLog(t, run, p, `"message":"registered"`, 90*time.Second)
	}
	t.Logf("phones registered at %s", time.Since(start).Round(time.Millisecond))

	// The mesh as super peer 1 sees it, through the image's own CLI.
	if out, err := run(30*time.Second, "exec", "-T", "superpeer-1", "/p2psip", "status", "--admin", "127.0.0.1:6085", "--json"); err != nil {
		t.Errorf("p2psip status: %v\n%s", err, out)
	} else if n := strings.Count(out, `"peer_addr"`); n < 4 { // itself + 3 members
		t.Errorf("p2psip status on superpeer-1: want 3 members, got:\n%s", out)
	}

	const calls = 3
	// retry is how long the first call may be retried (the callee's
	// registration may still be on its way); after it, every call counts.
	callBoth := func(when, retry string) {
		t.Helper()
		for _, c := range []struct{ from, user, agent, to string }{
			{"phone-bob", "bob", "agent-bob", "alice"},
			{"phone-alice", "alice", "agent-alice", "bob"},
		} {
			out, err := run(2*time.Minute, "exec", "-T", c.from, "/phone", "call",
				"--user", c.user, "--domain", domain, "--proxy", c.agent+":5060",
				"--calls", fmt.Sprint(calls), "--timeout", retry, "sip:"+c.to+"@"+domain)
			if err != nil || !strings.Contains(out, fmt.Sprintf("RESULT ok=%d failed=0", calls)) {
				t.Fatalf("%s: %s → %s: %v\n%s", when, c.user, c.to, err, out)
			}
			t.Logf("%s: %s → %s: %d calls answered:\n%s", when, c.user, c.to, calls, out)
		}
	}
	callBoth("all up", "60s")

	// `docker stop` sends SIGTERM: super peer 1 (alice's agent bootstraps
	// there first) drains, moving its agents and handing off its records,
	// and exits 0 within stop_grace_period; calls go on without it.
	stopStart := time.Now()
	if out, err := run(60*time.Second, "stop", "superpeer-1"); err != nil {
		t.Fatalf("compose stop superpeer-1: %v\n%s", err, out)
	}
	drained := time.Since(stopStart)
	spID, _ := run(30*time.Second, "ps", "-q", "superpeer-1")
	if code, err := runCmd(30*time.Second, []string{"inspect", "-f", "{{.State.ExitCode}}", strings.TrimSpace(spID)}, "docker"); err != nil || strings.TrimSpace(code) != "0" {
		t.Errorf("superpeer-1 after SIGTERM: exit status %q (%v), want 0", strings.TrimSpace(code), err)
	}
	if out, _ := run(30*time.Second, "logs", "--no-color", "superpeer-1"); !strings.Contains(out, `"message":"left the overlay"`) {
		t.Errorf("superpeer-1 stopped without a graceful drain (no \"left the overlay\")")
	}
	t.Logf("superpeer-1 drained and stopped in %s", drained.Round(time.Millisecond))
	callBoth("superpeer-1 stopped", "0s") // no retry: a drain loses no call

	// Each answering phone logged the calls it answered.
	for _, p := range []string{"phone-alice", "phone-bob"} {
		out, _ := run(30*time.Second, "logs", "--no-color", p)
		if n := strings.Count(out, `"message":"answered"`); n < 2*calls {
			t.Errorf("%s answered %d calls, want ≥ %d", p, n, 2*calls)
		}
	}
	fmt.Printf("SUMMARY TestComposeStack: 3 super peers + 2 agents in containers, 2 phones registered, %d calls each way answered with all up and again after `docker stop` drained superpeer-1 (%s, exit 0); %s in all\n",
		calls, drained.Round(time.Millisecond), time.Since(start).Round(time.Second))
}

// composeCommand is the Compose CLI to use, or skips the test: it needs
// root (the engine's socket), a running engine and Compose v2 or v1.
func composeCommand(t *testing.T) []string {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("compose stack: Linux only")
	}
	if os.Geteuid() != 0 {
		t.Skip("compose stack: needs root for the Docker engine's socket")
	}
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("compose stack: no docker client (Debian package docker.io)")
	}
	if out, err := runCmd(20*time.Second, []string{"info", "--format", "{{.ServerVersion}}"}, "docker"); err != nil {
		t.Skipf("compose stack: Docker engine not reachable: %v %s", err, strings.TrimSpace(out))
	}
	if _, err := runCmd(20*time.Second, []string{"compose", "version"}, "docker"); err == nil {
		return []string{"docker", "compose"}
	}
	if _, err := runCmd(20*time.Second, []string{"version"}, "docker-compose"); err == nil {
		return []string{"docker-compose"}
	}
	t.Skip("compose stack: neither `docker compose` nor docker-compose (Debian package docker-compose)")
	return nil
}

// staleAge is how old a resource of an earlier run must be for
// removeStale to take it: a run takes well under this, so a resource that
// old belongs to a run that was killed before its cleanup (a go test
// -timeout), not to one running beside us.
const staleAge = 15 * time.Minute

// removeStale removes what killed earlier runs left: containers, networks
// and volumes of p2psip-e2e-* projects and p2psip-e2e-* images, older than
// staleAge.
func removeStale(t *testing.T) {
	t.Helper()
	const prefix = "p2psip-e2e-"
	stale := map[string]bool{}
	old := func(created string) bool {
		// "2026-11-25 17:23:36 +0000 UTC"
		ts, err := time.Parse("2006-01-02 15:04:05 -0700 MST", created)
		return err == nil && time.Since(ts) > staleAge
	}
	for _, kind := range []string{"ps -a", "network ls"} {
		args := append(strings.Fields(kind), "--filter", "label=com.docker.compose.project",
			"--format", `{{.ID}}|{{.Label "com.docker.compose.project"}}|{{.CreatedAt}}`)
		out, _ := runCmd(20*time.Second, args, "docker")
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.SplitN(line, "|", 3)
			if len(f) == 3 && strings.HasPrefix(f[1], prefix) && old(f[2]) {
				stale[f[1]] = true
			}
		}
	}
	for project := range stale {
		t.Logf("removing the leftovers of an earlier run: compose project %s", project)
		label := "label=com.docker.compose.project=" + project
		for _, kind := range []struct{ list, rm string }{{"ps -aq", "rm -f"}, {"network ls -q", "network rm"}, {"volume ls -q", "volume rm -f"}} {
			ids, _ := runCmd(20*time.Second, append(strings.Fields(kind.list), "--filter", label), "docker")
			if ids = strings.TrimSpace(ids); ids != "" {
				runCmd(60*time.Second, append(strings.Fields(kind.rm), strings.Fields(ids)...), "docker") //nolint:errcheck // best effort
			}
		}
	}
	out, _ := runCmd(20*time.Second, []string{"images", "--filter", "reference=" + prefix + "*", "--format", "{{.Repository}}:{{.Tag}}|{{.CreatedAt}}"}, "docker")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if img, created, ok := strings.Cut(line, "|"); ok && old(created) {
			t.Logf("removing the leftover image %s of an earlier run", img)
			runCmd(60*time.Second, []string{"rmi", "-f", img}, "docker") //nolint:errcheck // best effort
		}
	}
}

// writeComposeFile writes the repository's compose file for this run: our
// image names, no host ports published (the test does not use them, and
// they could clash with the host's), the backbone on a free subnet, and a
// phone service on each agent's LAN.
func writeComposeFile(t *testing.T, src, dst, image, phoneImage, subnet string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	services, _ := c["services"].(map[string]any)
	for name, s := range services {
		svc, _ := s.(map[string]any)
		if svc == nil {
			t.Fatalf("%s: service %s is not a mapping", src, name)
		}
		svc["image"] = image
		delete(svc, "build")
		delete(svc, "ports")
		// A crash must show as a failure, not be restarted away.
		svc["restart"] = "no"
	}
	for user, lan := range map[string]string{"alice": "lan-alice", "bob": "lan-bob"} {
		services["phone-"+user] = map[string]any{
			"image":             phoneImage,
			"read_only":         true,
			"cap_drop":          []string{"ALL"},
			"command":           []string{"serve", "--user", user, "--domain", domain, "--proxy", "agent-" + user + ":5060", "--timeout", "90s"},
			"networks":          []string{lan},
			"depends_on":        []string{"agent-" + user},
			"stop_grace_period": "2s",
		}
	}
	for k := range c {
		if strings.HasPrefix(k, "x-") {
			delete(c, k) // merged into the services already
		}
	}
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(out), "172.28.0.", subnet+".")
	if !strings.Contains(text, subnet+".0/24") {
		t.Fatalf("%s: backbone subnet 172.28.0.0/24 not found; update this test", src)
	}
	writeFile(t, dst, []byte(text), 0o644)
}

// freeSubnet picks a /24 prefix ("172.28.0") that no Docker network and
// no host route uses.
func freeSubnet(t *testing.T) string {
	t.Helper()
	used, _ := runCmd(20*time.Second, []string{"network", "inspect", "--format", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", "bridge"}, "docker")
	if ids, err := runCmd(20*time.Second, []string{"network", "ls", "-q"}, "docker"); err == nil && strings.TrimSpace(ids) != "" {
		out, _ := runCmd(20*time.Second, append([]string{"network", "inspect", "--format", "{{range .IPAM.Config}}{{.Subnet}} {{end}}"}, strings.Fields(ids)...), "docker")
		used += out
	}
	routes, _ := runCmd(10*time.Second, []string{"-4", "route"}, "ip")
	used += routes
	for second := 28; second <= 31; second++ {
		for third := 0; third < 256; third += 17 {
			p := fmt.Sprintf("172.%d.%d", second, third)
			if !strings.Contains(used, p+".") {
				return p
			}
		}
	}
	t.Fatal("no free 172.28-31.x.0/24 subnet for the backbone")
	return ""
}

// waitLog waits until service's logs match pattern.
func waitLog(t *testing.T, run func(time.Duration, ...string) (string, error), service, pattern string, timeout time.Duration) {
	t.Helper()
	re := regexp.MustCompile(regexp.QuoteMeta(pattern))
	deadline := time.Now().Add(timeout)
	for {
		out, err := run(30*time.Second, "logs", "--no-color", service)
		if err == nil && re.MatchString(out) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q in its logs after %s:\n%s", service, pattern, timeout, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func goBuildStatic(repo, pkg, out string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// runCmd runs name with args, bounded by timeout, and returns its combined
// output.
func runCmd(timeout time.Duration, args []string, name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s %s: timed out after %s", name, strings.Join(args, " "), timeout)
	}
	return buf.String(), err
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return dir
}

func randHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func mustMkdir(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func writeFile(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst, b, 0o644)
}
