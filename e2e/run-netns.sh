#!/usr/bin/env bash
# Runs the network-namespace e2e suite (e2e/netns, build tag e2e; ARCHITECTURE.md §12).
#
#   e2e/run-netns.sh                 run it; fail, naming what is missing, if it cannot run
#   e2e/run-netns.sh --if-possible   run it when it can run (root, tools present),
#                                    else print "skipping e2e: <reason>" and succeed
#
# Extra arguments go to `go test` (e.g. -run TestCallsAcrossNATs -v).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/go/bin:${PATH}:/usr/local/sbin:/usr/sbin:/sbin"

if_possible=false
if [ "${1:-}" = --if-possible ]; then
  if_possible=true
  shift
fi

# command:Debian package, for what the suite execs.
tools=(ip:iproute2 tc:iproute2 iptables:iptables sipp:sip-tester)

reason=""
if ! compgen -G 'e2e/netns/*.go' >/dev/null; then
  reason="e2e/netns has no tests yet"
  # Nothing to run is not a failure, even when asked for explicitly.
  if_possible=true
elif [ "$(id -u)" -ne 0 ]; then
  reason="not running as root (the suite builds network namespaces, veth links and NAT rules)"
else
  missing=()
  for t in "${tools[@]}"; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t%%:*} (Debian package ${t#*:})")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    reason="missing $(printf '%s, ' "${missing[@]}" | sed 's/, $//'); install with: make deps (as root)"
  else
    probe="p2psip-probe-$$"
    if ip netns add "$probe" 2>/dev/null; then
      ip netns delete "$probe"
    else
      reason="cannot create network namespaces here (ip netns add failed: no CAP_SYS_ADMIN?)"
    fi
  fi
fi

if [ -n "$reason" ]; then
  if $if_possible; then
    echo "skipping e2e: $reason"
    exit 0
  fi
  echo "e2e: cannot run: $reason" >&2
  exit 1
fi

# The suite's output is long (a failing test prints the tails of its
# processes' logs), and CI shows only its end: on failure, repeat each
# failed test's own lines (its _test.go messages, the failure among them)
# last.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
go test -tags e2e -count=1 -v -timeout 20m "$@" ./e2e/netns/... 2>&1 | tee "$out" || status=$?
if [ "$status" -ne 0 ]; then
  echo
  echo "==== e2e failed (exit $status); the failed tests' own lines again ===="
  awk -f e2e/failed-lines.awk "$out"
fi
exit "$status"
