package relay

import (
	"testing"

	"go.uber.org/goleak"
)

// pion's goroutines cannot be joined (Run waits until they have nothing
// left but their return); goleak retries for a while before it reports.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
