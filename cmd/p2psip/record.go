package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/client"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
)

// defaultPeerPort is added to a --server given without a port.
const defaultPeerPort = "6084"

// flagsNote is appended to the description of commands with positional
// arguments; hoistFlags (main.go) is what makes it true.
const flagsNote = "Flags may come before or after the arguments."

func recordCommand() *cli.Command {
	return &cli.Command{
		Name:      "record",
		Usage:     "read and write location records (AoR → contacts) in the distributed database",
		UsageText: "p2psip record put|get|rm [flags] AOR [CONTACT]",
		Subcommands: []*cli.Command{
			{
				Name:        "put",
				Usage:       "register CONTACT for AOR",
				ArgsUsage:   "AOR CONTACT",
				Description: "Stores a contact (q=1.0) for the AoR; only the AoR's user may write it. " + flagsNote,
				Flags: append(clientFlags(),
					&cli.IntFlag{Name: "expires", Value: 3600, EnvVars: env("expires"), Usage: "lifetime of the contact in seconds"}),
				Action: recordPut,
			},
			{
				Name:        "get",
				Usage:       "show the live contacts of AOR",
				ArgsUsage:   "AOR",
				Description: flagsNote,
				Flags:       append(clientFlags(), jsonFlag()),
				Action:      recordGet,
			},
			{
				Name:        "rm",
				Usage:       "remove CONTACT (or every contact) of AOR",
				ArgsUsage:   "AOR [CONTACT]",
				Description: flagsNote,
				Flags:       clientFlags(),
				Action:      recordRemove,
			},
		},
	}
}

func recordPut(c *cli.Context) error {
	if c.NArg() != 2 {
		return fmt.Errorf("record put wants AOR CONTACT, got %d arguments", c.NArg())
	}
	aor, err := ids.NormalizeAOR(c.Args().Get(0))
	if err != nil {
		return err
	}
	expires := c.Int("expires")
	if expires <= 0 {
		return fmt.Errorf("--expires %d: want a positive number of seconds (use `record rm` to remove)", expires)
	}
	e := record.Entry{
		Expires: time.Now().Unix() + int64(expires),
		Contact: &record.Contact{URI: c.Args().Get(1), Q: 1000},
	}
	e.Key = record.EntryKey(record.KindLocation, &e)
	rec := &record.Record{Kind: record.KindLocation, Name: aor, Entries: []record.Entry{e}}
	return withSession(c, overlayOf(c, aor), func(ctx context.Context, s *client.Session) error {
		res, err := s.Put(ctx, rec)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "stored %s for %s, expires in %s (%d/%d replicas)\n",
			e.Contact.URI, aor, time.Duration(expires)*time.Second, res.Acks, res.Replicas)
		return nil
	})
}

func recordGet(c *cli.Context) error {
	if c.NArg() != 1 {
		return fmt.Errorf("record get wants AOR, got %d arguments", c.NArg())
	}
	aor, err := ids.NormalizeAOR(c.Args().First())
	if err != nil {
		return err
	}
	return withSession(c, overlayOf(c, aor), func(ctx context.Context, s *client.Session) error {
		rec, err := s.Get(ctx, record.KindLocation, aor)
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return printJSON(c.App.Writer, rec)
		}
		tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CONTACT\tQ\tEXPIRES IN\tSUPER PEER")
		for _, e := range rec.Entries {
			if e.Contact == nil {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Contact.URI, qValue(e.Contact.Q), expiresIn(e.Expires), superPeer(e.Contact))
		}
		return tw.Flush()
	})
}

func recordRemove(c *cli.Context) error {
	if c.NArg() < 1 || c.NArg() > 2 {
		return fmt.Errorf("record rm wants AOR [CONTACT], got %d arguments", c.NArg())
	}
	aor, err := ids.NormalizeAOR(c.Args().First())
	if err != nil {
		return err
	}
	var keys []string
	what := "every contact"
	if c.NArg() == 2 {
		keys = []string{c.Args().Get(1)}
		what = keys[0]
	}
	return withSession(c, overlayOf(c, aor), func(ctx context.Context, s *client.Session) error {
		if len(keys) == 1 {
			// An entry's key is the phone's +sip.instance when it sent
			// one, not its contact URI: find the entries by either.
			rec, err := s.Get(ctx, record.KindLocation, aor)
			if err != nil {
				return err
			}
			keys = contactKeys(rec, keys[0])
			if len(keys) == 0 {
				return fmt.Errorf("%s has no contact %s", aor, what)
			}
		}
		res, err := s.Remove(ctx, record.KindLocation, aor, keys)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "removed %s of %s (%d/%d replicas)\n", what, aor, res.Acks, res.Replicas)
		return nil
	})
}

// contactKeys lists the keys of rec's entries whose key or contact URI is
// contact.
func contactKeys(rec *record.Record, contact string) []string {
	var keys []string
	for _, e := range rec.Entries {
		if e.Key == contact || (e.Contact != nil && e.Contact.URI == contact) {
			keys = append(keys, e.Key)
		}
	}
	return keys
}

// qValue renders a q-value the SIP way: "1.0", "0.5", "0.125".
func qValue(q uint16) string {
	s := strconv.FormatFloat(float64(q)/1000, 'f', -1, 64)
	if !strings.Contains(s, ".") {
		s += ".0"
	}
	return s
}

func expiresIn(unix int64) string {
	return time.Until(time.Unix(unix, 0)).Round(time.Second).String()
}

func superPeer(ct *record.Contact) string {
	switch {
	case ct.SPAddr != "" && !ct.SP.IsZero():
		return ct.SP.Short() + " " + ct.SPAddr
	case ct.SPAddr != "":
		return ct.SPAddr
	case !ct.SP.IsZero():
		return ct.SP.Short()
	}
	return "-"
}

// overlayOf is --overlay, or else the AoR's domain.
func overlayOf(c *cli.Context, aor string) string {
	if o := c.String("overlay"); o != "" {
		return o
	}
	return ids.AORHost(aor)
}

// ---- client sessions, shared with `service` ----

func clientFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", Value: "127.0.0.1:" + defaultPeerPort, EnvVars: env("server"),
			Usage: "a super peer's peer-protocol `HOST:PORT`"},
		&cli.PathFlag{Name: "credentials-file", EnvVars: env("credentials-file"),
			Usage: "credentials `FILE` written by 'p2psip credentials issue -o FILE'"},
		&cli.PathFlag{Name: "ca-file", EnvVars: env("ca-file"),
			Usage: "overlay CA `FILE` to verify the super peer with (the super peer writes it to DATA-DIR/ca.pem)"},
		&cli.BoolFlag{Name: "insecure", EnvVars: env("insecure"),
			Usage: "do not verify the super peer's certificate (development only)"},
		&cli.StringFlag{Name: "overlay", EnvVars: env("overlay"),
			Usage: "overlay name (default: the AoR's domain)"},
		&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, EnvVars: env("timeout"),
			Usage: "bound on connecting and the request together"},
	}
}

func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", EnvVars: env("json"), Usage: "print one JSON document instead of a table"}
}

// withSession opens a client session to --server for overlay, runs op
// under --timeout and closes the session. Protocol errors from the super
// peer come back as *wire.Error and print as "CODE reason".
func withSession(c *cli.Context, overlay string, op func(context.Context, *client.Session) error) error {
	credPath := c.Path("credentials-file")
	if credPath == "" {
		return errors.New("no credentials: pass --credentials-file FILE (written by 'p2psip credentials issue -o FILE')")
	}
	creds, err := auth.LoadCredentials(credPath)
	if err != nil {
		return err
	}
	if !time.Now().Before(creds.Expires) {
		return fmt.Errorf("credentials of %q in %s expired at %s; issue new ones", creds.User, credPath, creds.Expires.Format(time.RFC3339))
	}
	addr := c.String("server")
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host, addr = strings.Trim(addr, "[]"), net.JoinHostPort(strings.Trim(addr, "[]"), defaultPeerPort)
	}
	tlsCfg, err := clientTLS(c, host)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	s, err := client.Dial(ctx, client.Config{
		Addr:    addr,
		TLS:     tlsCfg,
		Timeout: c.Duration("timeout"),
		Hello: func(tls.ConnectionState) (wire.Hello, error) {
			return wire.Hello{Role: wire.RoleClient, Overlay: overlay, Username: creds.Username, Password: creds.Password}, nil
		},
	}, zerolog.Nop())
	if err != nil {
		var verr *tls.CertificateVerificationError
		var uerr x509.UnknownAuthorityError
		if errors.As(err, &verr) || errors.As(err, &uerr) {
			return fmt.Errorf("%w (is %s the CA of this super peer's overlay? it is in the super peer's DATA-DIR/ca.pem)", err, c.Path("ca-file"))
		}
		return err
	}
	defer s.Close()
	return op(ctx, s)
}

// clientTLS presents a fresh self-signed identity (the server derives a
// Peer-ID from it; users are authenticated by credentials) and verifies the
// server against --ca-file for serverName, the host part of --server.
func clientTLS(c *cli.Context, serverName string) (*tls.Config, error) {
	caFile, insecure := c.Path("ca-file"), c.Bool("insecure")
	var roots *x509.CertPool
	switch {
	case caFile != "" && insecure:
		return nil, errors.New("--ca-file and --insecure exclude each other")
	case caFile != "":
		var err error
		if roots, err = auth.LoadCAFile(caFile); err != nil {
			return nil, err
		}
	case insecure:
		fmt.Fprintln(c.App.ErrWriter, "p2psip: warning: --insecure: not verifying the super peer's certificate (development only)")
	default:
		return nil, errors.New("cannot verify the super peer: pass --ca-file DATA-DIR/ca.pem (written by the super peer on start), or --insecure for development")
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("client identity: %w", err)
	}
	cert, err := auth.SelfSignedCertificate(key, time.Now())
	if err != nil {
		return nil, err
	}
	return auth.ClientTLSConfig(&cert, roots, serverName), nil
}
