package agent

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/p2psip/p2psip/common/ids"
)

func testRequest(i int) []byte {
	return fmt.Appendf(nil, "INVITE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/TLS 100.64.0.1:5061;branch=z9hG4bK.%d\r\n"+
		"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", i)
}

func testResponse(i int) []byte {
	body := bytes.Repeat([]byte{'v'}, 512) // an SDP's worth
	return fmt.Appendf(nil, "SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 100.64.0.1:5061;branch=z9hG4bK.%d\r\n"+
		"CSeq: 1 INVITE\r\nContent-Length: %d\r\n\r\n%s", i, len(body), body)
}

// burst feeds s what an overload leaves behind: n inbound requests with
// our responses, n payloads kept for a re-send, all of them age old.
func burst(t *testing.T, s *sender, src ids.PeerID, n int, age time.Duration) {
	t.Helper()
	for i := range n {
		if !s.inbound(src, testRequest(i)) {
			t.Fatalf("request %d taken for a duplicate", i)
		}
		key, _, _, ok := txKey(testResponse(i))
		if !ok {
			t.Fatalf("response %d: no transaction key", i)
		}
		s.sentResponse(src, key, testResponse(i))
	}
	then := time.Now().Add(-age)
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.seenOrder {
		s.seenOrder[i].at = then
	}
	for _, e := range s.seen {
		e.at = then
	}
	for i := range n {
		s.recent = append(s.recent, sentPayload{txid: uint64(i), dst: src, payload: testResponse(i), at: then})
	}
}

// retained counts the entries still reachable in the backing arrays of
// recent and seenOrder (their whole capacity: what the GC sees), and in
// seen.
func retained(s *sender) (recent, order, seen int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.recent[:cap(s.recent)] {
		if p.payload != nil {
			recent++
		}
	}
	for _, o := range s.seenOrder[:cap(s.seenOrder)] {
		if o.k.key != "" {
			order++
		}
	}
	return recent, order, len(s.seen)
}

// After an overload and then silence, what the sender kept for re-sends
// and dedup is let go within its bounds (recentFor, dedupFor) plus a tick,
// not kept until traffic comes again (the call benchmark's process stayed
// at 1.4 GB after its overloaded steps).
func TestSenderForgetsWhenIdle(t *testing.T) {
	for _, after := range []time.Duration{0, -1} { // default; timeout fallback off
		t.Run(fmt.Sprint("RelayAfter=", after), func(t *testing.T) {
			s := newSender(&Agent{cfg: Config{RelayAfter: after}})
			burst(t, s, ids.PeerID{1}, 20000, dedupFor+time.Second)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.runTimeouts(ctx) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Error(err)
				}
			}()
			deadline := time.Now().Add(10 * time.Second)
			for {
				r, o, n := retained(s)
				if r == 0 && o == 0 && n == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("idle sender still holds %d payloads, %d dedup keys, %d dedup entries", r, o, n)
				}
				time.Sleep(20 * time.Millisecond)
			}
			s.mu.Lock()
			rc, oc := cap(s.recent), cap(s.seenOrder)
			s.mu.Unlock()
			if rc > shrinkMin || oc > shrinkMin {
				t.Errorf("backing arrays kept their burst size: recent %d, seen order %d", rc, oc)
			}
		})
	}
}

// Pruning as traffic passes (no ticker) drops the expired entries from
// the backing arrays too, not just from the slices' length.
func TestSenderPruneClearsTail(t *testing.T) {
	s := newSender(&Agent{})
	src := ids.PeerID{2}
	burst(t, s, src, 100, dedupFor+time.Second)
	if !s.inbound(src, testRequest(1000)) {
		t.Fatal("new request taken for a duplicate")
	}
	s.mu.Lock()
	s.pruneRecentLocked(time.Now(), true)
	s.mu.Unlock()
	if r, o, n := retained(s); r != 0 || o != 1 || n != 1 {
		t.Fatalf("after pruning: %d payloads, %d dedup keys, %d dedup entries reachable; want 0, 1, 1", r, o, n)
	}
	// The request that is left is still absorbed as a duplicate.
	if s.inbound(src, testRequest(1000)) {
		t.Error("second copy of the remaining request not absorbed")
	}
}

// An error frame for a payload no longer kept (it came after recentFor:
// a super peer gives up on a silent link only after its dial bound) is
// still taken on when the destination has a relayed address: the
// destination goes sticky, and the agent does not close its connection
// (that would fail its live transactions with 480 while the relays carry
// them; a nil router here would panic).
func TestSenderLateErrorFrame(t *testing.T) {
	s := newSender(&Agent{})
	dst := ids.PeerID{7}
	s.learn(dst, "203.0.113.12:60000")
	if !s.failed(dst, 12345) {
		t.Fatal("a late error frame for a destination with a relayed address was not taken on")
	}
	if _, sticky := s.relayFor(dst, time.Now()); !sticky {
		t.Error("the destination is not reached through the relays after the overlay said it is unreachable")
	}
}
