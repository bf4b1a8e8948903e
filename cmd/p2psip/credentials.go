package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/p2psip/p2psip/common/auth"
)

func credentialsCommand() *cli.Command {
	return &cli.Command{
		Name:      "credentials",
		Usage:     "manage user credentials",
		UsageText: "p2psip credentials issue [flags]",
		Subcommands: []*cli.Command{{
			Name:      "issue",
			Usage:     "issue time-limited credentials for a user from the overlay secret",
			ArgsUsage: " ",
			Description: "The credentials are TURN-REST style: username EXPIRY:USER, password HMAC(secret, username).\n" +
				"Any super peer holding the same secret accepts them until they expire; no user database.",
			Flags: []cli.Flag{
				&cli.PathFlag{Name: "secret-file", EnvVars: env("secret-file"),
					Usage: "overlay secret `FILE` (a super peer's --secret-file, or its DATA-DIR/overlay.secret)"},
				&cli.StringFlag{Name: "user", EnvVars: env("user"),
					Usage: "`USER` name; it may write the location of sip:USER@OVERLAY"},
				&cli.DurationFlag{Name: "ttl", Value: 24 * time.Hour, EnvVars: env("ttl"),
					Usage: "validity"},
				&cli.BoolFlag{Name: "json", EnvVars: env("json"),
					Usage: "print the credentials as JSON (the --credentials-file format)"},
				&cli.PathFlag{Name: "output", Aliases: []string{"o"}, EnvVars: env("output"),
					Usage: "write the credentials as JSON to `FILE` (mode 0600) instead of printing them"},
			},
			Action: issueCredentials,
		}},
	}
}

func issueCredentials(c *cli.Context) error {
	if c.Args().Present() {
		return fmt.Errorf("credentials issue takes no arguments, got %q", c.Args().Slice())
	}
	path, user := c.Path("secret-file"), c.String("user")
	if path == "" || user == "" {
		return errors.New("credentials issue needs --secret-file FILE and --user USER")
	}
	secret, err := auth.LoadSecret(path)
	if err != nil {
		return err
	}
	creds, err := auth.Issue(secret, user, c.Duration("ttl"), time.Now())
	if err != nil {
		return err
	}
	if out := c.Path("output"); out != "" {
		if err := creds.WriteFile(out); err != nil {
			return err
		}
		fmt.Fprintf(c.App.ErrWriter, "wrote credentials of %q, valid until %s, to %s\n",
			creds.User, creds.Expires.Format(time.RFC3339), out)
		if !c.Bool("json") {
			return nil
		}
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, creds)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "USER\t%s\n", creds.User)
	fmt.Fprintf(tw, "USERNAME\t%s\n", creds.Username)
	fmt.Fprintf(tw, "PASSWORD\t%s\n", creds.Password)
	fmt.Fprintf(tw, "EXPIRES\t%s (in %s)\n", creds.Expires.Format(time.RFC3339), time.Until(creds.Expires).Round(time.Second))
	return tw.Flush()
}

// printJSON writes v as one indented JSON document.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
