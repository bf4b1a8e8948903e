//go:build unix

package session

import "syscall"

// openFileLimit is the process's open-file limit (0: unknown). The Go
// runtime has raised the soft limit to the hard one already.
func openFileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return rl.Cur
}
