package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
)

// TestCredSource: the TURN fallback's credentials follow a renewed
// credentials file; a file that is unreadable, names another user or
// expires earlier is ignored (with a warning), never a crash.
func TestCredSource(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Now()
	issue := func(user string, ttl time.Duration) auth.Credentials {
		c, err := auth.Issue(secret, user, ttl, now)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	path := filepath.Join(t.TempDir(), "creds.json")
	generation := 0
	write := func(b []byte) {
		generation++
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		// Distinct mtimes even on coarse clocks.
		mt := now.Add(time.Duration(generation) * time.Second)
		if err := os.Chtimes(path, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	writeCreds := func(c auth.Credentials) {
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		write(b)
	}
	first := issue("alice", time.Hour)
	writeCreds(first)
	log := zerolog.Nop()
	cs := &credSource{path: path, log: &log, cur: first}
	if got := cs.get(); got != first {
		t.Fatalf("get = %+v, want the configured credentials", got)
	}
	renewed := issue("alice", 2*time.Hour)
	writeCreds(renewed)
	if got := cs.get(); got.Username != renewed.Username {
		t.Fatalf("after renewal get = %s, want %s", got.Username, renewed.Username)
	}
	for name, b := range map[string][]byte{
		"garbage":      []byte("{not json"),
		"empty":        nil,
		"another user": mustJSON(t, issue("mallory", 3*time.Hour)),
		"older":        mustJSON(t, issue("alice", 30*time.Minute)),
	} {
		write(b)
		if got := cs.get(); got.Username != renewed.Username {
			t.Errorf("%s: get = %s, want %s kept", name, got.Username, renewed.Username)
		}
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if got := cs.get(); got.Username != renewed.Username {
		t.Errorf("file gone: get = %s, want %s kept", got.Username, renewed.Username)
	}
	if got := (&credSource{log: &log, cur: first}).get(); got != first {
		t.Errorf("no file: get = %+v, want the configured credentials", got)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
