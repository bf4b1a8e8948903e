package siproute

import (
	"time"

	"github.com/emiago/sipgo/sip"
)

// Linger is how long a completed SIP transaction stays to absorb
// retransmissions (sipgo's timers D, J and L; M is acceptedLinger). RFC 3261 sets them to
// 64×T1 = 32 s on UDP; at a thousand calls per second that keeps some
// 250,000 finished transactions, each holding its request and last
// response, in memory — gigabytes of heap that every GC cycle marks.
// 5 s is Kamailio's tm wait_timer: a UA retransmits a request at most
// T2 = 4 s after the previous copy, so a retransmission still arrives
// while its transaction lingers unless several copies in a row are lost;
// the rare one that arrives later is handled as a new request, which is
// harmless for the methods that get there (a repeated BYE, REGISTER or
// ACK is idempotent end to end, and a late INVITE copy meets the UAS's
// own dialog state).
const Linger = 5 * time.Second

// acceptedLinger is Timer M, how long an INVITE client transaction stays
// "Accepted" after its 2xx (RFC 6026). It only catches the 2xx
// retransmissions of the far side, and this proxy forwards those
// statelessly whether they match it (OnRetransmission) or not
// (onUnhandledResponse): keeping it longer changes nothing but memory.
// One T1 covers the copies already in flight.
const acceptedLinger = 500 * time.Millisecond

// The timers are process-wide variables of sipgo: set them once, before
// any transaction exists, so no transaction ever reads them mid-write.
func init() {
	sip.Timer_D = Linger
	sip.Timer_J = Linger
	sip.Timer_L = Linger
	sip.Timer_M = acceptedLinger
}
