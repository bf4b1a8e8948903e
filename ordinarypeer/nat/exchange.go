package nat

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/pion/stun"
	"github.com/rs/zerolog"
)

// response is one decoded datagram from the socket.
type response struct {
	msg  *stun.Message
	from net.Addr
}

// exchange runs every probe's transaction on conn until each has an
// answer or an error or ctx ends (then the unfinished get ctx's error).
// One goroutine reads the socket and hands decoded messages over; this
// one sends, retransmits and matches. exchange closes conn, and both
// goroutines have ended when it returns.
func exchange(ctx context.Context, conn net.PacketConn, probes []*probe, log zerolog.Logger) {
	responses := make(chan response)
	quit := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		read(conn, responses, quit)
	}()
	defer func() {
		close(quit)
		_ = conn.Close() // ends the reader
		<-readerDone
	}()

	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		now := time.Now()
		next, open := time.Time{}, 0
		for _, p := range probes {
			if p.finished() {
				continue
			}
			if !now.Before(p.next) {
				send(conn, p, now, log)
			}
			if !p.finished() {
				open++
				if next.IsZero() || p.next.Before(next) {
					next = p.next
				}
			}
		}
		if open == 0 {
			return
		}
		timer.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			for _, p := range probes {
				if !p.finished() {
					p.err = fmt.Errorf("after %d requests: %w", p.sends, ctx.Err())
				}
			}
			return
		case r := <-responses:
			match(probes, r, log)
		case <-timer.C:
		}
	}
}

// send (re)transmits p's request if it has sends left, else gives up.
func send(conn net.PacketConn, p *probe, now time.Time, log zerolog.Logger) {
	if p.sends == maxSends {
		p.err = fmt.Errorf("%w (%d requests)", errTimeout, p.sends)
		return
	}
	if _, err := conn.WriteTo(p.req.Raw, p.server); err != nil {
		// A send error (no route, say) is final for this server.
		p.err = fmt.Errorf("send binding request to %s: %w", p.server, err)
		return
	}
	p.sends++
	p.next = now.Add(min(initialRTO<<(p.sends-1), maxRTO))
	log.Debug().Str("server", p.name).Int("attempt", p.sends).Msg("stun binding request sent")
}

// read hands every STUN message arriving on conn to responses until conn
// fails or quit is closed.
func read(conn net.PacketConn, responses chan<- response, quit <-chan struct{}) {
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return // closed by exchange, or broken: exchange times out
		}
		if !stun.IsMessage(buf[:n]) {
			continue
		}
		m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if err := m.Decode(); err != nil {
			continue
		}
		select {
		case responses <- response{msg: m, from: from}:
		case <-quit:
			return
		}
	}
}

// match settles the probe whose transaction r answers; anything else is
// dropped. Transactions are matched by their 96-bit random ID, as RFC
// 5389 §7.3 has it, not by source address: a server may answer from
// another address, and an attacker cannot guess the ID.
func match(probes []*probe, r response, log zerolog.Logger) {
	var p *probe
	for _, q := range probes {
		if q.req.TransactionID == r.msg.TransactionID {
			p = q
			break
		}
	}
	if p == nil || p.finished() || r.msg.Type.Method != stun.MethodBinding {
		return
	}
	if r.msg.Contains(stun.AttrFingerprint) {
		if err := stun.Fingerprint.Check(r.msg); err != nil {
			return // corrupt: wait for a retransmission's answer
		}
	}
	switch r.msg.Type.Class {
	case stun.ClassSuccessResponse:
	case stun.ClassErrorResponse:
		var ec stun.ErrorCodeAttribute
		_ = ec.GetFrom(r.msg)
		p.err = fmt.Errorf("binding error response: %d %s", ec.Code, ec.Reason)
		return
	default:
		return
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(r.msg); err == nil {
		p.mapped = &net.UDPAddr{IP: xa.IP, Port: xa.Port}
	} else {
		var ma stun.MappedAddress // RFC 3489 servers
		if err := ma.GetFrom(r.msg); err != nil {
			p.err = fmt.Errorf("binding response without a mapped address: %w", err)
			return
		}
		p.mapped = &net.UDPAddr{IP: ma.IP, Port: ma.Port}
	}
	log.Debug().Str("server", p.name).Str("reflexive", p.mapped.String()).Str("from", r.from.String()).
		Msg("stun binding answered")
}
