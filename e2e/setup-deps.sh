#!/usr/bin/env bash
# Installs what p2psip's tests need on a Debian machine (run by `make deps`,
# and so by `make test`):
#   - the Go modules (go mod download);
#   - a C compiler for `go test -race` (gcc, libc6-dev);
#   - the tools of the e2e and benchmark suites: sipp (sip-tester),
#     ip and tc (iproute2), iptables, turnserver and turnutils_uclient
#     (coturn), pgrep (procps), killall (psmisc), kamailio with its
#     auth_ephemeral module (benchmark reference only, optional), and
#     chromium (the headless status-page test, optional).
# As root with apt-get, missing packages are installed (apt-get update runs
# only when something is missing) without starting their system services.
# Otherwise each missing tool is named with its package, and the tests that
# need it skip. Idempotent; quick when everything is present.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/go/bin:${PATH}:/usr/local/sbin:/usr/sbin:/sbin"

say() { printf 'setup-deps: %s\n' "$*"; }

if ! command -v go >/dev/null 2>&1; then
  say "go not found (expected at /usr/local/go/bin/go); install Go 1.26 first" >&2
  exit 1
fi
go mod download

# command  Debian packages  required|optional
tools=(
  "cc                gcc,libc6-dev  required"
  "sipp              sip-tester     required"
  "ip                iproute2       required"
  "tc                iproute2       required"
  "iptables          iptables       required"
  "turnserver        coturn         required"
  "turnutils_uclient coturn         required"
  "pgrep             procps         required"
  "killall           psmisc         required"
  "kamailio          kamailio       optional"
  "kamailio-autheph  kamailio-autheph-modules optional"
  "chromium          chromium       optional"
)

# have CMD: is the tool usable? "cc" means a C compiler that can build cgo
# code (the race detector needs it), i.e. gcc plus the libc headers.
have() {
  case "$1" in
    cc) command -v gcc >/dev/null 2>&1 && [ -e /usr/include/stdlib.h ] ;;
    kamailio-autheph) ls /usr/lib/*/kamailio/modules/auth_ephemeral.so >/dev/null 2>&1 ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

missing_tools() { # prints "cmd pkgs kind" for every missing tool
  local line cmd pkgs kind
  for line in "${tools[@]}"; do
    read -r cmd pkgs kind <<<"$line"
    have "$cmd" || printf '%s %s %s\n' "$cmd" "$pkgs" "$kind"
  done
}

missing=$(missing_tools)

if [ -n "$missing" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  required_pkgs=() optional_pkgs=()
  while read -r cmd pkgs kind; do
    for p in ${pkgs//,/ }; do
      if [ "$kind" = required ]; then required_pkgs+=("$p"); else optional_pkgs+=("$p"); fi
    done
  done <<<"$missing"
  # Deduplicate (coturn gives two tools, iproute2 too).
  mapfile -t required_pkgs < <(printf '%s\n' "${required_pkgs[@]}" | sed '/^$/d' | sort -u)
  mapfile -t optional_pkgs < <(printf '%s\n' "${optional_pkgs[@]}" | sed '/^$/d' | sort -u)

  # Daemons already running before the install are not ours to touch.
  daemons() { pgrep -x turnserver || true; pgrep -x kamailio || true; }
  daemons_before=$(daemons)

  # Keep postinst scripts from starting coturn/kamailio: invoke-rc.d and
  # deb-systemd-invoke ask policy-rc.d, and 101 means "action forbidden".
  # An existing policy-rc.d (Docker images ship one) is put back afterwards.
  policy=/usr/sbin/policy-rc.d
  policy_backup=""
  restore_policy() {
    if [ -n "$policy_backup" ]; then
      mv -f "$policy_backup" "$policy"
    else
      rm -f "$policy"
    fi
  }
  if [ -e "$policy" ]; then
    policy_backup=$(mktemp /usr/sbin/policy-rc.d.p2psip.XXXXXX)
    cp -p "$policy" "$policy_backup"
  fi
  trap restore_policy EXIT
  trap 'exit 130' INT TERM
  printf '#!/bin/sh\n# Written by p2psip e2e/setup-deps.sh for the length of an apt-get install.\nexit 101\n' >"$policy"
  chmod 0755 "$policy"

  apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
  export DEBIAN_FRONTEND=noninteractive
  to_install=(${required_pkgs[@]+"${required_pkgs[@]}"} ${optional_pkgs[@]+"${optional_pkgs[@]}"})
  say "installing: ${to_install[*]}"
  apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null ||
    say "warning: apt-get update failed; trying the install with the package lists at hand"
  installed=()
  if [ ${#required_pkgs[@]} -gt 0 ]; then
    apt-get install "${apt_opts[@]}" "${required_pkgs[@]}" ||
      { say "apt-get install ${required_pkgs[*]} failed" >&2; exit 1; }
    installed+=("${required_pkgs[@]}")
  fi
  for p in ${optional_pkgs[@]+"${optional_pkgs[@]}"}; do
    if apt-get install "${apt_opts[@]}" "$p"; then
      installed+=("$p")
    else
      say "warning: could not install optional package $p; the benchmarks or tests that need it will skip"
    fi
  done

  restore_policy
  trap - EXIT INT TERM

  # Packages installed here are for tests only: under systemd, keep their
  # services stopped and off at the next boot too.
  if [ -d /run/systemd/system ]; then
    for p in ${installed[@]+"${installed[@]}"}; do
      case "$p" in
        coturn | kamailio) systemctl disable --now --quiet "$p.service" 2>/dev/null || true ;;
      esac
    done
  fi
  # Belt and braces: stop any daemon the install started despite the policy.
  for pid in $(daemons); do
    if ! grep -qx "$pid" <<<"$daemons_before"; then
      say "stopping $(cat "/proc/$pid/comm" 2>/dev/null || echo daemon) (pid $pid) started by the package install"
      kill "$pid" 2>/dev/null || true
    fi
  done

  missing=$(missing_tools)
fi

if [ -n "$missing" ]; then
  while read -r cmd pkgs kind; do
    if [ "$cmd" = cc ]; then
      say "missing a C compiler (Debian packages ${pkgs//,/ }): tests run without -race"
    elif [ "$cmd" = chromium ]; then
      say "missing chromium (Debian package chromium, optional): the headless status-page test (e2e/overlay TestStatusPage) will skip"
    elif [ "$kind" = optional ]; then
      say "missing $cmd (Debian package $pkgs, optional): benchmarks that need it will skip"
    else
      say "missing $cmd (Debian package ${pkgs//,/ }): tests that need it will skip"
    fi
  done <<<"$missing"
  if [ "$(id -u)" -ne 0 ]; then
    say "run as root (sudo make deps) to install them with apt-get"
  fi
fi

available=() absent=()
for line in "${tools[@]}"; do
  read -r cmd _ _ <<<"$line"
  if have "$cmd"; then available+=("$cmd"); else absent+=("$cmd"); fi
done
say "go modules ok; available: ${available[*]:-none}; missing: ${absent[*]:-none}"
