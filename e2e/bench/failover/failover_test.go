// Package failover measures what a kill -9 of a super peer costs its
// agents and its records (issue 7, item 5), on real `p2psip superpeer`
// processes.
package failover

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/auth"
	"github.com/p2psip/p2psip/common/client"
	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
	"github.com/p2psip/p2psip/e2e/bench/report"
	"github.com/p2psip/p2psip/e2e/bench/spproc"
	"github.com/p2psip/p2psip/ordinarypeer/uplink"
)

const overlay = "bench.test"

func TestMain(m *testing.M) {
	code := m.Run()
	spproc.Cleanup()
	os.Exit(code)
}

// agent is a lightweight ordinary peer: the real uplink (bootstrap,
// redirect, keepalive, failover) plus what the full agent does on every
// attachment that matters for reachability: store its peer record.
type agent struct {
	up   *uplink.Uplink
	id   ids.PeerID
	user string
	// stored counts peer-record writes that succeeded.
	stored atomic.Int64
	// attachedAt and storedAt are the times of the last attachment and
	// of the last peer-record write.
	attachedAt, storedAt atomic.Int64
}

// TestBenchFailover runs 4 super peers (replicas 3) and attaches agents
// spread over them; each stores its peer record and one location record.
// Then the super peer with the most agents is killed with SIGKILL, and a
// client at a surviving super peer fetches each of its agents' peer
// record until it names a live super peer: the time from the kill to that
// is the agent's failover time. Also measured: the time until every
// survivor holds every location record again (re-replication: 3 of 3 alive).
// Smoke: 60 agents; full (P2PSIP_BENCH=full): 1,000 agents on the victim
// (4,000 in all would need more; the victim's share is what counts, so
// agents are given the victim first).
func TestBenchFailover(t *testing.T) {
	start := time.Now()
	perSP := 15
	if report.Full() {
		perSP = 1000
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mesh, err := spproc.StartMesh(ctx, t.TempDir(), overlay, 4)
	if err != nil {
		t.Fatal(err)
	}
	sps, secret, ca := mesh.Procs, mesh.Secret, mesh.CA
	for _, p := range sps {
		defer p.Stop(5 * time.Second)
	}

	// Agents: perSP per super peer. Each one's bootstrap lists "its" super
	// peer first; redirects may move some.
	log := zerolog.Nop()
	var agents []*agent
	var runs sync.WaitGroup
	defer runs.Wait()
	defer cancel()
	for i := range 4 * perSP {
		var boot []string
		for k := range 4 {
			boot = append(boot, sps[(i+k)%4].PeerAddr)
		}
		seed := sha256.Sum256(fmt.Appendf(nil, "failover-%d", i))
		key := ed25519.NewKeyFromSeed(seed[:])
		a := &agent{id: ids.PeerIDFromKey(key.Public().(ed25519.PublicKey)), user: fmt.Sprintf("fo%d", i)}
		creds, err := auth.Issue(secret, a.user, 24*time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		a.up, err = uplink.New(uplink.Config{Overlay: overlay, Bootstrap: boot, Credentials: creds, Key: key, Roots: ca.Pool(),
			OnAttach: func(ctx context.Context, att uplink.Attachment) {
				a.attachedAt.Store(time.Now().UnixNano())
				a.storePeer(ctx, att)
			}}, log)
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a)
		runs.Add(1)
		go func() { defer runs.Done(); a.up.Run(ctx) }() //nolint:errcheck
	}
	for _, a := range agents {
		select {
		case <-a.up.Ready():
		case <-time.After(60 * time.Second):
			t.Fatal("an agent did not attach within 60s")
		}
	}
	// One location record per agent, written once: nobody refreshes them
	// after the kill, so they measure re-replication alone.
	var wg sync.WaitGroup
	errc := make(chan error, len(agents))
	sem := make(chan struct{}, 32)
	for _, a := range agents {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errc <- a.storeLocation(ctx)
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range agents {
		waitCond(t, 30*time.Second, "peer records stored", func() bool { return a.stored.Load() > 0 })
	}
	// Every super peer holds its share of the location records (3 of 4).
	waitRecords(t, sps, len(agents)*3, 30*time.Second)

	// The victim: the super peer with the most agents.
	count := map[ids.PeerID]int{}
	addrOf := map[ids.PeerID]string{}
	for _, a := range agents {
		att, ok := a.up.Attachment()
		if ok {
			count[att.SP]++
			addrOf[att.SP] = att.SPAddr
		}
	}
	var victimID ids.PeerID
	for id, n := range count {
		if n > count[victimID] {
			victimID = id
		}
	}
	var victim *spproc.Process
	var survivors []*spproc.Process
	for _, p := range sps {
		if p.PeerAddr == addrOf[victimID] {
			victim = p
		} else {
			survivors = append(survivors, p)
		}
	}
	if victim == nil {
		t.Fatal("victim super peer not found")
	}
	var moved []*agent
	for _, a := range agents {
		if att, ok := a.up.Attachment(); ok && att.SP == victimID {
			moved = append(moved, a)
		}
	}
	t.Logf("%d agents over 4 super peers %v; killing %s with %d agents", len(agents), count, victimID.Short(), len(moved))

	// Clients at the survivors, for the reachability checks.
	var sessions []*client.Session
	for i, p := range survivors {
		s, err := dialClient(ctx, p.PeerAddr, secret, ca, i)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		sessions = append(sessions, s)
	}

	// CPU of everything that works during the failover: this process
	// (the agents) and the survivors.
	cpu := func() time.Duration {
		var sum time.Duration
		for _, pid := range []int{0, survivors[0].PID(), survivors[1].PID(), survivors[2].PID()} {
			d, err := spproc.CPU(pid)
			if err != nil {
				t.Fatal(err)
			}
			sum += d
		}
		return sum
	}
	cpu0 := cpu()
	killed := time.Now()
	victim.Kill()
	// An agent is reachable again once a write quorum holds a peer record
	// naming its new super peer: from then on a fetch through any super
	// peer finds it (W + R > N). So the time is that of the agent's own
	// acknowledged write, which keeps fetches from loading the overlay
	// during the failover; each agent is then checked from outside, and
	// one whose record a fetch through a survivor does not show naming a
	// live super peer is polled and timed from outside instead.
	reach := make([]time.Duration, len(moved))
	var rwg sync.WaitGroup
	rwg.Add(1)
	go func() {
		defer rwg.Done()
		for _, a := range moved {
			for a.storedAt.Load() < killed.UnixNano() && time.Since(killed) < 60*time.Second {
				time.Sleep(5 * time.Millisecond)
			}
		}
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := range 24 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := sessions[w%len(sessions)]
				for {
					i := int(next.Add(1) - 1)
					if i >= len(moved) {
						return
					}
					a := moved[i]
					if at := a.storedAt.Load(); at > killed.UnixNano() && reachable(ctx, s, a.id, victimID) {
						reach[i] = time.Duration(at - killed.UnixNano())
						continue
					}
					for time.Since(killed) < 60*time.Second {
						if reachable(ctx, s, a.id, victimID) {
							reach[i] = time.Since(killed)
							break
						}
					}
				}
			}()
		}
		wg.Wait()
	}()
	// Re-replication: every survivor holds every location record.
	var rerep time.Duration
	rerepDone := make(chan struct{})
	go func() {
		defer close(rerepDone)
		for time.Since(killed) < 90*time.Second {
			if heldEverywhere(survivors, len(agents)) {
				rerep = time.Since(killed)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	rwg.Wait()
	cpuUsed := cpu() - cpu0
	<-rerepDone
	for i, d := range reach {
		if d == 0 {
			t.Fatalf("agent %s not reachable 60s after the kill", moved[i].id.Short())
		}
	}
	if rerep == 0 {
		t.Fatalf("records not re-replicated 90s after the kill")
	}
	sorted := slices.Clone(reach)
	slices.Sort(sorted)
	var att, stored []time.Duration
	for _, a := range moved {
		att = append(att, time.Duration(a.attachedAt.Load()-killed.UnixNano()))
		stored = append(stored, time.Duration(a.storedAt.Load()-killed.UnixNano()))
	}
	slices.Sort(att)
	slices.Sort(stored)
	t.Logf("agents' own view: reattached median %v max %v; peer record stored median %v max %v",
		att[len(att)/2].Round(time.Millisecond), att[len(att)-1].Round(time.Millisecond),
		stored[len(stored)/2].Round(time.Millisecond), stored[len(stored)-1].Round(time.Millisecond))
	med, p99, mx := sorted[len(sorted)/2], sorted[len(sorted)*99/100], sorted[len(sorted)-1]
	t.Logf("kill -9 of a super peer with %d agents: reachable again median %v, p99 %v, max %v; records re-replicated after %v; "+
		"%v CPU until all were reachable (agents and survivors)",
		len(moved), med.Round(time.Millisecond), p99.Round(time.Millisecond), mx.Round(time.Millisecond), rerep.Round(time.Millisecond),
		cpuUsed.Round(time.Millisecond))
	perAgent := cpuUsed / time.Duration(len(moved))

	const section = "Failover"
	var pts [][2]float64
	for i, d := range sorted {
		pts = append(pts, [2]float64{d.Seconds() * 1000, float64(i+1) / float64(len(sorted))})
	}
	frag := report.Fragment{
		Source: "failover",
		Results: []report.Result{
			report.Value(section, fmt.Sprintf("agents reachable again after kill -9 of their super peer, median (%d agents)", len(moved)), "s", med.Seconds()),
			failoverMax(mx, perAgent),
			report.Value(section, "records fully re-replicated after kill -9 (failure detection included)", "s", rerep.Seconds()),
			report.Value(section, "CPU per failed-over agent until reachable (agent and super peers, both sides of TLS)", "ms", float64(perAgent.Microseconds())/1000),
		},
		Series: []report.Series{{Plot: "failover-cdf", Title: "Agents reachable again after kill -9 of their super peer",
			XLabel: "ms after the kill", YLabel: "fraction of the agents", Name: "p2psip", Points: pts}},
		Lines: []string{
			fmt.Sprintf("4 real super-peer processes, replicas 3, %d agents (uplink + peer record), %d on the killed one; "+
				"reachable = a write quorum holds its peer record naming a live super peer (the agent's acknowledged write, then checked by a fetch through a survivor)",
				len(agents), len(moved)),
			fmt.Sprintf("median %v, p99 %v, max %v; every survivor held all %d location records again %v after the kill",
				med.Round(time.Millisecond), p99.Round(time.Millisecond), mx.Round(time.Millisecond), len(agents), rerep.Round(time.Millisecond)),
		},
		Duration: time.Since(start),
	}
	if err := report.Emit(frag); err != nil {
		t.Fatal(err)
	}
}

// failoverMax judges the slowest agent's failover and, past the target,
// names what the time went on.
func failoverMax(mx, perAgent time.Duration) report.Result {
	r := report.Value("Failover", "agents reachable again after kill -9 of their super peer, max", "s", mx.Seconds()).ValueAtMost(2)
	if mx > 2*time.Second {
		r = r.WithNote("bottleneck: CPU, %v per agent for the new TLS 1.3 handshake (X25519MLKEM768, Ed25519 certificates both ways) and "+
			"the peer-record write, agents and super peers sharing this host's cores", perAgent.Round(10*time.Microsecond))
	}
	return r
}

// storePeer writes the agent's peer record naming its current super peer,
// retrying while the attachment lasts (as the agent does).
func (a *agent) storePeer(ctx context.Context, att uplink.Attachment) {
	for ctx.Err() == nil {
		s, err := a.up.Session(ctx)
		if err != nil {
			return
		}
		now := time.Now()
		rec := &record.Record{Kind: record.KindPeer, Name: a.id.String(), Entries: []record.Entry{{
			Key: record.PeerKey, Version: uint64(now.UnixNano()), Expires: now.Add(10 * time.Minute).Unix(),
			Peer: &record.PeerInfo{PeerID: a.id, SP: att.SP, SPAddr: att.SPAddr},
		}}}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = s.Put(wctx, rec)
		cancel()
		if err == nil {
			a.storedAt.Store(time.Now().UnixNano())
			a.stored.Add(1)
			return
		}
		if cur, ok := a.up.Attachment(); !ok || cur.SP != att.SP {
			return // a newer attachment writes its own
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (a *agent) storeLocation(ctx context.Context) error {
	s, err := a.up.Session(ctx)
	if err != nil {
		return err
	}
	uri := fmt.Sprintf("sip:%s@192.0.2.1:5060", a.user)
	rec := &record.Record{Kind: record.KindLocation, Name: "sip:" + a.user + "@" + overlay, Entries: []record.Entry{{
		Key: uri, CallID: "c-" + a.user, CSeq: 1, Expires: time.Now().Add(10 * time.Minute).Unix(),
		Contact: &record.Contact{URI: uri, Q: 1000},
	}}}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := s.Put(wctx, rec); err != nil {
		return fmt.Errorf("store location of %s: %w", a.user, err)
	}
	return nil
}

// reachable fetches id's peer record and says whether it names a super
// peer other than the dead one.
func reachable(ctx context.Context, s *client.Session, id, dead ids.PeerID) bool {
	fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	rec, err := s.Get(fctx, record.KindPeer, id.String())
	if err != nil {
		if !errors.Is(err, &wire.Error{Code: wire.CodeNotFound}) {
			time.Sleep(10 * time.Millisecond)
		}
		return false
	}
	for _, e := range rec.Entries {
		if e.Peer != nil && !e.Removed && !e.Peer.SP.IsZero() && e.Peer.SP != dead {
			return true
		}
	}
	return false
}

func dialClient(ctx context.Context, addr string, secret []byte, ca *auth.CA, i int) (*client.Session, error) {
	seed := sha256.Sum256(fmt.Appendf(nil, "failover-client-%d", i))
	key := ed25519.NewKeyFromSeed(seed[:])
	cert, err := auth.SelfSignedCertificate(key, time.Now())
	if err != nil {
		return nil, err
	}
	creds, err := auth.Issue(secret, fmt.Sprintf("observer%d", i), time.Hour, time.Now())
	if err != nil {
		return nil, err
	}
	return client.Dial(ctx, client.Config{Addr: addr, TLS: auth.ClientTLSConfig(&cert, ca.Pool(), "127.0.0.1"),
		Hello: func(tls.ConnectionState) (wire.Hello, error) {
			return wire.Hello{Role: wire.RoleClient, Overlay: overlay, Username: creds.Username, Password: creds.Password}, nil
		}}, zerolog.Nop())
}

func metric(p *spproc.Process, name string) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := p.Metrics(ctx)
	if err != nil {
		return -1
	}
	return m[name]
}

const locationHeld = `p2psip_store_records{kind="location"}`

func heldEverywhere(sps []*spproc.Process, n int) bool {
	for _, p := range sps {
		if int(metric(p, locationHeld)) < n {
			return false
		}
	}
	return true
}

func waitRecords(t *testing.T, sps []*spproc.Process, total int, timeout time.Duration) {
	t.Helper()
	waitCond(t, timeout, "location records on their replicas", func() bool {
		sum := 0
		for _, p := range sps {
			sum += int(metric(p, locationHeld))
		}
		return sum >= total
	})
}

func waitCond(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
