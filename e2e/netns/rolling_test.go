//go:build e2e

package netns

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRollingRestart is the rolling upgrade of ARCHITECTURE.md §1 as an
// operator does it: every super peer in turn gets SIGTERM (graceful
// drain: records handed to their new replicas, attached agents moved,
// mesh left), exits 0, and the same process is started again on its data
// dir and rejoins. With each super peer down and again once it is back,
// every registration is still in the overlay (the phones' contacts and a
// set of records put with the CLI) and SIPp places calls both ways
// through the NATs: 0 registrations lost, 0 failed calls. The overlay keeps two
// replicas of each record, so every drain has records to hand off.
func TestRollingRestart(t *testing.T) {
	const (
		calls, rate = 20, 10 // per direction and check point
		extra       = 9      // records put with `p2psip record put`
		steadyCalls = 60     // at 2 cps, about as long as the restarts take
	)
	ctx := context.Background()
	// Two replicas of three super peers: each one leaving holds records
	// that a super peer that stays must take over (with three, every super
	// peer holds everything and a drain would hand off nothing).
	RequireAgent(t)
	o := StartOverlayWith(t, NewTopology(t), []string{"--replicas", "2", "--drain-timeout", "10s"}, SP1, SP2, SP3)
	alice := o.StartAgent(t, LAN1, "alice", keepalive, o.SP(SP1), o.SP(SP3))
	bob := o.StartAgent(t, LAN2, "bob", keepalive, o.SP(SP2), o.SP(SP3))
	alice.Phone(t)
	bob.Phone(t)

	// The records every check reads: the phones' registrations (stored by
	// their agents) and extra ones of other users.
	type rec struct{ aor, contact, creds string }
	recs := []rec{
		{alice.AOR(), `"contact"`, o.Credentials(t, bob.User)},
		{bob.AOR(), `"contact"`, o.Credentials(t, alice.User)},
	}
	for i := range extra {
		user := fmt.Sprintf("roll%d", i)
		creds := o.Credentials(t, user)
		aor := "sip:" + user + "@" + o.Name
		contact := fmt.Sprintf("sip:%s@198.51.100.%d:5060", user, 10+i)
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		out, err := o.RecordPut(pctx, alice.Host, o.SP(SP1), creds, aor, contact)
		cancel()
		if err != nil {
			t.Fatalf("record put %s: %v: %s", aor, err, out)
		}
		recs = append(recs, rec{aor, strings.TrimPrefix(contact, "sip:"), creds})
	}
	checkRecords := func(when string) {
		t.Helper()
		live := o.Live()
		for i, r := range recs {
			sp := live[i%len(live)] // spread the reads over the live super peers
			rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			out, err := o.RecordGet(rctx, alice.Host, sp, r.creds, r.aor)
			cancel()
			if err != nil || !strings.Contains(out, r.contact) {
				t.Fatalf("%s: %s lost (read through %s): %v %s", when, r.aor, sp.Host, err, out)
			}
		}
	}
	// The first check waits for the phones' registrations to arrive.
	for _, r := range recs[:2] {
		Eventually(t, 10*time.Second, r.aor+" in the overlay", func() error {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			out, err := o.RecordGet(rctx, alice.Host, o.SP(SP3), r.creds, r.aor)
			if err != nil || !strings.Contains(out, r.contact) {
				return fmt.Errorf("%v %s", err, out)
			}
			return nil
		})
	}
	checkRecords("before the restarts")

	var total, failed, placed int
	callBoth := func(when string) {
		t.Helper()
		for _, pair := range [][2]*Agent{{alice, bob}, {bob, alice}} {
			from, to := pair[0], pair[1]
			res, err := o.RunUAC(ctx, from.Caller(to, calls, rate))
			requireAllOK(t, fmt.Sprintf("%s: %s → %s", when, from.User, to.User), res, err, calls, to)
			placed += res.Created
			total += res.Successful
			failed += res.Failed
		}
	}

	// A steady low-rate stream from bob to alice through all the
	// restarts, drains included, on a port of its own. Its calls in flight
	// when a super peer drains are reported, not required to succeed:
	// the promise is about calls placed between restarts.
	steady := bob.Caller(alice, steadyCalls, 2)
	steady.Port, steady.Name = UACPort+2, "sipp-uac-steady"
	steadyDone := o.StartUAC(ctx, steady)

	var drains []string
	handedOff := 0
	for _, host := range []string{SP1, SP2, SP3} {
		sp := o.SP(host)
		attachedHere := map[string]bool{}
		for _, a := range []*Agent{alice, bob} {
			if a.SuperPeer(t) == sp {
				attachedHere[a.User] = true
			}
		}

		// SIGTERM: the process drains and exits 0 by itself.
		start := time.Now()
		if err := syscall.Kill(sp.Proc.Pid(), syscall.SIGTERM); err != nil {
			t.Fatalf("SIGTERM %s: %v", host, err)
		}
		if err := sp.Proc.Wait(ctx, 30*time.Second); err != nil {
			t.Fatalf("%s after SIGTERM: %v", host, err)
		}
		took := time.Since(start)
		if code := sp.Proc.ExitCode(); code != 0 {
			t.Fatalf("%s exited with status %d after SIGTERM, want 0 (see %s)", host, code, sp.Proc.Log)
		}
		moved, err := lastLeave(sp.Proc.Log)
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		handedOff += moved
		drains = append(drains, fmt.Sprintf("%s %s (%d records handed off)", host, took.Round(time.Millisecond), moved))
		t.Logf("%s drained and exited in %s, %d records handed off; agents attached to it: %v", host, took.Round(time.Millisecond), moved, attachedHere)

		// The agents it had moved to another super peer, and no TURN
		// allocation stays on it (the agents' relayed addresses would be
		// dead until a self-probe noticed, 5–15 s). Its peers said it was
		// draining before it handed off its records.
		for _, a := range []*Agent{alice, bob} {
			Eventually(t, 3*time.Second, a.User+"'s TURN allocation off "+host, func() error {
				st, err := a.Status()
				switch {
				case err != nil:
					return err
				case st.Relay == nil:
					return fmt.Errorf("no relay section in the status")
				case st.Relay.Server == sp.TURNAddr():
					return fmt.Errorf("allocation on %s (%s)", host, st.Relay.Server)
				}
				return nil
			})
			Eventually(t, 15*time.Second, a.User+"'s agent attached to a live super peer", func() error {
				st, err := a.Status()
				if err != nil {
					return err
				}
				if !st.Attached {
					return fmt.Errorf("not attached")
				}
				if o.ByAddr(st.SPAddr) == sp {
					return fmt.Errorf("still attached to %s", host)
				}
				return nil
			})
		}
		o.WaitMesh(t, 2, 20*time.Second)
		checkRecords(host + " down")
		callBoth(host + " down")

		// The same process again, on its data dir (same identity), joining
		// the two that stayed.
		var join []string
		for _, other := range o.Live() {
			join = append(join, other.GossipAddr())
		}
		restartSuperPeer(o, sp, join)
		o.waitReady(t, sp, 20*time.Second)
		o.WaitMesh(t, 3, 30*time.Second)
		checkRecords(host + " back")
		callBoth(host + " back")
		t.Logf("%s restarted and rejoined; records and calls fine", host)
	}

	sr := <-steadyDone
	if sr.Err != nil {
		t.Errorf("steady calls: %v", sr.Err)
	}
	t.Logf("steady calls through the restarts: %s", sr.Res.SIPpStats)
	if handedOff == 0 {
		t.Errorf("no super peer handed off any record while draining: the drain was not exercised")
	}
	view := checkNATView(t, o, alice, bob)
	hops := checkHops(t, alice, bob)
	t.Logf("SUMMARY %s: 3 super peers restarted one after another (SIGTERM drain: %s); registrations checked %d × 6, lost 0; calls attempted %d succeeded %d failed %d (%d per direction at %d cps with each one down and back); steady stream through the drains %d/%d succeeded (%d failed); records handed off %d; relayed %s; %s; %s",
		t.Name(), strings.Join(drains, ", "), len(recs), placed, total, failed, calls, rate, sr.Res.Successful, sr.Res.Created, sr.Res.Failed, handedOff, relayed(alice, bob), hops, view)
}

// restartSuperPeer starts sp's process again on the same host and data
// dir, joining join.
func restartSuperPeer(o *Overlay, sp *SuperPeer, join []string) {
	o.t.Helper()
	fresh := o.startSuperPeer(sp.Host, join)
	// startSuperPeer appended a new entry; the super peer is the same one.
	o.SPs = o.SPs[:len(o.SPs)-1]
	sp.Proc = fresh.Proc
}

// lastLeave reads the super peer's log for its last "left the overlay"
// line and returns how many records it handed off.
func lastLeave(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	found, moved := false, 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !strings.Contains(string(line), `"left the overlay"`) {
			continue
		}
		var v struct {
			Moved int `json:"records_handed_off"`
		}
		if err := json.Unmarshal(line, &v); err == nil {
			found, moved = true, v.Moved
		}
	}
	if !found {
		return 0, fmt.Errorf("no \"left the overlay\" line in %s: no graceful drain", path)
	}
	return moved, sc.Err()
}
