package localsip_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that every goroutine the tests started (routers, sipgo
// transports and transactions, phones) is gone at the end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
