package main

// Start-up validation of `superpeer` and `peer` configuration. Every key
// with a meaningful constraint is checked before anything binds, and an
// error names the key as the operator wrote it: the key (= flag name) and
// where its value came from (--flag, P2PSIP_* variable or config file),
// e.g. `config: replicas: must be 1..7 (got 0, from P2PSIP_REPLICAS)`.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/record"
)

// fileKeysMeta is the App.Metadata key under which loadConfig records the
// keys whose value came from the config file (key → file path).
const fileKeysMeta = "p2psip.config-file-keys"

// check validates one key; it returns the problem without the key, e.g.
// "must be 1..7". got is added by the caller.
type check struct {
	key string
	fn  func(c *cli.Context) string
}

// validate runs checks and returns every problem on one line, each naming
// its key and source.
func validate(c *cli.Context, checks []check) error {
	var msgs []string
	for _, ch := range checks {
		if msg := ch.fn(c); msg != "" {
			msgs = append(msgs, fmt.Sprintf("%s: %s", ch.key, withSource(c, ch.key, msg)))
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return errors.New("config: " + strings.Join(msgs, "; "))
}

// withSource appends where key's value came from to msg (inside its
// parenthesis when msg ends with one, "(got 0)" → "(got 0, from --x)").
// The default is not named.
func withSource(c *cli.Context, key, msg string) string {
	src := source(c, key)
	if src == "" {
		return msg
	}
	if strings.HasSuffix(msg, ")") {
		return msg[:len(msg)-1] + ", from " + src + ")"
	}
	return msg + " (from " + src + ")"
}

// source says where key's value came from, by precedence: the command
// line ("--key"), the environment ("P2PSIP_KEY"), the config file ("FILE"),
// or "" for the default.
func source(c *cli.Context, key string) string {
	for _, a := range os.Args[1:] {
		if a == "--" {
			break
		}
		name := strings.TrimLeft(a, "-")
		name, _, _ = strings.Cut(name, "=")
		if len(a) > 1 && a[0] == '-' && name == key {
			return "--" + key
		}
	}
	ev := env(key)[0]
	if _, ok := os.LookupEnv(ev); ok {
		return ev
	}
	if files, ok := c.App.Metadata[fileKeysMeta].(map[string]string); ok && files[key] != "" {
		return files[key]
	}
	return ""
}

// recordFileKeys remembers the keys of the config file at path (raw is
// its contents); source() ranks them below the command line and the
// environment, as altsrc does.
func recordFileKeys(c *cli.Context, path string, raw map[string]any) {
	if c.App.Metadata == nil {
		c.App.Metadata = map[string]any{}
	}
	m := map[string]string{}
	for k := range raw {
		m[k] = path
	}
	c.App.Metadata[fileKeysMeta] = m
}

// ---- constraints ----

func got(v any) string { return fmt.Sprintf("(got %q)", fmt.Sprint(v)) }

func intRange(key string, lo, hi int) check {
	return check{key, func(c *cli.Context) string {
		if v := c.Int(key); v < lo || v > hi {
			if hi == maxInt {
				return fmt.Sprintf("must be ≥ %d (got %d)", lo, v)
			}
			return fmt.Sprintf("must be %d..%d (got %d)", lo, hi, v)
		}
		return ""
	}}
}

const maxInt = int(^uint(0) >> 1)

func portKey(key string) check { return intRange(key, 0, 65535) }

func oneOf(key string, values ...string) check {
	return check{key, func(c *cli.Context) string {
		v := c.String(key)
		for _, ok := range values {
			if v == ok {
				return ""
			}
		}
		return fmt.Sprintf("must be %s %s", orList(values), got(v))
	}}
}

func orList(v []string) string {
	if len(v) == 1 {
		return v[0]
	}
	return strings.Join(v[:len(v)-1], ", ") + " or " + v[len(v)-1]
}

func nonEmpty(key string) check {
	return check{key, func(c *cli.Context) string {
		if strings.TrimSpace(c.String(key)) == "" {
			return "must not be empty"
		}
		return ""
	}}
}

// domainRE is a DNS name: labels of letters, digits and inner hyphens.
var domainRE = regexp.MustCompile(`^(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

func domainKey(key string) check {
	return check{key, func(c *cli.Context) string {
		v := c.String(key)
		if v == "" {
			return "must not be empty (the overlay's domain name)"
		}
		if len(v) > 253 || !domainRE.MatchString(v) {
			return "must be a domain name such as example.net " + got(v)
		}
		return ""
	}}
}

func ipKey(key string, unspecifiedOK bool) check {
	return check{key, func(c *cli.Context) string {
		v := c.String(key)
		if v == "" {
			return ""
		}
		ip := net.ParseIP(v)
		if ip == nil {
			return "must be an IP address " + got(v)
		}
		if !unspecifiedOK && ip.IsUnspecified() {
			return "must be an address others can reach, not " + v
		}
		return ""
	}}
}

// hostPort checks "HOST:PORT" with a port 1..65535 (0 too when zeroOK).
func hostPort(v string, zeroOK bool) string {
	host, p, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Sprintf("%q: want HOST:PORT", v)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !zeroOK) {
		return fmt.Sprintf("%q: invalid port", v)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Sprintf("%q: invalid host", v)
	}
	return ""
}

func addrKey(key string, offOK bool) check {
	return check{key, func(c *cli.Context) string {
		v := c.String(key)
		if offOK && v == "off" {
			return ""
		}
		return hostPort(v, true)
	}}
}

func addrListKey(key string, required bool) check {
	return check{key, func(c *cli.Context) string {
		vs := c.StringSlice(key)
		if required && len(vs) == 0 {
			return "must list at least one HOST:PORT"
		}
		for _, v := range vs {
			if msg := hostPort(strings.TrimSpace(v), false); msg != "" {
				return msg
			}
		}
		return ""
	}}
}

// fileKey checks that a file named by key, if any (or always when
// required), exists and is a regular file we can read.
func fileKey(key string, required bool, hint string) check {
	return check{key, func(c *cli.Context) string {
		v := c.Path(key)
		if v == "" {
			if required {
				return "is required" + hint
			}
			return ""
		}
		f, err := os.Open(v)
		if err != nil {
			return fmt.Sprintf("%s: %v", v, unwrapPathError(err))
		}
		defer f.Close() //nolint:errcheck
		if st, err := f.Stat(); err == nil && st.IsDir() {
			return fmt.Sprintf("%s: is a directory, want a file", v)
		}
		return ""
	}}
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func durationKey(key string, lo time.Duration, what string) check {
	return check{key, func(c *cli.Context) string {
		if v := c.Duration(key); v < lo {
			return fmt.Sprintf("must be %s (got %s)", what, v)
		}
		return ""
	}}
}

func logChecks() []check {
	return []check{
		oneOf("log-format", "json", "console"),
		{"log-level", func(c *cli.Context) string {
			v := c.String("log-level")
			if _, err := zerolog.ParseLevel(strings.ToLower(v)); err != nil || v == "" {
				return "must be trace, debug, info, warn or error " + got(v)
			}
			return ""
		}},
		{"log-sample", func(c *cli.Context) string {
			if _, err := logx.ParseSample(c.String("log-sample")); err != nil {
				return fmt.Sprintf("%v %s", err, got(c.String("log-sample")))
			}
			return ""
		}},
	}
}

// superpeerChecks are the constraints of `p2psip superpeer`.
func superpeerChecks() []check {
	cs := []check{
		domainKey("overlay"),
		nonEmpty("data-dir"),
		fileKey("secret-file", false, ""),
		ipKey("bind", true),
		ipKey("advertise", false),
		{"advertise", func(c *cli.Context) string {
			if ip := net.ParseIP(c.String("bind")); ip != nil && ip.IsUnspecified() && c.String("advertise") == "" {
				return "is required when bind is " + c.String("bind")
			}
			return ""
		}},
		portKey("peer-port"), portKey("gossip-port"), portKey("sip-port"), portKey("sips-port"), portKey("turn-port"),
		{"ports", distinctPorts("peer-port", "gossip-port", "sip-port", "sips-port", "turn-port")},
		fileKey("sips-cert-file", false, ""),
		fileKey("sips-key-file", false, ""),
		{"sips-key-file", func(c *cli.Context) string {
			if (c.Path("sips-cert-file") == "") != (c.Path("sips-key-file") == "") {
				return "sips-cert-file and sips-key-file go together"
			}
			return ""
		}},
		intRange("sip-max-inflight", 1, maxInt),
		intRange("sip-max-waiting", 0, maxInt),
		intRange("sip-max-conns", 1, maxInt),
		intRange("sip-max-conns-per-ip", 1, maxInt),
		durationKey("sip-conn-silence", 100*time.Millisecond, "at least 100ms"),
		oneOf("sip-foreign-domain", "403", "404"),
		{"turn-relay-ports", func(c *cli.Context) string {
			if _, _, err := relayPorts(c.String("turn-relay-ports")); err != nil {
				return err.Error()
			}
			return ""
		}},
		intRange("turn-max-allocations", 1, maxInt),
		intRange("turn-max-per-user", 1, maxInt),
		addrKey("admin", true),
		addrListKey("join", false),
		intRange("replicas", 1, 7),
		{"write-quorum", func(c *cli.Context) string {
			if q, r := c.Int("write-quorum"), c.Int("replicas"); q < 0 || q > r {
				return fmt.Sprintf("must be 0 (a majority) to replicas=%d (got %d)", r, q)
			}
			return ""
		}},
		intRange("capacity", 1, maxInt),
		oneOf("promotion", "off", "auto"),
		durationKey("promotion-min-uptime", 0, "0 or positive"),
		intRange("promotion-ratio", 0, maxInt),
		{"publishers", func(c *cli.Context) string {
			if _, err := publishers(c.StringSlice("publishers")); err != nil {
				return err.Error()
			}
			return ""
		}},
		durationKey("drain-timeout", time.Second, "at least 1s"),
	}
	return append(cs, logChecks()...)
}

// distinctPorts refuses two TCP services on one fixed port (0, a free
// port, may repeat).
func distinctPorts(keys ...string) func(c *cli.Context) string {
	return func(c *cli.Context) string {
		seen := map[int]string{}
		for _, k := range keys {
			p := c.Int(k)
			if p <= 0 {
				continue
			}
			if other, dup := seen[p]; dup {
				return fmt.Sprintf("%s and %s are both %d", other, k, p)
			}
			seen[p] = k
		}
		return ""
	}
}

// relayPorts parses --turn-relay-ports "MIN-MAX".
func relayPorts(v string) (lo, hi int, err error) {
	a, b, ok := strings.Cut(v, "-")
	lo, err1 := strconv.Atoi(strings.TrimSpace(a))
	hi, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil || lo < 1024 || hi > 65535 || lo > hi {
		return 0, 0, fmt.Errorf("must be MIN-MAX within 1024-65535 %s", got(v))
	}
	return lo, hi, nil
}

// peerChecks are the constraints of `p2psip peer`.
func peerChecks() []check {
	cs := []check{
		domainKey("overlay"),
		addrListKey("bootstrap", true),
		fileKey("credentials-file", true, " (issue one with `p2psip credentials issue -o FILE`)"),
		{"sip-listen", func(c *cli.Context) string { return hostPort(c.String("sip-listen"), true) }},
		{"sip-advertise", func(c *cli.Context) string {
			v := c.String("sip-advertise")
			if v != "" && (strings.ContainsAny(v, " /@;") || strings.Count(v, ":") == 1) {
				return "must be a host name or IP, without a port " + got(v)
			}
			host, _, _ := net.SplitHostPort(c.String("sip-listen"))
			if ip := net.ParseIP(host); v == "" && (host == "" || (ip != nil && ip.IsUnspecified())) {
				return "is required when sip-listen has no specific host " + got(c.String("sip-listen"))
			}
			return ""
		}},
		nonEmpty("data-dir"),
		oneOf("role", "ordinary", "auto"),
		// The would-be super peer of --role auto (checked whatever the
		// role, so a bad value shows before the day it is promoted).
		addrKey("promote-listen", false),
		ipKey("advertise", false),
		portKey("promote-gossip-port"), portKey("promote-sip-port"), portKey("promote-sips-port"), portKey("promote-turn-port"),
		{"promote-ports", distinctPorts("promote-gossip-port", "promote-sip-port", "promote-sips-port", "promote-turn-port")},
		addrKey("promote-admin", true),
		addrKey("admin", true),
		fileKey("ca-file", false, ""),
		{"ca-file", func(c *cli.Context) string {
			if c.Path("ca-file") == "" && !c.Bool("insecure") {
				return "is required: a super peer's DATA-DIR/ca.pem (or insecure: true for development)"
			}
			return ""
		}},
		durationKey("keepalive", 0, "0 (the super peer's choice) or positive"),
		{"relay-after", func(c *cli.Context) string {
			if v := c.Duration("relay-after"); v != 0 && (v < 100*time.Millisecond || v > time.Minute) {
				return fmt.Sprintf("must be 0 (error frames only) or 100ms..1m (got %s)", v)
			}
			return ""
		}},
		{"keepalive", func(c *cli.Context) string {
			if v := c.Duration("keepalive"); v > 0 && v < time.Second {
				return fmt.Sprintf("must be 0 or at least 1s (got %s)", v)
			}
			return ""
		}},
	}
	return append(cs, logChecks()...)
}

// logSampleFlag is --log-sample, shared by both roles.
func logSampleFlag() cli.Flag {
	return altsrc.NewStringFlag(&cli.StringFlag{Name: "log-sample", Value: logx.DefaultSample, EnvVars: env("log-sample"),
		Usage: "per-message debug/trace lines: `BURST/PERIOD[,1/EVERY]` pass, then one in EVERY of the rest; \"off\" keeps all (info and above are never sampled)"})
}

// publishers parses --publishers "SERVICE=USER" pairs into the store's
// per-service lists of users allowed to publish.
func publishers(pairs []string) (map[string][]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	out := make(map[string][]string)
	for _, p := range pairs {
		svc, user, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || svc == "" || user == "" {
			return nil, fmt.Errorf("%q: want SERVICE=USER", p)
		}
		probe := record.Record{Kind: record.KindService, Name: svc}
		if probe.Validate() != nil {
			return nil, fmt.Errorf("%q: service name must be 1..64 of a-z, 0-9, '.', '_', '-'", p)
		}
		if strings.ContainsAny(user, ":@ \t") {
			return nil, fmt.Errorf("%q: user %q is a credential user name, without domain or colon", p, user)
		}
		out[svc] = append(out[svc], user)
	}
	return out, nil
}
