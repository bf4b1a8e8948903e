package record

import (
	"fmt"

	"github.com/p2psip/p2psip/common/ids"
)

// Fixed times and identities shared by the tests.
const (
	t0       = int64(1_700_000_000)          // "now" in unix seconds
	v0       = uint64(t0) * 1_000_000_000    // a Version at t0
	aliceAOR = "sip:alice@example.net"       // a normalized AoR
	uriA     = "sip:alice@198.51.100.7:5060" // contact URIs
	uriB     = "sip:alice@203.0.113.9:5070"  //
	instA    = "<urn:uuid:00000000-0000-0000-0000-00000000000a>"
)

// pid returns a distinct non-zero Peer-ID per n.
func pid(n byte) ids.PeerID {
	var p ids.PeerID
	for i := range p {
		p[i] = n + byte(i)
	}
	return p
}

// contact builds a location entry keyed by its URI.
func contact(uri, callID string, cseq uint32, version uint64) Entry {
	return Entry{
		Key:     uri,
		CallID:  callID,
		CSeq:    cseq,
		Version: version,
		Expires: t0 + 3600,
		Writer:  "alice",
		Contact: &Contact{URI: uri, PeerID: pid(1), SP: pid(2), SPAddr: "192.0.2.1:7000", Q: 1000},
	}
}

// tombstone turns e into a de-registration with the next CSeq.
func tombstone(e Entry, version uint64) Entry {
	e = e.clone()
	e.CSeq++
	e.Version = version
	e.Removed = true
	return e
}

func locRecord(es ...Entry) *Record {
	return &Record{Kind: KindLocation, Name: aliceAOR, Entries: es}
}

// provider builds a service entry for provider n.
func provider(n byte, version uint64) Entry {
	return Entry{
		Key:      pid(n).String(),
		Version:  version,
		Expires:  t0 + 60,
		Writer:   "sp:" + pid(n).String(),
		Provider: &Provider{PeerID: pid(n), Addrs: []string{fmt.Sprintf("192.0.2.%d:3478", n)}, Capacity: 100, Load: 3},
	}
}

func svcRecord(es ...Entry) *Record {
	return &Record{Kind: KindService, Name: "turn", Entries: es}
}

// attachment builds the entry of peer n's peer record.
func attachment(n byte, version uint64) Entry {
	return Entry{
		Key:     PeerKey,
		Version: version,
		Expires: t0 + 120,
		Writer:  "sp:" + pid(2).String(),
		Peer: &PeerInfo{PeerID: pid(n), SP: pid(2), SPAddr: "192.0.2.1:7000",
			Relay: "192.0.2.1:49152", Reflexive: "198.51.100.7:40122", NAT: "port-restricted"},
	}
}

func peerRecord(n byte, es ...Entry) *Record {
	return &Record{Kind: KindPeer, Name: pid(n).String(), Entries: es}
}
