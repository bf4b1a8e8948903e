//go:build !linux

package link

// canPark is false here: connections keep their reader goroutine.
const canPark = false

func readable(uintptr) bool { return true }
