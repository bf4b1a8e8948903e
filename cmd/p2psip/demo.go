package main

// `p2psip demo` (ARCHITECTURE.md §2, for newcomers): a whole overlay on
// loopback in one process — three super peers, the agents of alice and
// bob, a built-in phone registered through each agent — then a test call
// from alice to bob. It prints the result and the status page URL and
// runs until Ctrl-C.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/gctune"
	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/sipua"
	"github.com/p2psip/p2psip/ordinarypeer/agent"
	"github.com/p2psip/p2psip/superpeer"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run a whole overlay on loopback (3 super peers, 2 agents, 2 phones) and place a test call",
		Description: "Everything runs in this process on 127.0.0.1 with free ports and a fresh overlay secret;\n" +
			"state goes to a temporary directory removed at exit (or --data-dir). Ctrl-C stops it.",
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "overlay", Value: "demo.p2psip.test", Usage: "overlay `NAME`"},
			&cli.StringFlag{Name: "admin", Value: "127.0.0.1:0", Usage: "first super peer's admin and status page `ADDR` (port 0: a free one)"},
			&cli.PathFlag{Name: "data-dir", Usage: "keep the nodes' state in `DIR` (default: a temporary directory, removed at exit)"},
			&cli.StringFlag{Name: "log-level", Value: "warn", Usage: "`LEVEL` of the nodes' log lines (stderr)"},
			&cli.BoolFlag{Name: "once", Usage: "exit after the test call (exit status 1 if it failed)"},
		},
		Action: runDemo,
	}
}

// demoNode is something the demo runs until the end: a super peer or an
// agent, with its Run's result.
type demoNode struct {
	name   string
	cancel context.CancelFunc
	done   chan error
	leave  func() // graceful part of the stop, before cancel (super peers)
}

func runDemo(c *cli.Context) error {
	if c.Args().Present() {
		return fmt.Errorf("demo takes no arguments, got %q", c.Args().Slice())
	}
	overlay := c.String("overlay")
	if !domainRE.MatchString(overlay) {
		return fmt.Errorf("config: overlay: must be a domain name such as example.net (got %q)", overlay)
	}
	if msg := hostPort(c.String("admin"), true); msg != "" {
		return fmt.Errorf("config: admin: %s", msg)
	}
	logOut := &gateWriter{w: c.App.ErrWriter}
	log, err := logx.New(logx.Options{Format: "console", Level: c.String("log-level"), Out: logOut})
	if err != nil {
		return fmt.Errorf("config: log-level: %w", err)
	}
	logx.SetDefault(log)
	tuneRuntime(log, gctune.ServerHeap) // three super peers and two agents in one process
	dir := c.Path("data-dir")
	if dir == "" {
		if dir, err = os.MkdirTemp("", "p2psip-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir) //nolint:errcheck
	}
	out := c.App.Writer
	d := &demo{overlay: overlay, dir: dir, log: log, out: out}
	defer func() {
		// Nodes stopping one after another log each other's departure
		// and closed sockets; at the end of a demo that is noise.
		if log.GetLevel() > zerolog.DebugLevel {
			logOut.quiet.Store(true)
		}
		d.stop()
	}()
	if err := d.start(c.Context, c.String("admin")); err != nil {
		return err
	}
	callErr := d.testCall(c.Context)
	if c.Bool("once") || c.Context.Err() != nil {
		return callErr
	}
	fmt.Fprintln(out, "running; Ctrl-C stops it")
	<-c.Context.Done()
	fmt.Fprintln(out, "stopping")
	return nil
}

type demo struct {
	overlay string
	dir     string
	log     zerolog.Logger
	out     io.Writer

	secret []byte
	sps    []*superpeer.Node
	agents []*agent.Agent
	phones []*sipua.UA
	nodes  []*demoNode
}

// start brings up the super peers, the agents and the phones.
func (d *demo) start(ctx context.Context, admin string) error {
	d.secret = make([]byte, 32)
	rand.Read(d.secret) //nolint:errcheck // never fails
	ca, err := auth.OverlayCA(d.secret, d.overlay)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "p2psip demo: overlay %s on loopback (state in %s)\n", d.overlay, d.dir)
	for i := range 3 {
		name := fmt.Sprintf("sp%d", i+1)
		cfg := superpeer.Config{
			Overlay: d.overlay, DataDir: filepath.Join(d.dir, name), Secret: d.secret,
			Bind: "127.0.0.1", PeerPort: -1, GossipPort: -1, SIPPort: -1, SIPSPort: -1, TURNPort: -1,
			Admin: "off", TURNAllowLoopback: true,
		}
		if i == 0 {
			cfg.Admin = admin
		} else {
			cfg.Join = []string{d.sps[0].GossipAddr()}
		}
		n, err := superpeer.New(cfg, d.log.With().Str("node", name).Logger())
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		dn := d.run(ctx, name, n.Run)
		dn.leave = func() { n.Leave(2 * time.Second) } //nolint:errcheck // best effort at exit
		if err := d.wait(dn, n.Ready(), 15*time.Second); err != nil {
			return err
		}
		d.sps = append(d.sps, n)
		fmt.Fprintf(d.out, "  super peer %s: peer protocol %s, gossip %s\n", name, n.PeerAddr(), n.GossipAddr())
	}
	// Both agents and phones: alice's at sp1, bob's at sp2.
	for i, user := range []string{"alice", "bob"} {
		creds, err := auth.Issue(d.secret, user, 24*time.Hour, time.Now())
		if err != nil {
			return err
		}
		a, err := agent.New(agent.Config{
			Overlay: d.overlay, Bootstrap: []string{d.sps[i].PeerAddr(), d.sps[2].PeerAddr()},
			Credentials: creds, DataDir: filepath.Join(d.dir, "agent-"+user),
			SIPListen: "127.0.0.1:0", Roots: ca.Pool(),
		}, d.log.With().Str("node", "agent-"+user).Logger())
		if err != nil {
			return fmt.Errorf("agent %s: %w", user, err)
		}
		dn := d.run(ctx, "agent "+user, a.Run)
		if err := d.wait(dn, a.Uplink().Ready(), 15*time.Second); err != nil {
			return err
		}
		d.agents = append(d.agents, a)
		ua, err := sipua.New(sipua.Config{User: user, Domain: d.overlay, Proxy: a.SIPAddr(), Listen: "127.0.0.1:0"},
			d.log.With().Str("node", "phone-"+user).Logger())
		if err != nil {
			return err
		}
		d.phones = append(d.phones, ua)
		if err := retry(ctx, 15*time.Second, func() error {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, err := ua.Register(rctx, 3600)
			return err
		}); err != nil {
			return fmt.Errorf("phone %s: %w", user, err)
		}
		at := a.Status().SPAddr
		for j, n := range d.sps {
			if n.PeerAddr() == at {
				at = fmt.Sprintf("sp%d", j+1)
			}
		}
		fmt.Fprintf(d.out, "  agent of %-5s: attached to %s, SIP %s; its phone %s is registered there\n",
			user, at, a.SIPAddr(), ua.Addr())
	}
	if addr := d.sps[0].AdminAddr(); addr != "" {
		fmt.Fprintf(d.out, "  status page: http://%s/\n", addr)
	}
	return nil
}

// testCall places a call from alice's phone to bob's and prints it. The
// first attempts may find bob's registration still on its way.
func (d *demo) testCall(ctx context.Context) error {
	alice, bob := d.phones[0], d.phones[1]
	target := bob.AoR()
	var res sipua.CallResult
	err := retry(ctx, 15*time.Second, func() error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var err error
		res, err = alice.Call(cctx, target)
		return err
	})
	from := alice.AoR()
	if err != nil {
		fmt.Fprintf(d.out, "test call %s → %s FAILED: %v (responses %v)\n", from.String(), target.String(), err, res.Codes)
		return fmt.Errorf("test call: %w", err)
	}
	codes := make([]string, len(res.Codes))
	for i, c := range res.Codes {
		codes[i] = fmt.Sprint(c)
	}
	fmt.Fprintf(d.out, "test call %s → %s: OK (responses %s, answered in %s, ACK and BYE done; bob's phone answered %d call)\n",
		from.String(), target.String(), strings.Join(codes, " "), res.Setup.Round(time.Millisecond), bob.Answered())
	fmt.Fprintf(d.out, "  a softphone can join: register sip:alice@%s (any password) with registrar and outbound proxy %s\n",
		d.overlay, d.agents[0].SIPAddr())
	return nil
}

// run starts f on a context of its own.
func (d *demo) run(ctx context.Context, name string, f func(context.Context) error) *demoNode {
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	dn := &demoNode{name: name, cancel: cancel, done: make(chan error, 1)}
	go func() { dn.done <- f(rctx) }()
	d.nodes = append(d.nodes, dn)
	return dn
}

// wait waits for ready, or fails when the node stops first or timeout
// passes.
func (d *demo) wait(dn *demoNode, ready <-chan struct{}, timeout time.Duration) error {
	select {
	case <-ready:
		return nil
	case err := <-dn.done:
		dn.done <- err
		return fmt.Errorf("%s stopped: %v", dn.name, err)
	case <-time.After(timeout):
		return fmt.Errorf("%s not ready after %s", dn.name, timeout)
	}
}

// stop closes the phones, then the agents and super peers in reverse
// order of starting, each within a few seconds.
func (d *demo) stop() {
	for _, p := range d.phones {
		p.Close()
	}
	for i := len(d.nodes) - 1; i >= 0; i-- {
		dn := d.nodes[i]
		if dn.leave != nil {
			dn.leave()
		}
		dn.cancel()
		select {
		case <-dn.done:
		case <-time.After(5 * time.Second):
			fmt.Fprintf(d.out, "%s did not stop within 5s\n", dn.name)
		}
	}
}

// gateWriter passes lines on until quiet is set.
type gateWriter struct {
	w     io.Writer
	quiet atomic.Bool
}

func (g *gateWriter) Write(p []byte) (int, error) {
	if g.quiet.Load() {
		return len(p), nil
	}
	return g.w.Write(p)
}

// retry calls f until it succeeds, timeout passes or ctx ends; it returns
// f's last error.
func retry(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.Join(err, ctx.Err())
		}
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
	}
}
