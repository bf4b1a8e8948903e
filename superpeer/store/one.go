package store

import (
	"context"
	"slices"
	"time"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
)

// GetOne is the routing read (wire.FetchReq.One): the live entries of one
// replica's copy — this super peer's own when it is a replica, else the
// first replica's — and a quorum read (Get) only when that copy has no
// live entry or the replica does not answer.
//
// Why not always Get: a call's INVITE is looked up on the caller's side
// every time, and Get asks every replica and repairs what differs, which
// costs a round trip between super peers, a goroutine per replica and a
// merge for each call. A registration is written to a quorum and sent to
// every replica at once, so one replica lags only while a write is in
// flight or while it was cut off — the window in which a Kamailio cluster
// replicating its location table (dmq_usrloc) routes on a stale copy too;
// anti-entropy and the next registration close it. A copy with nothing
// live (a fresh replica still receiving its hand-off, a missed first
// registration) never answers 404 on its own: the quorum read decides.
func (s *Store) GetOne(ctx context.Context, kind record.Kind, name string) (rec *record.Record, err error) {
	start := time.Now()
	defer func() { s.observe("get_one", start, err) }()
	if _, err := s.state(); err != nil {
		return nil, err
	}
	rid, err := resourceOf(kind, name)
	if err != nil {
		return nil, err
	}
	replicas := s.Replicas(rid)
	var one *record.Record
	switch {
	case slices.Contains(replicas, s.cfg.Self):
		one = s.local.get(rid)
	case len(replicas) > 0:
		// An error (the replica is down or slow) falls through to the
		// quorum read, which asks the others as well.
		one, _ = s.read(ctx, replicas[0], &wire.ReadReq{Kind: kind, Name: name})
	}
	if one != nil {
		if live := one.Live(s.cfg.Now()); len(live.Entries) > 0 {
			s.m.oneReads.WithLabelValues("one").Inc()
			return live, nil
		}
	}
	s.m.oneReads.WithLabelValues("quorum").Inc()
	return s.Get(ctx, kind, name)
}

// resourceOf is the Resource-ID of the record kind/name, which must be a
// valid record name (else a bad request).
func resourceOf(kind record.Kind, name string) (ids.ResourceID, error) {
	probe := &record.Record{Kind: kind, Name: name}
	if err := probe.Validate(); err != nil {
		return ids.ResourceID{}, wire.Errorf(wire.CodeBadRequest, "%v", err)
	}
	return probe.ResourceID(), nil
}
