package store

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
)

// nBuckets is the anti-entropy granularity: a record's bucket is the first
// byte of its Resource-ID.
const nBuckets = 256

// handoff moves records after a membership change from prev to next.
//
// For each record held, the pusher is the best-ranked member of its old
// replica set that is still alive: it sends the record to the members of
// the new set that were not in the old one. A holder that is no longer a
// replica drops its copy (after pushing, when it was the pusher). One push
// per record, not one per holder; anti-entropy repairs what a disagreement
// between views left out.
func (s *Store) handoff(ctx context.Context, prev, next []ids.PeerID) {
	start := time.Now()
	self := s.cfg.Self
	alive := make(map[ids.PeerID]bool, len(next))
	for _, p := range next {
		alive[p] = true
	}
	out := make(map[ids.PeerID][]record.Record)
	var drop []ids.ResourceID
	dropAfterPush := make(map[ids.PeerID][]ids.ResourceID)
	for _, e := range s.local.snapshot(nil, true) {
		newSet := Place(e.rid, next, s.cfg.Replicas)
		oldSet := Place(e.rid, prev, s.cfg.Replicas)
		inNew := contains(newSet, self)
		var pusher ids.PeerID
		for _, p := range oldSet {
			if alive[p] {
				pusher = p
				break
			}
		}
		if !contains(oldSet, self) {
			// We hold a record we were not meant to (views moved twice, or a
			// repair reached us): treat ourselves as the pusher.
			pusher = self
			oldSet = nil
		}
		var targets []ids.PeerID
		if pusher == self {
			for _, p := range newSet {
				if p != self && !contains(oldSet, p) {
					targets = append(targets, p)
				}
			}
		}
		for _, t := range targets {
			out[t] = append(out[t], *e.rec)
		}
		if !inNew {
			if len(targets) == 0 {
				drop = append(drop, e.rid)
			} else {
				// Keep it until every target has it.
				dropAfterPush[targets[0]] = append(dropAfterPush[targets[0]], e.rid)
			}
		}
	}
	for _, rid := range drop {
		s.local.remove(rid)
	}
	sent, failed := s.pushAll(ctx, out)
	for p, err := range failed {
		s.log.Warn().Err(err).Str("sp_id", p.Short()).Int("records", len(out[p])).Msg("hand-off incomplete; anti-entropy will retry")
	}
	for p, rids := range dropAfterPush {
		if failed[p] != nil {
			continue
		}
		for _, rid := range rids {
			s.local.remove(rid)
		}
	}
	s.m.handoff.Add(float64(sent))
	if sent > 0 || len(drop) > 0 {
		s.log.Info().Int("members", len(next)).Int("handed_off", sent).Int("dropped", len(drop)).Dur("took", time.Since(start)).Msg("hand-off done")
	}
}

// pushWindow is how many Replicate frames of one push are in flight at
// once: the sender encodes the next batches while the receiver applies
// one, instead of a round trip per batch.
const pushWindow = 4

// pushBatches replicates recs to p in frames of at most Batch records,
// pushWindow at a time, and returns how many changed p.
func (s *Store) pushBatches(ctx context.Context, p ids.PeerID, recs []record.Record) (int, error) {
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex // guards applied and first
		applied int
		first   error
	)
	sem := make(chan struct{}, pushWindow)
	failed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return first != nil
	}
	for len(recs) > 0 && !failed() {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return applied, ctx.Err()
		}
		n := min(len(recs), s.cfg.Batch)
		batch := recs[:n]
		recs = recs[n:]
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			resp, err := s.sendBatch(ctx, p, &wire.ReplicateReq{Records: batch})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if first == nil {
					first = err
				}
				return
			}
			applied += resp.Applied
		}()
	}
	wg.Wait()
	return applied, first
}

// digests folds the records that both self and peer should hold into
// per-bucket digests, for every peer at once.
func (s *Store) digests(view []ids.PeerID, entries []entry) map[ids.PeerID]*[nBuckets]wire.BucketDigest {
	out := make(map[ids.PeerID]*[nBuckets]wire.BucketDigest)
	for _, e := range entries {
		set := Place(e.rid, view, s.cfg.Replicas)
		if !contains(set, s.cfg.Self) {
			continue
		}
		for _, p := range set {
			if p == s.cfg.Self {
				continue
			}
			d := out[p]
			if d == nil {
				d = new([nBuckets]wire.BucketDigest)
				out[p] = d
			}
			b := &d[e.rid[0]]
			b.Hash += mix(e.digest ^ mix(uint64(e.rid[1])<<8|uint64(e.rid[2])))
			b.Count++
		}
	}
	return out
}

// antiEntropy compares bucket digests with every peer and exchanges the
// records of the buckets that differ, both ways.
func (s *Store) antiEntropy(ctx context.Context) {
	view := *s.view.Load()
	entries := s.local.snapshot(nil, false)
	per := s.digests(view, entries)
	for _, p := range view {
		if p == s.cfg.Self {
			continue
		}
		d := per[p]
		if d == nil {
			d = new([nBuckets]wire.BucketDigest)
		}
		if err := s.syncWith(ctx, p, view, d); err != nil {
			s.log.Debug().Err(err).Str("sp_id", p.Short()).Msg("anti-entropy round failed")
		}
		if ctx.Err() != nil {
			return
		}
	}
}

func (s *Store) syncWith(ctx context.Context, p ids.PeerID, view []ids.PeerID, d *[nBuckets]wire.BucketDigest) error {
	req := &wire.DigestReq{}
	for i := range d {
		if d[i].Count > 0 {
			b := d[i]
			b.Bucket = uint16(i)
			req.Buckets = append(req.Buckets, b)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	f, err := s.peers.Request(rctx, p, wire.TypeDigest, req)
	cancel()
	if err != nil {
		return err
	}
	var resp wire.DigestResp
	if err := wire.Unmarshal(f.Body, &resp); err != nil {
		return err
	}
	if len(resp.Mismatch) == 0 {
		return nil
	}
	want := make(map[uint16]bool, len(resp.Mismatch))
	for _, b := range resp.Mismatch {
		want[b] = true
	}
	// Ours to them.
	mine := s.shared(view, p, want)
	applied, err := s.pushBatches(ctx, p, mine)
	s.m.repaired.WithLabelValues("anti_entropy").Add(float64(applied))
	if err != nil {
		return err
	}
	// Theirs to us, a few buckets per request to stay under the frame limit.
	for i := 0; i < len(resp.Mismatch); i += 8 {
		j := min(i+8, len(resp.Mismatch))
		rctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		f, err := s.peers.Request(rctx, p, wire.TypeSync, &wire.SyncReq{Buckets: resp.Mismatch[i:j]})
		cancel()
		if err != nil {
			return err
		}
		var theirs wire.ReplicateReq
		if err := wire.Unmarshal(f.Body, &theirs); err != nil {
			return err
		}
		for k := range theirs.Records {
			rec := &theirs.Records[k]
			rec.Normalize()
			changed, err := s.applyLocal(rec, "", ids.PeerID{})
			if err != nil {
				s.log.Warn().Err(err).Str("sp_id", p.Short()).Msg("anti-entropy record refused")
				continue
			}
			if changed {
				s.m.repaired.WithLabelValues("anti_entropy").Inc()
			}
		}
	}
	return nil
}

// shared lists the records in the given buckets that both self and p
// should hold under view.
func (s *Store) shared(view []ids.PeerID, p ids.PeerID, buckets map[uint16]bool) []record.Record {
	var out []record.Record
	for _, e := range s.local.snapshot(func(rid ids.ResourceID) bool { return buckets[uint16(rid[0])] }, true) {
		set := Place(e.rid, view, s.cfg.Replicas)
		if contains(set, p) && contains(set, s.cfg.Self) {
			out = append(out, *e.rec)
		}
	}
	return out
}

// HandleDigest compares a peer's bucket digests with ours and names the
// buckets that differ.
func (s *Store) HandleDigest(from ids.PeerID, req *wire.DigestReq) (*wire.DigestResp, error) {
	if _, err := s.state(); err != nil {
		return nil, err
	}
	view := *s.view.Load()
	mine := s.digests(view, s.local.snapshot(nil, false))[from]
	if mine == nil {
		mine = new([nBuckets]wire.BucketDigest)
	}
	theirs := new([nBuckets]wire.BucketDigest)
	for _, b := range req.Buckets {
		if int(b.Bucket) < nBuckets {
			theirs[b.Bucket] = b
			theirs[b.Bucket].Bucket = 0
		}
	}
	resp := &wire.DigestResp{}
	for i := range mine {
		if mine[i].Hash != theirs[i].Hash || mine[i].Count != theirs[i].Count {
			resp.Mismatch = append(resp.Mismatch, uint16(i))
		}
	}
	return resp, nil
}

// maxSyncRecords bounds one Sync answer under the frame size limit.
const maxSyncRecords = 2048

// HandleSync returns our records in the asked buckets that the peer should
// also hold.
func (s *Store) HandleSync(from ids.PeerID, req *wire.SyncReq) (*wire.ReplicateReq, error) {
	if _, err := s.state(); err != nil {
		return nil, err
	}
	want := make(map[uint16]bool, len(req.Buckets))
	for _, b := range req.Buckets {
		want[b] = true
	}
	recs := s.shared(*s.view.Load(), from, want)
	if len(recs) > maxSyncRecords {
		recs = recs[:maxSyncRecords] // the next round fetches the rest
	}
	return &wire.ReplicateReq{Records: recs}, nil
}

// Drain hands every record this super peer holds to the replicas it will
// have once this node is gone, and waits for their acknowledgements: the
// graceful part of a departure. Records stay readable here until the
// process exits.
func (s *Store) Drain(ctx context.Context) (int, error) {
	view := *s.view.Load()
	var rest []ids.PeerID
	for _, p := range view {
		if p != s.cfg.Self {
			rest = append(rest, p)
		}
	}
	if len(rest) == 0 {
		return 0, nil
	}
	out := make(map[ids.PeerID][]record.Record)
	for _, e := range s.local.snapshot(nil, true) {
		oldSet := Place(e.rid, view, s.cfg.Replicas)
		for _, p := range Place(e.rid, rest, s.cfg.Replicas) {
			if !contains(oldSet, p) {
				out[p] = append(out[p], *e.rec)
			}
		}
	}
	sent, failed := s.pushAll(ctx, out)
	s.m.handoff.Add(float64(sent))
	var errs []error
	for _, err := range failed {
		errs = append(errs, err)
	}
	return sent, errors.Join(errs...)
}

// pushAll replicates each peer's records to it, peers in parallel, and
// returns how many records were sent and the peers that failed.
func (s *Store) pushAll(ctx context.Context, out map[ids.PeerID][]record.Record) (int, map[ids.PeerID]error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := map[ids.PeerID]error{}
	sent := 0
	for p, recs := range out {
		sent += len(recs)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.pushBatches(ctx, p, recs); err != nil {
				mu.Lock()
				failed[p] = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return sent, failed
}
