package relay

import "errors"

// Unexported sentinels: nobody outside branches on these, but tests may.
var (
	errConfig        = errors.New("relay config")
	errRunTwice      = errors.New("relay: Run called twice")
	errRealm         = errors.New("wrong realm")
	errNoUsername    = errors.New("no username")
	errQuotaTotal    = errors.New("allocation quota reached: server total")
	errQuotaUser     = errors.New("allocation quota reached: per user")
	errNoReservation = errors.New("relay allocation without an admitted Allocate request")
	errNoTCPRelay    = errors.New("TCP relays (RFC 6062) are not offered")
	errPortRange     = errors.New("requested relay port outside the configured range")
	errReusePort     = errors.New("further UDP sockets on the STUN/TURN port (SO_REUSEPORT) not opened")
)
