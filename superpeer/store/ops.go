package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
)

// Result reports a coordinated write.
type Result struct {
	Acks     int
	Replicas int
}

// Put merges rec's entries into the record at a write quorum of its
// replicas. Entries without a Version get the coordinator's clock; every
// entry is stamped with the writer. The access rules of §3 are checked
// here and again at each replica.
func (s *Store) Put(ctx context.Context, w Writer, rec *record.Record) (res Result, err error) {
	start := time.Now()
	defer func() { s.observe("put", start, err) }()
	if rec, err = s.admit(w, rec); err != nil {
		return Result{}, err
	}
	res, _, err = s.write(ctx, rec, w, false)
	return res, err
}

// PutState is Put that also returns the record's live entries as the
// write quorum holds them after the write (nil when none is live): the
// write quorum doubles as a read quorum (W + R > N with R = W), so it
// sees every write that completed before this one, as Get would, without
// a second round trip.
func (s *Store) PutState(ctx context.Context, w Writer, rec *record.Record) (res Result, state *record.Record, err error) {
	start := time.Now()
	defer func() { s.observe("put", start, err) }()
	if rec, err = s.admit(w, rec); err != nil {
		return Result{}, nil, err
	}
	res, state, err = s.write(ctx, rec, w, true)
	if err != nil || state == nil {
		return res, nil, err
	}
	if live := state.Live(s.cfg.Now()); len(live.Entries) > 0 {
		return res, live, nil
	}
	return res, nil, nil
}

// admit stamps a copy of rec for w and checks it as §3 says.
func (s *Store) admit(w Writer, rec *record.Record) (*record.Record, error) {
	if _, err := s.state(); err != nil {
		return nil, err
	}
	rec = rec.Clone()
	now := s.cfg.Now()
	for i := range rec.Entries {
		e := &rec.Entries[i]
		if e.Version == 0 {
			e.Version = uint64(now.UnixNano())
		}
		e.Writer = w.Name()
		if e.Key == "" {
			e.Key = record.EntryKey(rec.Kind, e)
		}
	}
	rec.Normalize()
	if err := rec.Validate(); err != nil {
		return nil, wire.Errorf(wire.CodeBadRequest, "%v", err)
	}
	if len(rec.Entries) == 0 {
		return nil, wire.Errorf(wire.CodeBadRequest, "record has no entries")
	}
	if err := s.authorize(w, rec); err != nil {
		return nil, err
	}
	if err := checkContactPeers(w, rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// ack is one replica's answer to a write: its copy after the merge when
// the coordinator asked for it.
type ack struct {
	err   error
	state []record.Record
}

// write sends rec to its replica set and returns once a quorum
// acknowledged; with echo, also the merge of the acknowledging replicas'
// copies after the write.
func (s *Store) write(ctx context.Context, rec *record.Record, w Writer, echo bool) (Result, *record.Record, error) {
	st, err := s.state()
	if err != nil {
		return Result{}, nil, err
	}
	rid := rec.ResourceID()
	replicas := s.Replicas(rid)
	need := s.quorum(len(replicas))
	req := &wire.ReplicateReq{Records: []record.Record{*rec}, Writer: w.Name(), WriterPeer: w.PeerID, Echo: echo}
	// req encoded once for every remote replica, on the first worker to
	// need it: a request goroutine calling in (a SIP handler's) would grow
	// its stack for the encoder's depth, by copying.
	encode := sync.OnceValues(func() ([]byte, error) { return wire.Marshal(req) })
	acks := make(chan ack, len(replicas))
	// done tells the workers the coordinator has its answer: the echoed
	// state of a replica answering past the quorum is not decoded.
	var done atomic.Bool
	defer done.Store(true)
	for _, p := range replicas {
		if p == s.cfg.Self {
			// Put and Remove validated and authorized rec already; the
			// replica checks of applyLocal are for records from other
			// super peers, and would only repeat that work here.
			_, err := s.local.merge(rid, rec)
			a := ack{err: err}
			if echo && err == nil {
				if cur := s.local.get(rid); cur != nil {
					a.state = []record.Record{*cur}
				}
			}
			acks <- a
			continue
		}
		if !st.begin() {
			acks <- ack{err: ErrNotRunning}
			continue
		}
		st.work.run(func() {
			defer st.wg.Done()
			body, err := encode()
			if err != nil {
				acks <- ack{err: fmt.Errorf("replicate to %s: %w", p.Short(), err)}
				return
			}
			f, err := s.replicate(st.ctx, p, body)
			a := ack{err: err}
			if err == nil && echo && !done.Load() {
				var resp wire.ReplicateResp
				if err := wire.Unmarshal(f.Body, &resp); err != nil {
					a.err = fmt.Errorf("replicate to %s: %w", p.Short(), err)
				}
				a.state = resp.Records
			}
			acks <- a
		})
	}
	var got, failed int
	var last error
	var state *record.Record
	if echo {
		state = &record.Record{Kind: rec.Kind, Name: rec.Name}
	}
	for got < need && got+failed < len(replicas) {
		select {
		case a := <-acks:
			if a.err != nil {
				failed++
				last = a.err
				continue
			}
			got++
			for i := range a.state {
				if _, err := record.Merge(state, &a.state[i]); err != nil {
					s.log.Warn().Err(err).Str("resource_id", rid.Short()).Msg("replica echoed a mismatched record")
				}
			}
		case <-ctx.Done():
			return Result{Acks: got, Replicas: len(replicas)}, nil, fmt.Errorf("store %s: %w", rid.Short(), ctx.Err())
		}
	}
	if got < need {
		// A replica's own refusal (forbidden, invalid) is more useful to
		// the writer than "no quorum".
		var we *wire.Error
		if errors.As(last, &we) && (we.Code == wire.CodeForbidden || we.Code == wire.CodeBadRequest) {
			return Result{Acks: got, Replicas: len(replicas)}, nil, we
		}
		s.log.Warn().Err(last).Str("resource_id", rid.Short()).Int("acks", got).Int("need", need).Msg("write quorum not reached")
		return Result{Acks: got, Replicas: len(replicas)}, nil, ErrNoQuorum
	}
	return Result{Acks: got, Replicas: len(replicas)}, state, nil
}

// send replicates to one peer, bounded by the store's timeout.
func (s *Store) send(ctx context.Context, p ids.PeerID, req *wire.ReplicateReq) error {
	_, err := s.sendBatch(ctx, p, req)
	return err
}

func (s *Store) sendBatch(ctx context.Context, p ids.PeerID, req *wire.ReplicateReq) (*wire.ReplicateResp, error) {
	f, err := s.replicate(ctx, p, req)
	if err != nil {
		return nil, err
	}
	var resp wire.ReplicateResp
	if err := wire.Unmarshal(f.Body, &resp); err != nil {
		return nil, fmt.Errorf("replicate to %s: %w", p.Short(), err)
	}
	return &resp, nil
}

// replicate sends a wire.ReplicateReq (or its encoding) to one peer,
// bounded by the store's timeout, and returns the answer.
func (s *Store) replicate(ctx context.Context, p ids.PeerID, req any) (*wire.Frame, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	f, err := s.peers.Request(ctx, p, wire.TypeReplicate, req)
	if err != nil {
		s.m.replicated.WithLabelValues("error").Inc()
		return nil, fmt.Errorf("replicate to %s: %w", p.Short(), err)
	}
	s.m.replicated.WithLabelValues("ok").Inc()
	return f, nil
}

// Get returns the live entries of a record, merged from a quorum of its
// replicas; replicas found stale are repaired in the background.
func (s *Store) Get(ctx context.Context, kind record.Kind, name string) (rec *record.Record, err error) {
	start := time.Now()
	defer func() { s.observe("get", start, err) }()
	st, err := s.state()
	if err != nil {
		return nil, err
	}
	rid, err := resourceOf(kind, name)
	if err != nil {
		return nil, err
	}
	replicas := s.Replicas(rid)
	replies := make(chan reply, len(replicas))
	req := &wire.ReadReq{Kind: kind, Name: name}
	for _, p := range replicas {
		if p == s.cfg.Self {
			replies <- reply{from: p, rec: s.local.get(rid)}
			continue
		}
		if !st.begin() {
			replies <- reply{from: p, err: ErrNotRunning}
			continue
		}
		st.work.run(func() {
			defer st.wg.Done()
			r, err := s.read(st.ctx, p, req)
			replies <- reply{from: p, rec: r, err: err}
		})
	}
	need := s.quorum(len(replicas))
	merged := &record.Record{Kind: kind, Name: name}
	var seen []reply
	now := s.cfg.Now()
	ok := 0
	for len(seen) < len(replicas) {
		// Enough answers, and something to show: return now. An empty
		// answer waits for every replica, since a fresh replica that has
		// not yet received its hand-off answers empty too.
		if ok >= need && len(merged.Live(now).Entries) > 0 {
			break
		}
		select {
		case r := <-replies:
			seen = append(seen, r)
			if r.err != nil {
				continue
			}
			ok++
			if r.rec != nil {
				if _, err := record.Merge(merged, r.rec); err != nil {
					s.log.Warn().Err(err).Str("sp_id", r.from.Short()).Msg("replica returned a mismatched record")
				}
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("fetch %s: %w", rid.Short(), ctx.Err())
		}
	}
	if ok == 0 {
		return nil, wire.Errorf(wire.CodeUnavailable, "no replica of %s answered", rid.Short())
	}
	if st.begin() { // not when stopping: the answer stands without repair
		go func() {
			defer st.wg.Done()
			s.readRepair(st.ctx, rid, merged.Clone(), seen, replies, len(replicas))
		}()
	}
	live := merged.Live(now)
	if len(live.Entries) == 0 {
		return nil, ErrNotFound
	}
	return live, nil
}

func (s *Store) read(ctx context.Context, p ids.PeerID, req *wire.ReadReq) (*record.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	f, err := s.peers.Request(ctx, p, wire.TypeRead, req)
	if err != nil {
		return nil, fmt.Errorf("read from %s: %w", p.Short(), err)
	}
	var resp wire.FetchResp
	if err := wire.Unmarshal(f.Body, &resp); err != nil {
		return nil, fmt.Errorf("read from %s: %w", p.Short(), err)
	}
	if resp.Record != nil {
		resp.Record.Normalize()
		if err := resp.Record.Validate(); err != nil {
			return nil, fmt.Errorf("read from %s: %w", p.Short(), err)
		}
	}
	return resp.Record, nil
}

// reply is one replica's answer to a read.
type reply struct {
	from ids.PeerID
	rec  *record.Record
	err  error
}

// readRepair waits for the replicas that had not answered, then sends the
// merged record to every replica whose copy differs from it.
func (s *Store) readRepair(ctx context.Context, rid ids.ResourceID, merged *record.Record, seen []reply, more <-chan reply, total int) {
	for len(seen) < total {
		select {
		case r := <-more:
			seen = append(seen, r)
			if r.err == nil && r.rec != nil {
				record.Merge(merged, r.rec) //nolint:errcheck // same Kind/Name by construction
			}
		case <-ctx.Done():
			return
		}
	}
	if len(merged.Entries) == 0 {
		return
	}
	want := merged.Digest()
	req := &wire.ReplicateReq{Records: []record.Record{*merged}}
	for _, r := range seen {
		if r.err != nil || (r.rec != nil && r.rec.Digest() == want) {
			continue
		}
		s.m.repaired.WithLabelValues("read_repair").Inc()
		if r.from == s.cfg.Self {
			if _, err := s.local.merge(rid, merged); err != nil {
				s.log.Warn().Err(err).Msg("local read repair")
			}
			continue
		}
		if err := s.send(ctx, r.from, req); err != nil {
			s.log.Debug().Err(err).Str("resource_id", rid.Short()).Msg("read repair")
		}
	}
}

// Remove tombstones entries of a record (the given keys, or all live ones)
// at a write quorum. Tombstones outlive the entries they remove so a late
// copy cannot bring a contact back.
func (s *Store) Remove(ctx context.Context, w Writer, kind record.Kind, name string, keys []string) (Result, error) {
	cur, err := s.Get(ctx, kind, name)
	if err != nil {
		return Result{}, err
	}
	if err := s.authorize(w, cur); err != nil {
		return Result{}, err
	}
	now := s.cfg.Now()
	tomb := &record.Record{Kind: kind, Name: name}
	for _, e := range cur.Entries {
		if len(keys) > 0 && !slices.Contains(keys, e.Key) {
			continue
		}
		t := record.Entry{
			Key:     e.Key,
			CallID:  e.CallID,
			CSeq:    e.CSeq + 1,
			Version: max(uint64(now.UnixNano()), e.Version+1),
			Expires: max(e.Expires, now.Unix()+1),
			Removed: true,
			Writer:  w.Name(),
		}
		tomb.Entries = append(tomb.Entries, t)
	}
	if len(tomb.Entries) == 0 {
		return Result{}, ErrNotFound
	}
	tomb.Normalize()
	start := time.Now()
	res, _, err := s.write(ctx, tomb, w, false)
	s.observe("remove", start, err)
	return res, err
}

// Find returns the live providers of a service.
func (s *Store) Find(ctx context.Context, service string) (*record.Record, error) {
	return s.Get(ctx, record.KindService, service)
}
