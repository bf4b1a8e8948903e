package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/p2psip/p2psip/e2e/harness/sipp"
)

// TestDemo runs `p2psip demo` as a newcomer does: it places its test call,
// serves the status page of a three-member mesh while it runs, and stops
// cleanly on Ctrl-C.
func TestDemo(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cmd := exec.Command(bin, "demo")
	cmd.Dir = dir
	cmd.Env = baseEnv()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &sipp.OutputBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		io.Copy(io.Discard, stdout) //nolint:errcheck
		done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill() //nolint:errcheck // normally exited already
		if t.Failed() {
			t.Logf("demo stderr:\n%s", stderr)
		}
	})

	var out []string
	var statusURL string
	callOK, running := false, false
	timeout := time.After(60 * time.Second)
	urlRE := regexp.MustCompile(`status page: (http://\S+)`)
	for !running {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("demo exited early: %v\n%s", <-done, strings.Join(out, "\n"))
			}
			out = append(out, l)
			if m := urlRE.FindStringSubmatch(l); m != nil {
				statusURL = m[1]
			}
			if strings.HasPrefix(l, "test call") {
				callOK = strings.Contains(l, ": OK (responses 180 200")
			}
			running = strings.Contains(l, "Ctrl-C stops it")
		case <-timeout:
			t.Fatalf("demo not running after 60s:\n%s", strings.Join(out, "\n"))
		}
	}
	if !callOK || statusURL == "" {
		t.Fatalf("want a successful test call and a status page URL:\n%s", strings.Join(out, "\n"))
	}
	if n := strings.Count(strings.Join(out, "\n"), "  super peer sp"); n != 3 {
		t.Errorf("%d super peers listed, want 3:\n%s", n, strings.Join(out, "\n"))
	}

	// The status page and the API behind it: three members.
	page := httpGet(t, statusURL)
	if !strings.Contains(strings.ToLower(page), "<html") {
		t.Errorf("status page is not HTML: %.200s", page)
	}
	var members []json.RawMessage
	if err := json.Unmarshal([]byte(httpGet(t, strings.TrimSuffix(statusURL, "/")+"/v1/members")), &members); err != nil || len(members) != 3 {
		t.Errorf("/v1/members: %d members (%v), want 3", len(members), err)
	}

	cmd.Process.Signal(syscall.SIGINT) //nolint:errcheck
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("demo after Ctrl-C: %v (want exit status 0)", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("demo did not stop within 20s of Ctrl-C")
	}
	for l := range lines {
		out = append(out, l)
	}
	if !strings.Contains(strings.Join(out, "\n"), "stopping") {
		t.Errorf("no 'stopping' line:\n%s", strings.Join(out, "\n"))
	}

	mustFail(t, dir, nil, `config: admin: "x:y": invalid port`, "demo", "--admin", "x:y")
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if res.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, res.Status)
	}
	return string(b)
}
