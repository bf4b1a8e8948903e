package kamailio

import (
	"strings"
	"testing"
)

// Without auth_ephemeral the registrar keeps every line but the module's
// and the challenge's.
func TestStripAuth(t *testing.T) {
	cfg, err := configs.ReadFile(string(Registrar))
	if err != nil {
		t.Fatal(err)
	}
	out := StripAuth(string(cfg))
	for _, gone := range []string{"auth_ephemeral", `loadmodule "auth.so"`, "autheph_check", "auth_challenge"} {
		if strings.Contains(out, gone) {
			t.Errorf("still has %q:\n%s", gone, out)
		}
	}
	for _, kept := range []string{`save("location")`, `loadmodule "registrar.so"`, "request_route {", "405"} {
		if !strings.Contains(out, kept) {
			t.Errorf("lost %q:\n%s", kept, out)
		}
	}
	if strings.Count(out, "{") != strings.Count(out, "}") {
		t.Errorf("unbalanced braces:\n%s", out)
	}
}

func TestConfigsHavePlaceholders(t *testing.T) {
	for _, r := range []Role{Registrar, Proxy} {
		b, err := configs.ReadFile(string(r))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"@PORT@", "@MPATH@", "@CHILDREN@"} {
			if !strings.Contains(string(b), p) {
				t.Errorf("%s lacks %s", r, p)
			}
		}
	}
}
