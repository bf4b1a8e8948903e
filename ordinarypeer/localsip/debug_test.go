package localsip_test

import (
	"os"

	"github.com/emiago/sipgo/sip"
)

// P2PSIP_SIP_TRACE=1 prints every SIP message sipgo reads or writes (to
// stderr, through sipgo's default logger): the quickest way to see a call
// hop by hop, phone → agent → tunnel → agent → phone.
func init() {
	if os.Getenv("P2PSIP_SIP_TRACE") != "" {
		sip.SIPDebug = true
	}
}
