package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
	"gopkg.in/yaml.v3"

	"github.com/p2psip/p2psip/common/gctune"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/superpeer"
	"github.com/p2psip/p2psip/superpeer/edge"
)

// superpeerFlags are the flags of `p2psip superpeer`, each also settable
// from the environment and the config file.
func superpeerFlags() []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringFlag(&cli.StringFlag{Name: "overlay", Value: "p2psip.test", EnvVars: env("overlay"),
			Usage: "overlay `NAME`, a domain; AoRs of the overlay are sip:USER@NAME"}),
		altsrc.NewPathFlag(&cli.PathFlag{Name: "data-dir", Value: "./p2psip-data", EnvVars: env("data-dir"),
			Usage: "`DIR` for the identity key, the CA file for clients (ca.pem) and the dev secret"}),
		altsrc.NewPathFlag(&cli.PathFlag{Name: "secret-file", EnvVars: env("secret-file"),
			Usage: "overlay secret `FILE` shared by every super peer (default: DATA-DIR/overlay.secret, created on first start; development only)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "bind", Value: "127.0.0.1", EnvVars: env("bind"),
			Usage: "`IP` address every service binds"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "advertise", EnvVars: env("advertise"),
			Usage: "`IP` address others reach this node at (default: --bind; required when binding 0.0.0.0 or ::)"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "peer-port", Value: 6084, EnvVars: env("peer-port"),
			Usage: "TCP+TLS `PORT` of the peer protocol (agents, clients, other super peers); 0 picks a free port"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "gossip-port", Value: 7946, EnvVars: env("gossip-port"),
			Usage: "TCP+UDP `PORT` of the mesh gossip; 0 picks a free port"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "sip-port", Value: 5060, EnvVars: env("sip-port"),
			Usage: "SIP edge UDP+TCP `PORT` for plain SIP phones; 0 picks a free port"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "sips-port", Value: 5061, EnvVars: env("sips-port"),
			Usage: "SIP edge TLS `PORT`; 0 picks a free port"}),
		altsrc.NewPathFlag(&cli.PathFlag{Name: "sips-cert-file", EnvVars: env("sips-cert-file"),
			Usage: "PEM certificate chain `FILE` for SIPS (default: the node's Ed25519 certificate from the overlay CA)"}),
		altsrc.NewPathFlag(&cli.PathFlag{Name: "sips-key-file", EnvVars: env("sips-key-file"),
			Usage: "PEM private key `FILE` of --sips-cert-file"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "sip-max-inflight", Value: 1000, EnvVars: env("sip-max-inflight"),
			Usage: "`N` SIP requests the edge handles at once; past it, 503 with Retry-After"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "sip-max-waiting", EnvVars: env("sip-max-waiting"),
			Usage: "`N` proxied SIP requests waiting for their answers at once (default 64 × --sip-max-inflight); past it, 503"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "sip-max-conns", Value: edge.DefaultMaxConns, EnvVars: env("sip-max-conns"),
			Usage: "`N` phone TCP and TLS connections at the SIP edge in all (each holds about 70 KiB); past it, new ones are closed"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "sip-max-conns-per-ip", Value: edge.DefaultMaxConnsPerIP, EnvVars: env("sip-max-conns-per-ip"),
			Usage: "`N` phone TCP and TLS connections at the SIP edge from one IPv4 address or IPv6 /64; past it, new ones are closed"}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "sip-conn-silence", Value: edge.DefaultConnSilence, EnvVars: env("sip-conn-silence"),
			Usage: "`DURATION` a phone TCP or TLS connection may stay silent (no handshake, no request) before it is closed"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "sip-foreign-domain", Value: "403", EnvVars: env("sip-foreign-domain"),
			Usage: "edge answer (`403` or 404) to requests for domains other than the overlay"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "turn-port", Value: 3478, EnvVars: env("turn-port"),
			Usage: "STUN/TURN UDP+TCP `PORT`; 0 picks a free port"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "turn-relay-ports", Value: "49152-65535", EnvVars: env("turn-relay-ports"),
			Usage: "`MIN-MAX` ports for TURN relay addresses"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "turn-max-allocations", Value: 10000, EnvVars: env("turn-max-allocations"),
			Usage: "`N` TURN allocations in total (486 past it)"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "turn-max-per-user", Value: 10, EnvVars: env("turn-max-per-user"),
			Usage: "`N` TURN allocations per user (486 past it)"}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "turn-allow-loopback", EnvVars: env("turn-allow-loopback"),
			Usage: "let the relay reach loopback peers (tests and labs only, like coturn's --allow-loopback-peers)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "admin", Value: "127.0.0.1:6085", EnvVars: env("admin"),
			Usage: "admin HTTP `ADDR` (/metrics, /healthz, /readyz, /v1/...); \"off\" disables it"}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "join", EnvVars: env("join"),
			Usage: "gossip addresses `HOST:PORT` of existing super peers, comma separated (none: start a new mesh)"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "replicas", Value: 3, EnvVars: env("replicas"),
			Usage: "`N` super peers holding each record (1..7)"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "write-quorum", EnvVars: env("write-quorum"),
			Usage: "`N` replica acknowledgements a write needs (0: a majority of --replicas)"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "capacity", Value: 100000, EnvVars: env("capacity"),
			Usage: "`N` agents this super peer admits (advertised to the mesh)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "promotion", Value: "off", EnvVars: env("promotion"),
			Usage: "`off` or auto (promote reachable agents started with --role auto to super peers; they receive the overlay secret, so carriers keep this off)"}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "promotion-min-uptime", Value: 10 * time.Minute, EnvVars: env("promotion-min-uptime"),
			Usage: "with --promotion auto, how long an agent must have run before it is promoted (`DURATION`)"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "promotion-ratio", EnvVars: env("promotion-ratio"),
			Usage: "with --promotion auto, promote only while the mesh has more than `N` attached agents per super peer (0: whenever a reachable agent asks)"}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "publishers", EnvVars: env("publishers"),
			Usage: "`SERVICE=USER` pairs, comma separated: users who may publish that service's records besides super peers (e.g. voicemail=vm1)"}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "drain-timeout", Value: 10 * time.Second, EnvVars: env("drain-timeout"),
			Usage: "on SIGTERM, at most `DURATION` to hand records over and move attached agents before leaving"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-format", Value: "json", EnvVars: env("log-format"),
			Usage: "`json` or console"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: env("log-level"),
			Usage: "`LEVEL`: trace, debug, info, warn or error"}),
		logSampleFlag(),
	}
}

func superpeerCommand() *cli.Command {
	flags := superpeerFlags()
	return &cli.Command{
		Name:  "superpeer",
		Usage: "run a super peer: mesh member, record shard holder and attach point",
		Description: "Every flag can also be given as P2PSIP_<FLAG> in the environment or as a key of the\n" +
			"--config file (YAML for .yaml/.yml, TOML for .toml; keys are flag names, e.g. `peer-port: 6084`;\n" +
			"relative paths in the file are relative to the file). Precedence: flag > env > file > default.\n" +
			"SIGINT/SIGTERM leave the mesh gracefully.",
		Flags:  append(flags, configFlag()),
		Before: loadConfig(flags),
		Action: runSuperpeer,
	}
}

func runSuperpeer(c *cli.Context) error {
	if c.Args().Present() {
		return fmt.Errorf("superpeer takes no arguments, got %q", c.Args().Slice())
	}
	if err := validate(c, superpeerChecks()); err != nil {
		return err
	}
	log, err := logx.New(logx.Options{Format: c.String("log-format"), Level: c.String("log-level"), Sample: c.String("log-sample")})
	if err != nil {
		return err
	}
	logx.SetDefault(log)
	tuneRuntime(log, gctune.ServerHeap)
	cfg := superpeer.Config{
		Overlay:     c.String("overlay"),
		DataDir:     c.Path("data-dir"),
		SecretFile:  c.Path("secret-file"),
		Bind:        c.String("bind"),
		Advertise:   c.String("advertise"),
		PeerPort:    cliPort(c.Int("peer-port")),
		GossipPort:  cliPort(c.Int("gossip-port")),
		Admin:       c.String("admin"),
		Join:        c.StringSlice("join"),
		Replicas:    c.Int("replicas"),
		WriteQuorum: c.Int("write-quorum"),
		Capacity:    c.Int("capacity"),
		Promotion:   c.String("promotion"),

		PromotionMinUptime: c.Duration("promotion-min-uptime"),
		PromotionRatio:     c.Int("promotion-ratio"),

		SIPPort:           cliPort(c.Int("sip-port")),
		SIPSPort:          cliPort(c.Int("sips-port")),
		SIPSCertFile:      c.Path("sips-cert-file"),
		SIPSKeyFile:       c.Path("sips-key-file"),
		EdgeMaxInFlight:   c.Int("sip-max-inflight"),
		EdgeMaxWaiting:    c.Int("sip-max-waiting"),
		EdgeMaxConns:      c.Int("sip-max-conns"),
		EdgeMaxConnsPerIP: c.Int("sip-max-conns-per-ip"),
		EdgeConnSilence:   c.Duration("sip-conn-silence"),
		ForeignDomain:     c.String("sip-foreign-domain"),

		TURNPort:           cliPort(c.Int("turn-port")),
		TURNMaxAllocations: c.Int("turn-max-allocations"),
		TURNMaxPerUser:     c.Int("turn-max-per-user"),
		TURNAllowLoopback:  c.Bool("turn-allow-loopback"),
	}
	cfg.RelayMinPort, cfg.RelayMaxPort, _ = relayPorts(c.String("turn-relay-ports")) // validated
	cfg.Publishers, _ = publishers(c.StringSlice("publishers"))                      // validated
	node, err := superpeer.New(cfg, log)
	if err != nil {
		return err
	}
	log.Info().Msg(attachHint(cfg, node.PeerAddr()))

	// The node runs on a context of its own: a signal first makes it leave
	// the mesh (others learn at once instead of after failure detection),
	// and only then stops it.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(c.Context))
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- node.Run(runCtx) }()
	select {
	case err := <-done:
		return err
	case <-c.Context.Done():
	}
	log.Info().Msg("signal received, leaving the overlay")
	if err := node.Leave(c.Duration("drain-timeout")); err != nil {
		log.Warn().Err(err).Msg("leave")
	}
	cancel()
	return <-done
}

// cliPort maps the command line's "0 picks a free port" to Config's -1
// (where 0 means the default).
func cliPort(p int) int {
	if p == 0 {
		return -1
	}
	return p
}

// attachHint is the line that tells a newcomer how to use this super peer.
func attachHint(cfg superpeer.Config, peerAddr string) string {
	dataDir := cfg.DataDir
	if dataDir == "" {
		dataDir = "p2psip-data"
	}
	secret := cfg.SecretFile
	if secret == "" {
		secret = filepath.Join(dataDir, superpeer.SecretFile)
	}
	hint := fmt.Sprintf("to try it: `p2psip credentials issue --secret-file %s --user alice -o alice.json` "+
		"then `p2psip record get --server %s --credentials-file alice.json --ca-file %s sip:alice@%s`",
		shellQuote(secret), peerAddr, shellQuote(filepath.Join(dataDir, superpeer.CAFile)), cfg.Overlay)
	if cfg.Admin != "off" {
		hint += fmt.Sprintf("; overlay status: `p2psip status --admin %s`", cfg.Admin)
	}
	return hint
}

// shellQuote quotes s for a POSIX shell when it holds anything but plain
// path characters.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@+=,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// ---- config file ----

func configFlag() cli.Flag {
	return &cli.PathFlag{Name: "config", EnvVars: env("config"),
		Usage: "YAML (.yaml, .yml) or TOML (.toml) `FILE` whose keys are flag names"}
}

// loadConfig is the Before of a command with a --config flag: it reads the
// file (format by extension), refuses keys that are not flag names (a typo
// would otherwise be ignored silently), and hands the values to altsrc,
// which sets each flag that neither the command line nor the environment
// set.
func loadConfig(flags []cli.Flag) cli.BeforeFunc {
	return func(c *cli.Context) error {
		path := c.Path("config")
		if path == "" {
			return nil
		}
		unmarshal := yaml.Unmarshal
		switch strings.ToLower(filepath.Ext(path)) {
		case ".yaml", ".yml":
		case ".toml":
			unmarshal = toml.Unmarshal
		default:
			return fmt.Errorf("config %s: want a .yaml, .yml or .toml file", path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		raw := map[string]any{}
		if err := unmarshal(b, &raw); err != nil {
			return fmt.Errorf("config %s: %w", path, err)
		}
		known := map[string]bool{}
		for _, f := range flags {
			for _, n := range f.Names() {
				known[n] = true
			}
		}
		values := make(map[any]any, len(raw))
		var unknown []string
		for k, v := range raw {
			if !known[k] {
				unknown = append(unknown, k)
				continue
			}
			if i, ok := v.(int64); ok { // TOML integers; altsrc wants int
				v = int(i)
			}
			values[k] = v
		}
		if len(unknown) > 0 {
			sort.Strings(unknown)
			return fmt.Errorf("config %s: unknown keys %s (keys are flag names, e.g. peer-port)", path, strings.Join(unknown, ", "))
		}
		recordFileKeys(c, path, raw)
		if err := altsrc.ApplyInputSourceValues(c, altsrc.NewMapInputSource(path, values), flags); err != nil {
			return fmt.Errorf("config %s: %s", path, strings.Join(strings.Fields(err.Error()), " "))
		}
		return nil
	}
}
