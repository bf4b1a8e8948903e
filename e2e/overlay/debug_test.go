package overlay

import (
	"os"

	"github.com/emiago/sipgo/sip"
)

// P2PSIP_SIP_TRACE=1 prints every SIP message sipgo reads or writes in
// this process (agents and phones, to stderr): the quickest way to follow
// a call hop by hop.
func init() {
	if os.Getenv("P2PSIP_SIP_TRACE") != "" {
		sip.SIPDebug = true
	}
}
