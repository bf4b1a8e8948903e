// Command phone is the compose e2e test's SIP phone: common/sipua built as
// a static binary for a FROM scratch container on an agent's LAN (there
// is no registry to pull SIPp from).
//
//	phone serve --user alice --domain D --proxy agent-alice:5060
//	    registers (retrying until the agent takes it), answers every call,
//	    refreshes the registration, until SIGTERM.
//	phone call --user bob --domain D --proxy agent-bob:5060 --calls 3 sip:alice@D
//	    places calls; the first is retried until it is answered or
//	    --timeout passes (the callee's record may still be on its way),
//	    every later one must succeed. Prints a `RESULT ok=N failed=M` line
//	    and exits 1 on any failure.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/sipua"
)

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "serve" && os.Args[1] != "call") {
		fmt.Fprintln(os.Stderr, "usage: phone serve|call [flags] [TARGET]")
		os.Exit(2)
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	user := fs.String("user", "", "user part of the AoR")
	domain := fs.String("domain", "p2psip.lab", "overlay domain")
	proxy := fs.String("proxy", "", "agent SIP address HOST:PORT")
	listen := fs.String("listen", "", "UDP listen address (default: ephemeral port on the address routed to the proxy)")
	calls := fs.Int("calls", 3, "calls to place (call)")
	timeout := fs.Duration("timeout", 60*time.Second, "how long the first call may be retried, and registration (serve)")
	fs.Parse(os.Args[2:]) //nolint:errcheck // ExitOnError
	log := zerolog.New(os.Stdout).With().Timestamp().Str("phone", *user).Logger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ua, err := sipua.New(sipua.Config{User: *user, Domain: *domain, Proxy: *proxy, Listen: *listen}, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer ua.Close()
	switch mode {
	case "serve":
		err = serve(ctx, ua, log, *timeout)
	case "call":
		if fs.NArg() != 1 {
			err = errors.New("call: want one TARGET sip:user@domain")
			break
		}
		var target sip.Uri
		if err = sip.ParseUri(fs.Arg(0), &target); err != nil {
			break
		}
		err = call(ctx, ua, log, target, *calls, *timeout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "phone:", err)
		ua.Close()
		os.Exit(1)
	}
}

func serve(ctx context.Context, ua *sipua.UA, log zerolog.Logger, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := ua.Register(rctx, 300)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("not registered after %s: %w", timeout, err)
		}
		log.Info().Err(err).Msg("register: retrying")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	aor := ua.AoR()
	log.Info().Str("aor", aor.String()).Str("addr", ua.Addr()).Msg("registered")
	refresh := time.NewTicker(60 * time.Second)
	defer refresh.Stop()
	for {
		select {
		case <-ctx.Done():
			log.Info().Int64("answered", ua.Answered()).Msg("stopping")
			return nil
		case <-refresh.C:
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if _, err := ua.Register(rctx, 300); err != nil {
				log.Warn().Err(err).Msg("register refresh")
			}
			cancel()
		}
	}
}

func call(ctx context.Context, ua *sipua.UA, log zerolog.Logger, target sip.Uri, n int, timeout time.Duration) error {
	ok, failed := 0, 0
	deadline := time.Now().Add(timeout)
	for i := 0; i < n; i++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := ua.Call(cctx, target)
		cancel()
		if err != nil && ok == 0 && time.Now().Before(deadline) && ctx.Err() == nil {
			// Before the first answered call, the callee may not be
			// registered in the overlay yet: retry.
			log.Info().Err(err).Ints("codes", res.Codes).Msg("first call: retrying")
			i--
			time.Sleep(time.Second)
			continue
		}
		if err != nil {
			failed++
			log.Error().Err(err).Ints("codes", res.Codes).Str("call_id", res.CallID).Msg("call failed")
			continue
		}
		ok++
		log.Info().Ints("codes", res.Codes).Str("call_id", res.CallID).Dur("setup", res.Setup).Msg("call ok")
	}
	fmt.Printf("RESULT ok=%d failed=%d\n", ok, failed)
	if failed > 0 || ok < n {
		return fmt.Errorf("%d of %d calls failed", n-ok, n)
	}
	return nil
}
