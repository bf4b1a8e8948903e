package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

var updateExamples = flag.Bool("update-examples", false, "rewrite deploy/config/*.example.yaml from `p2psip config example`")

// configExample runs `p2psip config example --role role` in process.
func configExample(t *testing.T, role string) string {
	t.Helper()
	app := newApp()
	var out bytes.Buffer
	app.Writer = &out
	if err := app.Run([]string{"p2psip", "config", "example", "--role", role}); err != nil {
		t.Fatalf("config example --role %s: %v", role, err)
	}
	return out.String()
}

// TestConfigExampleFiles keeps deploy/config/ROLE.example.yaml equal to the
// generated example (go test -run TestConfigExampleFiles -update-examples
// rewrites them).
func TestConfigExampleFiles(t *testing.T) {
	for _, role := range []string{"superpeer", "peer"} {
		got := configExample(t, role)
		path := filepath.Join("..", "..", "deploy", "config", role+".example.yaml")
		if *updateExamples {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if got != string(want) {
			t.Errorf("%s differs from `p2psip config example --role %s`; regenerate with\n"+
				"  go test ./cmd/p2psip -run TestConfigExampleFiles -update-examples", path, role)
		}
	}
}

var settingLine = regexp.MustCompile(`(?m)^#([a-z][a-z0-9-]*: )`)

// TestConfigExampleLoads uncomments every key of the example, loads it
// through loadConfig, and checks that every flag of the role appears and
// that the loaded values are the defaults.
func TestConfigExampleLoads(t *testing.T) {
	for _, role := range []string{"superpeer", "peer"} {
		t.Run(role, func(t *testing.T) {
			for _, e := range os.Environ() {
				if strings.HasPrefix(e, "P2PSIP_") {
					t.Setenv(strings.SplitN(e, "=", 2)[0], "")
					os.Unsetenv(strings.SplitN(e, "=", 2)[0])
				}
			}
			example := configExample(t, role)
			body := settingLine.ReplaceAllString(example, "$1")
			flags, err := roleFlags(role)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range flags {
				if !strings.Contains(body, "\n"+f.Names()[0]+": ") {
					t.Errorf("example lacks key %s", f.Names()[0])
				}
			}
			dir := t.TempDir()
			path := filepath.Join(dir, role+".yaml")
			if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			run := func(args ...string) map[string]string {
				t.Helper()
				got := map[string]string{}
				flags, _ := roleFlags(role)
				app := &cli.App{Name: "p2psip", Commands: []*cli.Command{{
					Name: role, Flags: append(flags, configFlag()), Before: loadConfig(flags),
					Action: func(c *cli.Context) error {
						for _, f := range flags {
							v := c.Value(f.Names()[0])
							if s, ok := v.(cli.StringSlice); ok {
								v = s.Value()
							}
							got[f.Names()[0]] = fmt.Sprint(v)
						}
						return nil
					},
				}}}
				if err := app.Run(append([]string{"p2psip", role}, args...)); err != nil {
					t.Fatalf("load %s: %v\n%s", path, err, body)
				}
				return got
			}
			loaded, defaults := run("--config", path), run()
			for name, def := range defaults {
				got := loaded[name]
				// Relative paths in the file are relative to the file.
				if def != "" && !filepath.IsAbs(def) && got == filepath.Join(dir, def) {
					continue
				}
				if got != def {
					t.Errorf("%s: loaded %q, default %q", name, got, def)
				}
			}
		})
	}
}

func TestConfigExampleBadRole(t *testing.T) {
	app := newApp()
	app.Writer = &bytes.Buffer{}
	err := app.Run([]string{"p2psip", "config", "example", "--role", "nosuch"})
	if err == nil || !strings.Contains(err.Error(), "want superpeer or peer") {
		t.Fatalf("err = %v", err)
	}
}
