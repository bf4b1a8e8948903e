//go:build e2e

package netns

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if err := Preflight(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: cannot run: %v\n", err)
		return 1
	}
	CleanupLeftovers(os.Stderr)

	binDir, err := os.MkdirTemp("", fmt.Sprintf("%sbin-%d-", nsPrefix, os.Getpid()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(binDir)
	if Binary = os.Getenv("P2PSIP_E2E_BINARY"); Binary != "" {
		fmt.Fprintf(os.Stderr, "e2e: testing %s (P2PSIP_E2E_BINARY)\n", Binary)
	} else if Binary, err = BuildBinary(binDir); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	if err := AgentAvailable(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: note: the agent scenarios will skip: %v\n", err)
	}

	// An interrupted run still tears down its namespaces and processes;
	// a run killed outright leaves them to the next run's CleanupLeftovers
	// (its processes die with it: they carry a parent-death signal).
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "e2e: %v: tearing down\n", s)
		TeardownAll(os.Stderr)
		os.RemoveAll(binDir)
		os.Exit(130)
	}()

	code := m.Run()
	TeardownAll(os.Stderr) // normally nothing is left: each test cleans up
	return code
}
