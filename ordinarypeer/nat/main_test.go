package nat

import (
	"testing"

	"go.uber.org/goleak"
)

// pion's servers and vnet routers do not join their goroutines on
// Close/Stop; goleak retries for a while before it reports.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
