//go:build !unix

package session

func openFileLimit() uint64 { return 0 }
