package overlay

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/e2e/harness"
)

// TestAgentFailoverWithRenewedCredentials: an agent that outlived the
// credentials it started with fails over with the renewed ones from its
// credentials file — with the first ones, every super peer would refuse
// it as expired and it would stay cut off.
func TestAgentFailoverWithRenewedCredentials(t *testing.T) {
	o := harness.New(t)
	sp1, sp2 := o.Start(), o.Start()
	o.WaitConverged(10 * time.Second)

	first, err := auth.Issue(o.Secret, "carol", 2*time.Second, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "credentials.json")
	writeCreds := func(c auth.Credentials, mtime time.Time) {
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	writeCreds(first, time.Now().Add(-time.Minute))
	cfg := o.AgentConfig("carol", sp1)
	cfg.Bootstrap = []string{sp1.Node.PeerAddr(), sp2.Node.PeerAddr()}
	cfg.Credentials, cfg.CredentialsFile = first, path
	a := o.RunAgent("carol", cfg)

	// A provisioning job renews the file; then the first credentials
	// expire.
	renewed, err := auth.Issue(o.Secret, "carol", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	writeCreds(renewed, time.Now())
	harness.Eventually(t, 10*time.Second, func() error {
		if _, _, err := auth.Verify(o.Secret, first.Username, first.Password, time.Now()); !errors.Is(err, auth.ErrExpired) {
			return fmt.Errorf("first credentials not expired yet (%v)", err)
		}
		return nil
	})

	att, ok := a.Uplink().Attachment()
	if !ok {
		t.Fatal("agent not attached")
	}
	victim, other := sp1, sp2
	if att.SP == sp2.Node.ID() {
		victim, other = sp2, sp1
	}
	failovers := a.Uplink().Failovers()
	o.Kill(victim)
	harness.Eventually(t, 15*time.Second, func() error {
		cur, ok := a.Uplink().Attachment()
		if !ok || cur.SP != other.Node.ID() || a.Uplink().Failovers() <= failovers {
			return errors.New("agent has not reattached to the other super peer")
		}
		return nil
	})
}
