package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestConfigValidation runs bad configurations through the binary, given
// as flags, environment variables and config files: each fails at start,
// before anything binds, with one line naming the key and where its value
// came from.
func TestConfigValidation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	creds := file("creds.json", "{}")
	conf := file("sp.yaml", "replicas: 9\nadmin: \"x:y\"\nlog-sample: fast\n")
	toml := file("sp.toml", "promotion = \"sometimes\"\nwrite-quorum = 4\n")
	peerConf := file("peer.yaml", "bootstrap: [\"sp1\"]\nrole: super\n")
	for _, tc := range []struct {
		name string
		env  []string
		want []string
		args []string
	}{
		{"flag replicas", nil, []string{"config: replicas: must be 1..7 (got 0, from --replicas)"}, []string{"superpeer", "--replicas", "0"}},
		{"env promotion", []string{"P2PSIP_PROMOTION=maybe"}, []string{`config: promotion: must be off or auto (got "maybe", from P2PSIP_PROMOTION)`}, []string{"superpeer"}},
		{"yaml file", nil, []string{
			"replicas: must be 1..7 (got 9, from " + conf + ")",
			`admin: "x:y": invalid port (from ` + conf + ")",
			`log-sample: want off or BURST/PERIOD`,
		}, []string{"superpeer", "--config", conf}},
		{"toml file", nil, []string{
			`promotion: must be off or auto (got "sometimes", from ` + toml + ")",
			"write-quorum: must be 0 (a majority) to replicas=3 (got 4, from " + toml + ")",
		}, []string{"superpeer", "--config", toml}},
		{"flag beats file", []string{"P2PSIP_REPLICAS=8"}, []string{"replicas: must be 1..7 (got 0, from --replicas)"}, []string{"superpeer", "--config", conf, "--replicas", "0"}},
		{"env beats file", []string{"P2PSIP_REPLICAS=8"}, []string{"replicas: must be 1..7 (got 8, from P2PSIP_REPLICAS)"}, []string{"superpeer", "--config", conf}},
		{"ports", nil, []string{
			"peer-port: must be 0..65535 (got 70000, from --peer-port)",
			"ports: sip-port and turn-port are both 5070",
		}, []string{"superpeer", "--peer-port", "70000", "--sip-port", "5070", "--turn-port", "5070"}},
		{"publishers", nil, []string{`publishers: "Voice Mail=vm1": service name must be`}, []string{"superpeer", "--publishers", "voicemail=vm1,Voice Mail=vm1"}},
		{"publishers pair", []string{"P2PSIP_PUBLISHERS=voicemail"}, []string{`publishers: "voicemail": want SERVICE=USER (from P2PSIP_PUBLISHERS)`}, []string{"superpeer"}},
		{"bind", nil, []string{`bind: must be an IP address (got "localhost", from --bind)`}, []string{"superpeer", "--bind", "localhost"}},
		{"wildcard bind", []string{"P2PSIP_BIND=0.0.0.0"}, []string{"advertise: is required when bind is 0.0.0.0"}, []string{"superpeer"}},
		{"overlay", nil, []string{`overlay: must be a domain name such as example.net (got "my overlay", from --overlay)`}, []string{"superpeer", "--overlay", "my overlay"}},
		{"join", nil, []string{`join: "10.0.0.1": want HOST:PORT (from --join)`}, []string{"superpeer", "--join", "10.0.0.1"}},
		{"relay ports", nil, []string{`turn-relay-ports: must be MIN-MAX within 1024-65535 (got "100-200"`}, []string{"superpeer", "--turn-relay-ports", "100-200"}},
		{"sip max waiting", []string{"P2PSIP_SIP_MAX_WAITING=-1"}, []string{"sip-max-waiting: must be ≥ 0 (got -1, from P2PSIP_SIP_MAX_WAITING)"}, []string{"superpeer"}},
		{"drain", []string{"P2PSIP_DRAIN_TIMEOUT=0s"}, []string{"drain-timeout: must be at least 1s (got 0s, from P2PSIP_DRAIN_TIMEOUT)"}, []string{"superpeer"}},
		{"secret file", nil, []string{"secret-file: " + filepath.Join(dir, "nope") + ": no such file or directory (from --secret-file)"}, []string{"superpeer", "--secret-file", filepath.Join(dir, "nope")}},
		{"sips pair", nil, []string{"sips-key-file: sips-cert-file and sips-key-file go together"}, []string{"superpeer", "--sips-cert-file", creds}},
		{"log level", []string{"P2PSIP_LOG_LEVEL=loud"}, []string{`log-level: must be trace, debug, info, warn or error (got "loud", from P2PSIP_LOG_LEVEL)`}, []string{"superpeer"}},
		{"peer file", nil, []string{
			`bootstrap: "sp1": want HOST:PORT (from ` + peerConf + ")",
			`role: must be ordinary or auto (got "super", from ` + peerConf + ")",
		}, []string{"peer", "--config", peerConf, "--credentials-file", creds, "--insecure"}},
		{"peer required", nil, []string{"credentials-file: is required", "ca-file: is required"}, []string{"peer"}},
		{"peer listen", []string{"P2PSIP_SIP_LISTEN=0.0.0.0:5060"}, []string{"sip-advertise: is required when sip-listen has no specific host"}, []string{"peer", "--credentials-file", creds, "--insecure"}},
		{"peer keepalive", nil, []string{"keepalive: must be 0 or at least 1s (got 10ms, from --keepalive)", `sip-listen: "127.0.0.1:x": invalid port (from --sip-listen)`},
			[]string{"peer", "--credentials-file", creds, "--insecure", "--keepalive", "10ms", "--sip-listen", "127.0.0.1:x"}},
		{"peer relay after", nil, []string{"relay-after: must be 0 (error frames only) or 100ms..1m (got 10ms, from --relay-after)"},
			[]string{"peer", "--credentials-file", creds, "--insecure", "--relay-after", "10ms"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stderr := mustFail(t, dir, tc.env, tc.want[0], tc.args...)
			for _, w := range tc.want[1:] {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// TestValidationCoversFlags makes every flag of both roles either checked
// at start or named here as free of constraints: a new flag with a
// constraint must get a check in validate.go.
func TestValidationCoversFlags(t *testing.T) {
	free := []string{"turn-allow-loopback", "insecure"} // booleans
	for role, c := range map[string]struct {
		flags  []cli.Flag
		checks []check
	}{
		"superpeer": {superpeerFlags(), superpeerChecks()},
		"peer":      {peerFlags(), peerChecks()},
	} {
		checked := map[string]bool{}
		for _, ch := range c.checks {
			checked[ch.key] = true
		}
		for _, f := range c.flags {
			name := f.Names()[0]
			if !checked[name] && !slices.Contains(free, name) {
				t.Errorf("%s --%s: no start-up check in validate.go (add one, or list it as free of constraints here)", role, name)
			}
		}
	}
}
