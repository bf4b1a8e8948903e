package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/p2psip/p2psip/common/client"
)

func serviceCommand() *cli.Command {
	return &cli.Command{
		Name:      "service",
		Usage:     "look up services offered in the overlay",
		UsageText: "p2psip service find [flags] NAME",
		Subcommands: []*cli.Command{{
			Name:        "find",
			Usage:       "list the providers of service NAME",
			ArgsUsage:   "NAME",
			Description: "--overlay (or P2PSIP_OVERLAY) is required: a service name carries no domain. " + flagsNote,
			Flags:       append(clientFlags(), jsonFlag()),
			Action:      serviceFind,
		}},
	}
}

func serviceFind(c *cli.Context) error {
	if c.NArg() != 1 {
		return fmt.Errorf("service find wants NAME, got %d arguments", c.NArg())
	}
	overlay := c.String("overlay")
	if overlay == "" {
		return errors.New("service find needs --overlay NAME (or P2PSIP_OVERLAY)")
	}
	return withSession(c, overlay, func(ctx context.Context, s *client.Session) error {
		rec, err := s.Find(ctx, c.Args().First())
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return printJSON(c.App.Writer, rec)
		}
		tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PEER ID\tADDRS\tLOAD/CAPACITY\tEXPIRES IN")
		for _, e := range rec.Entries {
			p := e.Provider
			if p == nil {
				continue
			}
			addrs := strings.Join(p.Addrs, ",")
			if addrs == "" {
				addrs = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\n", p.PeerID, addrs, p.Load, p.Capacity, expiresIn(e.Expires))
		}
		return tw.Flush()
	})
}
