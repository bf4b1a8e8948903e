package main

import (
	"crypto/x509"
	"fmt"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/gctune"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/ordinarypeer/agent"
	"github.com/p2psip/p2psip/superpeer"
	"github.com/p2psip/p2psip/superpeer/promoted"
)

// peerFlags are the flags of `p2psip peer` (ARCHITECTURE.md §11), each also
// settable from the environment and the config file.
func peerFlags() []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringFlag(&cli.StringFlag{Name: "overlay", Value: "p2psip.test", EnvVars: env("overlay"),
			Usage: "overlay `NAME`, a domain; the phone registers sip:USER@NAME"}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "bootstrap", Value: cli.NewStringSlice("127.0.0.1:6084"), EnvVars: env("bootstrap"),
			Usage: "super peers' peer-protocol addresses `HOST:PORT`, comma separated"}),
		altsrc.NewPathFlag(&cli.PathFlag{Name: "credentials-file", EnvVars: env("credentials-file"),
			Usage: "credentials `FILE` from `p2psip credentials issue -o`"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "sip-listen", Value: "127.0.0.1:5060", EnvVars: env("sip-listen"),
			Usage: "local SIP `ADDR` (UDP and TCP) for the phone: its registrar and outbound proxy"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "sip-advertise", EnvVars: env("sip-advertise"),
			Usage: "`HOST` phones reach the agent at, put in its Record-Route (default: the --sip-listen host; required with 0.0.0.0)"}),
		altsrc.NewPathFlag(&cli.PathFlag{Name: "data-dir", Value: "./p2psip-agent", EnvVars: env("data-dir"),
			Usage: "`DIR` for the identity key and the remembered super peers"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "role", Value: "ordinary", EnvVars: env("role"),
			Usage: "`ordinary`, or auto (become a super peer if found reachable and the overlay promotes)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "promote-listen", Value: "0.0.0.0:6084", EnvVars: env("promote-listen"),
			Usage: "with --role auto, the peer-protocol `ADDR` the node listens on as a would-be super peer (the overlay dials back there)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "advertise", EnvVars: env("advertise"),
			Usage: "with --role auto, the public `IP` of this node (default: the address its uplink leaves from, which must be public)"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "promote-gossip-port", Value: 7946, EnvVars: env("promote-gossip-port"),
			Usage: "with --role auto, mesh gossip TCP+UDP `PORT` once promoted"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "promote-sip-port", Value: 5062, EnvVars: env("promote-sip-port"),
			Usage: "with --role auto, SIP edge UDP+TCP `PORT` once promoted (5060 is usually the phone's agent)"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "promote-sips-port", Value: 5063, EnvVars: env("promote-sips-port"),
			Usage: "with --role auto, SIP edge TLS `PORT` once promoted"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "promote-turn-port", Value: 3478, EnvVars: env("promote-turn-port"),
			Usage: "with --role auto, STUN/TURN UDP+TCP `PORT` once promoted"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "promote-admin", Value: "127.0.0.1:6085", EnvVars: env("promote-admin"),
			Usage: "with --role auto, the super peer's admin HTTP `ADDR` once promoted; \"off\" disables it"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "admin", Value: "127.0.0.1:6086", EnvVars: env("admin"),
			Usage: "status HTTP `ADDR` (/healthz, /readyz, /v1/status); \"off\" disables it"}),
		altsrc.NewPathFlag(&cli.PathFlag{Name: "ca-file", EnvVars: env("ca-file"),
			Usage: "overlay CA `FILE` (a super peer's DATA-DIR/ca.pem) to verify super peers"}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "insecure", EnvVars: env("insecure"),
			Usage: "do not verify super peers' certificates (development only)"}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "keepalive", EnvVars: env("keepalive"),
			Usage: "Ping `INTERVAL` to the super peer (default: what the super peer asks, 25s)"}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "relay-after", Value: agent.DefaultRelayAfter, EnvVars: env("relay-after"),
			Usage: "re-send a request through the TURN relays when the overlay brings no answer within `DURATION` (0: only when the overlay reports the destination unreachable)"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-format", Value: "json", EnvVars: env("log-format"),
			Usage: "`json` or console"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: env("log-level"),
			Usage: "`LEVEL`: trace, debug, info, warn or error"}),
		logSampleFlag(),
	}
}

func peerCommand() *cli.Command {
	flags := peerFlags()
	return &cli.Command{
		Name:  "peer",
		Usage: "run the ordinary-peer agent next to a SIP phone",
		Description: "Point the phone's registrar and outbound proxy at --sip-listen and register\n" +
			"sip:USER@OVERLAY with any password (the agent authenticates to the overlay with\n" +
			"--credentials-file). Every flag can also be given as P2PSIP_<FLAG> or in --config.",
		Flags:  append(flags, configFlag()),
		Before: loadConfig(flags),
		Action: runPeer,
	}
}

func runPeer(c *cli.Context) error {
	if c.Args().Present() {
		return fmt.Errorf("peer takes no arguments, got %q", c.Args().Slice())
	}
	if err := validate(c, peerChecks()); err != nil {
		return err
	}
	log, err := logx.New(logx.Options{Format: c.String("log-format"), Level: c.String("log-level"), Sample: c.String("log-sample")})
	if err != nil {
		return err
	}
	logx.SetDefault(log)
	tuneRuntime(log, gctune.EndpointHeap)
	creds, err := auth.LoadCredentials(c.Path("credentials-file"))
	if err != nil {
		return err
	}
	var roots *x509.CertPool
	switch {
	case c.Path("ca-file") != "":
		if roots, err = auth.LoadCAFile(c.Path("ca-file")); err != nil {
			return err
		}
	case c.Bool("insecure"):
		log.Warn().Msg("--insecure: super peers' certificates are NOT verified; use --ca-file outside development")
	default:
		return fmt.Errorf("pass --ca-file DATA-DIR/ca.pem of a super peer (or --insecure for development)")
	}
	admin := c.String("admin")
	if admin == "off" {
		admin = ""
	}
	var promoter agent.Promoter
	if c.String("role") == "auto" {
		if promoter, err = newPromoter(c, log); err != nil {
			return err
		}
	}
	a, err := agent.New(agent.Config{
		Overlay:      c.String("overlay"),
		Bootstrap:    c.StringSlice("bootstrap"),
		Credentials:  creds,
		DataDir:      c.Path("data-dir"),
		SIPListen:    c.String("sip-listen"),
		SIPAdvertise: c.String("sip-advertise"),
		Roots:        roots,
		Insecure:     c.Bool("insecure"),
		Keepalive:    c.Duration("keepalive"),
		RelayAfter:   relayAfter(c.Duration("relay-after")),
		Role:         c.String("role"),
		Promoter:     promoter,
		Admin:        admin,

		// Re-read when renewed: the TURN allocation moves to the new
		// credentials before the old ones expire.
		CredentialsFile: c.Path("credentials-file"),
	}, log)
	if err != nil {
		return err
	}
	return a.Run(c.Context)
}

// newPromoter builds the would-be super peer of `peer --role auto`; its
// own identity lives in DATA-DIR/superpeer (superpeer/promoted).
func newPromoter(c *cli.Context, log zerolog.Logger) (agent.Promoter, error) {
	for _, name := range []string{"promote-gossip-port", "promote-sip-port", "promote-sips-port", "promote-turn-port"} {
		if p := c.Int(name); p < 0 || p > 65535 {
			return nil, fmt.Errorf("--%s %d: want 0..65535", name, p)
		}
	}
	return promoted.New(promoted.Config{
		Listen:    c.String("promote-listen"),
		Advertise: c.String("advertise"),
		DataDir:   filepath.Join(c.Path("data-dir"), "superpeer"),
		Template: superpeer.Config{
			Overlay:    c.String("overlay"),
			GossipPort: cliPort(c.Int("promote-gossip-port")),
			SIPPort:    cliPort(c.Int("promote-sip-port")),
			SIPSPort:   cliPort(c.Int("promote-sips-port")),
			TURNPort:   cliPort(c.Int("promote-turn-port")),
			Admin:      c.String("promote-admin"),
		},
	}, log)
}

// relayAfter maps --relay-after to agent.Config.RelayAfter, where 0 is the
// default and a negative value turns the timeout off.
func relayAfter(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
