// Command turnload drives any TURN server with TURN-REST credentials
// (use-auth-secret) the way `make bench` drives ours and coturn: it opens
// allocations (reporting allocations/s), then ramps the packets/s relayed
// through some of them to a local sink and reports the highest rate with
// no loss. The server must allow relaying to loopback peers (coturn
// --allow-loopback-peers, p2psip --turn-allow-loopback).
//
//	go run ./e2e/bench/turnload/cmd/turnload -server 127.0.0.1:3478 -realm p2psip.test -secret-file p2psip-data/overlay.secret
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/p2psip/p2psip/e2e/bench/turnload"
)

func main() {
	server := flag.String("server", "127.0.0.1:3478", "TURN server, UDP host:port")
	realm := flag.String("realm", "", "the server's realm (required)")
	secret := flag.String("secret", "", "TURN-REST shared secret")
	secretFile := flag.String("secret-file", "", "file holding the shared secret (instead of -secret)")
	allocs := flag.Int("allocations", 1000, "allocations to open")
	workers := flag.Int("workers", 16, "allocations opened at once")
	through := flag.Int("through", 32, "allocations that carry the packets")
	start := flag.Int("start", 10000, "first offered rate, packets/s (doubles while no loss)")
	limit := flag.Int("limit", 640000, "highest offered rate")
	step := flag.Duration("step", 3*time.Second, "duration of a ramp step")
	hold := flag.Duration("hold", 10*time.Second, "duration of the confirming run")
	flag.Parse()
	key := *secret
	if *secretFile != "" {
		b, err := os.ReadFile(*secretFile)
		if err != nil {
			fail(err)
		}
		key = strings.TrimSpace(string(b))
	}
	if *realm == "" || key == "" {
		fail(fmt.Errorf("-realm and -secret (or -secret-file) are required"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	l, st, err := turnload.Open(ctx, turnload.Config{Server: *server, Realm: *realm, Secret: []byte(key), Allocations: *allocs, Workers: *workers})
	if err != nil {
		fail(err)
	}
	defer l.Close()
	fmt.Println(st)
	if err := l.Warm(ctx, *through); err != nil {
		fail(err)
	}
	logf := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	best, _ := l.MaxRate(*server, turnload.Ramp{Through: *through, Start: *start, Limit: *limit, Bisect: 2,
		Step: *step, Hold: *hold, HoldTries: 2, Log: logf})
	fmt.Printf("relayed packets/s at 0 loss: %d; allocations/s: %.0f\n", best.Rate, st.PerSec)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "turnload:", err)
	os.Exit(1)
}
