// Command p2psip is the one binary of the overlay (ARCHITECTURE.md §1 and
// §11): `superpeer` runs a super peer, `credentials issue` mints user
// credentials from the overlay secret, `record` and `service` are clients
// of the distributed database, and `status` reads a super peer's admin API.
//
// This package stays thin (STYLE.md B9): each subcommand maps flags,
// P2PSIP_* environment variables and, for `superpeer`, a YAML/TOML config
// file (precedence in that order, then the defaults) into a Config or a
// client call, runs it, and prints the result. Everything else lives in
// superpeer/ and common/.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/p2psip/p2psip/common/gctune"
)

// version is set at link time (Makefile: -X main.version=...).
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, restore the default handling so that a second
	// Ctrl-C kills a process whose graceful stop hangs.
	go func() {
		<-ctx.Done()
		stop()
	}()
	app := newApp()
	err := app.RunContext(ctx, hoistFlags(app, os.Args))
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "p2psip: %v\n", err)
		os.Exit(1)
	}
}

// newApp builds the command tree. Errors are printed once, by main: the
// ExitErrHandler is a no-op (so urfave does not print cli.Exit errors and
// exit on its own), and OnUsageError returns flag errors without the help
// dump urfave would otherwise write to stdout.
func newApp() *cli.App {
	app := &cli.App{
		Name:      "p2psip",
		Usage:     "a P2PSIP overlay: super peers, credentials and database clients",
		UsageText: "p2psip COMMAND [SUBCOMMAND] [flags] [ARGS]",
		Description: "Flags may also come from P2PSIP_<FLAG_NAME> environment variables " +
			"(e.g. P2PSIP_PEER_PORT), and for `superpeer` from a --config file; " +
			"precedence: flags > environment > config file > defaults.",
		Commands: []*cli.Command{
			superpeerCommand(),
			peerCommand(),
			credentialsCommand(),
			recordCommand(),
			serviceCommand(),
			statusCommand(),
			configCommand(),
			demoCommand(),
		},
		Version:        version,
		ExitErrHandler: func(*cli.Context, error) {},
	}
	app.OnUsageError = usageError
	app.Action = helpOrUnknown
	setHandlers(app.Commands)
	return app
}

// setHandlers gives every command our usage-error handler, and every
// command with subcommands an Action that refuses an unknown subcommand
// (urfave's default says "No help topic" and, with a CommandNotFound,
// exits 0).
func setHandlers(cmds []*cli.Command) {
	for _, c := range cmds {
		c.OnUsageError = usageError
		if len(c.Subcommands) > 0 && c.Action == nil {
			c.Action = helpOrUnknown
		}
		setHandlers(c.Subcommands)
	}
}

func helpOrUnknown(c *cli.Context) error {
	if c.Args().Present() {
		return fmt.Errorf("unknown command %q (see '%s --help')", c.Args().First(), commandName(c))
	}
	return cli.ShowSubcommandHelp(c)
}

func usageError(c *cli.Context, err error, _ bool) error {
	return fmt.Errorf("%w (see '%s --help')", err, commandName(c))
}

// commandName is the command path of c, e.g. "p2psip record get".
func commandName(c *cli.Context) string {
	if c.Command != nil && c.Command.HelpName != "" {
		return c.Command.HelpName
	}
	return c.App.Name
}

// env names a flag's environment variable: P2PSIP_ and the flag name in
// upper snake case ("peer-port" → P2PSIP_PEER_PORT).
func env(flag string) []string {
	return []string{"P2PSIP_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))}
}

// hoistFlags works around urfave/cli's flag parsing stopping at the first
// positional argument (`record get AOR --json` would otherwise take
// "--json" as a second argument and ignore it). It finds the leaf command
// that args name and moves every flag (with its value, for flags that take
// one) that follows a positional argument in front of the positional
// arguments, keeping the relative order of both. Tokens after a "--" stay
// positional. Flags unknown to the leaf are moved as if they took no value,
// so urfave still reports them. Args it cannot map to a leaf command are
// returned unchanged.
func hoistFlags(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	cmds, flags := app.Commands, app.Flags
	i := 1
	for i < len(args) {
		t := args[i]
		switch {
		case t == "--":
			return append(out, args[i:]...)
		case isFlag(t):
			out = append(out, t)
			i++
			if takesValue(flags, t) && i < len(args) {
				out = append(out, args[i])
				i++
			}
			continue
		}
		var cmd *cli.Command
		for _, c := range cmds {
			if c.HasName(t) {
				cmd = c
				break
			}
		}
		if cmd == nil {
			return append(out, args[i:]...)
		}
		out = append(out, t)
		i++
		if len(cmd.Subcommands) == 0 {
			return append(out, reorderLeaf(cmd.Flags, args[i:])...)
		}
		cmds, flags = cmd.Subcommands, cmd.Flags
	}
	return out
}

// reorderLeaf returns rest with its flags first, then its positional
// arguments (behind a "--" if rest had one, so that positional arguments
// after it that look like flags stay positional).
func reorderLeaf(flags []cli.Flag, rest []string) []string {
	var fl, pos []string
	dashdash := false
	for j := 0; j < len(rest); j++ {
		t := rest[j]
		switch {
		case t == "--":
			dashdash = true
			pos = append(pos, rest[j+1:]...)
			j = len(rest)
		case isFlag(t):
			fl = append(fl, t)
			if takesValue(flags, t) && j+1 < len(rest) {
				j++
				fl = append(fl, rest[j])
			}
		default:
			pos = append(pos, t)
		}
	}
	if dashdash {
		fl = append(fl, "--")
	}
	return append(fl, pos...)
}

func isFlag(t string) bool { return len(t) > 1 && t[0] == '-' }

// takesValue reports whether the flag token t ("--name", "-n", without an
// "=value" part) names a flag of flags that takes a separate value.
func takesValue(flags []cli.Flag, t string) bool {
	name := strings.TrimLeft(t, "-")
	if strings.Contains(name, "=") {
		return false
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n != name {
				continue
			}
			if tv, ok := f.(interface{ TakesValue() bool }); ok {
				return tv.TakesValue()
			}
			return true
		}
	}
	return false
}

// tuneRuntime paces the GC for the role (gctune.Tune) and caps the
// runtime's memory at the cgroup's limit (gctune.LimitToCgroup), saying
// what it did: the first log lines of a process an operator reads when it
// is short of memory.
func tuneRuntime(log zerolog.Logger, minHeap uint64) {
	gctune.Tune(minHeap)
	l, err := gctune.LimitToCgroup()
	switch {
	case err != nil:
		log.Warn().Err(err).Msg("memory limit not applied")
	case l.Set > 0:
		log.Info().Int64("cgroup_limit_bytes", l.Cgroup).Int64("go_memory_limit_bytes", l.Set).Str("from", l.Why).
			Msg("go memory limit set below the cgroup's (GOMEMLIMIT overrides)")
	default:
		log.Debug().Str("why", l.Why).Msg("no go memory limit")
	}
}
