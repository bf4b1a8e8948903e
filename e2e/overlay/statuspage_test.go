package overlay

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/superpeer"
)

// spNode matches one super peer drawn on the status page's ring.
var spNode = regexp.MustCompile(`<g class="sp (up|down)( self)?" data-peer="([0-9a-f]+)"`)

// TestStatusPage renders the admin status page of a three-super-peer overlay
// in headless Chromium (Debian package chromium), then kills one super peer
// and checks that the page shows it down and lists the departure.
// P2PSIP_STATUS_SCREENSHOT names a PNG to keep a screenshot of the page
// after the kill (default: a temporary file).
func TestStatusPage(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (Debian package chromium; e2e/setup-deps.sh installs it as root)")
	}
	o := harness.New(t)
	o.Tune = func(c *superpeer.Config) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		c.Admin, c.AdminListener = l.Addr().String(), l
	}
	sps := []*harness.SP{o.Start(), o.Start(), o.Start()}
	o.WaitConverged(15 * time.Second)
	url := "http://" + sps[0].Node.AdminAddr() + "/"

	render := func(extra ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		args := append([]string{
			"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
			"--no-first-run", "--no-default-browser-check", "--user-data-dir=" + t.TempDir(),
			"--virtual-time-budget=3000",
		}, extra...)
		cmd := exec.CommandContext(ctx, chromium, append(args, url)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("chromium %v: %v\n%s", extra, err, stderr.String())
		}
		return stdout.String()
	}
	// count returns the Peer-IDs drawn up and down.
	count := func(dom string) (up, down []string) {
		for _, m := range spNode.FindAllStringSubmatch(dom, -1) {
			if m[1] == "up" {
				up = append(up, m[3])
			} else {
				down = append(down, m[3])
			}
		}
		return up, down
	}

	harness.Eventually(t, 30*time.Second, func() error {
		dom := render("--dump-dom")
		up, down := count(dom)
		if len(up) != 3 || len(down) != 0 {
			return fmt.Errorf("page shows %d up, %d down; want 3 up", len(up), len(down))
		}
		if !strings.Contains(dom, `class="sp up self" data-peer="`+sps[0].Node.ID().String()+`"`) {
			return fmt.Errorf("page does not mark %s as itself", sps[0].Node.ID().Short())
		}
		return nil
	})

	killed := sps[2]
	o.Kill(killed)
	o.WaitConverged(15 * time.Second)
	var dom string
	harness.Eventually(t, 30*time.Second, func() error {
		dom = render("--dump-dom")
		up, down := count(dom)
		if len(up) != 2 || len(down) != 1 || down[0] != killed.Node.ID().String() {
			return fmt.Errorf("page shows up %v, down %v; want 2 up and %s down", up, down, killed.Node.ID().Short())
		}
		return nil
	})
	if !strings.Contains(dom, `class="event departed"`) || !strings.Contains(dom, killed.Node.ID().Short()+" departed") {
		t.Errorf("departure of %s not listed under recent failovers", killed.Node.ID().Short())
	}

	shot := os.Getenv("P2PSIP_STATUS_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "status.png")
	}
	render("--screenshot="+shot, "--window-size=1200,800", "--hide-scrollbars")
	if fi, err := os.Stat(shot); err != nil || fi.Size() < 1000 {
		t.Errorf("screenshot %s: %v", shot, err)
	}
}
