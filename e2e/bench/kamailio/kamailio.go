// Package kamailio runs Kamailio (Debian package kamailio) as the
// reference of the benchmarks: a registrar with the same auth_ephemeral
// digest as our SIP edge (registrar.cfg), or a stateful proxy
// (proxy.cfg). Each runs as a child process in its own process group on
// a free loopback port and is stopped, workers included, at test cleanup.
package kamailio

import (
	"embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/p2psip/p2psip/e2e/harness/sipp"
)

//go:embed *.cfg
var configs embed.FS

// Role selects the configuration.
type Role string

const (
	// Registrar answers REGISTER with a digest challenge (auth_ephemeral)
	// and keeps contacts in memory.
	Registrar Role = "registrar.cfg"
	// Proxy registers without authentication and relays calls statefully
	// with Record-Route.
	Proxy Role = "proxy.cfg"
)

// Config of a Kamailio run.
type Config struct {
	Role Role
	// Domain is the SIP domain (the auth realm of the registrar).
	Domain string
	// Secret is the auth_ephemeral secret (ASCII: it goes into the
	// configuration file).
	Secret string
	// Children is the number of UDP workers (default max(2, cores)).
	Children int
}

// Server is a running Kamailio.
type Server struct {
	// Addr is its host:port on 127.0.0.1.
	Addr string
	// Auth is "auth_ephemeral", or "none" when the registrar runs without
	// the module (Debian package kamailio-autheph-modules missing).
	Auth string
	pgid int
}

// CPU is the CPU time all of Kamailio's processes have used so far
// (/proc/PID/schedstat: accurate on this VM, unlike /proc/stat).
func (s *Server) CPU() time.Duration {
	var sum time.Duration
	for _, pid := range group(s.pgid) {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "schedstat"))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			if ns, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				sum += time.Duration(ns)
			}
		}
	}
	return sum
}

// Available says why Kamailio cannot run here, or "" when it can.
func Available() string {
	if _, err := bin(); err != nil {
		return err.Error()
	}
	if _, err := modules(); err != nil {
		return err.Error()
	}
	return ""
}

func bin() (string, error) {
	if p, err := exec.LookPath("kamailio"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/kamailio"); err == nil {
		return "/usr/sbin/kamailio", nil
	}
	return "", fmt.Errorf("kamailio not installed (Debian package kamailio; make deps installs it)")
}

func modules() (string, error) {
	for _, m := range []string{"/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/aarch64-linux-gnu/kamailio/modules", "/usr/lib/kamailio/modules"} {
		if _, err := os.Stat(filepath.Join(m, "registrar.so")); err == nil {
			return m, nil
		}
	}
	return "", fmt.Errorf("kamailio modules not found")
}

// Start runs Kamailio with cfg until the test ends; it skips the test when
// Kamailio is not installed and fails it when Kamailio does not come up.
func Start(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	if why := Available(); why != "" {
		tb.Skip(why)
	}
	path, _ := bin()
	mpath, _ := modules()
	tmpl, err := configs.ReadFile(string(cfg.Role))
	if err != nil {
		tb.Fatalf("kamailio: no configuration %q", cfg.Role)
	}
	srv := &Server{Auth: "none"}
	if cfg.Role == Registrar {
		srv.Auth = "auth_ephemeral"
		if _, err := os.Stat(filepath.Join(mpath, "auth_ephemeral.so")); err != nil {
			srv.Auth = "none"
		}
	}
	if cfg.Children <= 0 {
		cfg.Children = max(2, runtime.NumCPU())
	}
	port := sipp.FreeUDPPort(tb)
	text := strings.NewReplacer("@PORT@", strconv.Itoa(port), "@SECRET@", cfg.Secret, "@DOMAIN@", cfg.Domain,
		"@MPATH@", mpath, "@CHILDREN@", strconv.Itoa(cfg.Children)).Replace(string(tmpl))
	if cfg.Role == Registrar && srv.Auth == "none" {
		text = StripAuth(text)
	}
	dir := tb.TempDir()
	cfgPath := filepath.Join(dir, "kamailio.cfg")
	if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(path, "-f", cfgPath, "-m", "4096", "-M", "64", "-DD", "-E", "-Y", dir, "-w", dir)
	// Its own process group (StartServer): -DD keeps the main process in
	// front, but its workers are children that must go with it.
	sipp.StartServer(tb, "kamailio", cmd, port)
	// The workers start after the socket is bound: wait until the
	// process group has them all (main, timers and the UDP children).
	deadline := time.Now().Add(5 * time.Second)
	for len(group(cmd.Process.Pid)) < cfg.Children+1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	srv.Addr, srv.pgid = fmt.Sprintf("127.0.0.1:%d", port), cmd.Process.Pid
	return srv
}

// group lists the processes of process group pgid.
func group(pgid int) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces, so split
		// after its closing parenthesis.
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 {
			f := strings.Fields(s[i+1:])
			if len(f) > 2 && f[2] == strconv.Itoa(pgid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// StripAuth drops the authentication of registrar.cfg (the fallback
// without auth_ephemeral).
func StripAuth(cfg string) string {
	var keep []string
	skip := false
	for _, l := range strings.Split(cfg, "\n") {
		t := strings.TrimSpace(l)
		switch {
		case strings.Contains(t, "auth_ephemeral") || strings.HasPrefix(t, `loadmodule "auth.so"`):
			continue
		case strings.HasPrefix(t, "if (!autheph_check"):
			skip = true
			continue
		case skip:
			if t == "}" {
				skip = false
			}
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}
