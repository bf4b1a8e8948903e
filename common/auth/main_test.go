package auth

import (
	"testing"

	"go.uber.org/goleak"
)

// The TLS tests run handshakes on goroutines; none may outlive the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
