// Command assemble writes the benchmark report from the fragments the
// TestBench... tests wrote (see package report):
//
//	go run ./e2e/bench/report/assemble -in DIR -out e2e/bench/results [-gobench FILE]
//
// It prints the directory written and exits non-zero when a fragment is
// unreadable or there is none.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/p2psip/p2psip/e2e/bench/report"
)

func main() {
	in := flag.String("in", os.Getenv(report.EnvOut), "directory of fragments (default $"+report.EnvOut+")")
	out := flag.String("out", "e2e/bench/results", "results directory: the report goes to OUT/<timestamp> and OUT/latest")
	gobench := flag.String("gobench", "", "file with the output of `go test -bench`, kept beside the report")
	commit := flag.String("commit", "", "the commit measured (default: git describe --always --dirty now)")
	var notes multi
	flag.Var(&notes, "note", "a line for the report's header (repeatable)")
	flag.Parse()
	if *in == "" {
		fmt.Fprintln(os.Stderr, "assemble: -in (or $"+report.EnvOut+") is required")
		os.Exit(2)
	}
	dir, err := report.Assemble(report.Options{In: *in, Out: *out, GoBench: *gobench, Commit: *commit, Notes: notes})
	if err != nil {
		fmt.Fprintln(os.Stderr, "assemble:", err)
		os.Exit(1)
	}
	fmt.Println(dir + "/report.md")
}

type multi []string

func (m *multi) String() string     { return fmt.Sprint(*m) }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }
