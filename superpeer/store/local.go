package store

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
)

// nShards spreads the local map over several locks so concurrent writes to
// different records do not contend.
const nShards = 64

// local is this super peer's share of the database: in memory, because
// records are soft state their owners refresh.
type local struct {
	shards [nShards]shard
	counts [4]atomic.Int64 // records held, by record.Kind
}

type shard struct {
	mu    sync.RWMutex // guards items
	items map[ids.ResourceID]*item
}

// item is a stored record and its cached digest (0: recompute).
type item struct {
	rec    *record.Record
	digest uint64
}

func newLocal() *local {
	l := &local{}
	for i := range l.shards {
		l.shards[i].items = make(map[ids.ResourceID]*item)
	}
	return l
}

func (l *local) shard(rid ids.ResourceID) *shard { return &l.shards[rid[0]%nShards] }

// merge folds rec into the local copy; rec is not retained.
func (l *local) merge(rid ids.ResourceID, rec *record.Record) (bool, error) {
	sh := l.shard(rid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	it, ok := sh.items[rid]
	if !ok {
		sh.items[rid] = &item{rec: rec.Clone()}
		l.count(rec.Kind, 1)
		return true, nil
	}
	changed, err := record.Merge(it.rec, rec)
	if changed {
		it.digest = 0
	}
	return changed, err
}

// get returns a copy of the local record, or nil.
func (l *local) get(rid ids.ResourceID) *record.Record {
	sh := l.shard(rid)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	if it, ok := sh.items[rid]; ok {
		return it.rec.Clone()
	}
	return nil
}

func (l *local) remove(rid ids.ResourceID) {
	sh := l.shard(rid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if it, ok := sh.items[rid]; ok {
		delete(sh.items, rid)
		l.count(it.rec.Kind, -1)
	}
}

func (l *local) count(k record.Kind, d int64) {
	if int(k) < len(l.counts) {
		l.counts[k].Add(d)
	}
}

// entry is what scans see: a copy of the record or its digest (see
// snapshot).
type entry struct {
	rid    ids.ResourceID
	rec    *record.Record
	digest uint64
}

// snapshot lists the records held (those filter accepts; nil: all), shard
// by shard. With records, each entry carries a copy that is safe to read
// and send after the locks drop, and no digest: the scans that move
// records (hand-off, drain, repair) never compare digests, and computing
// one (CBOR and SHA-256) for every record of a fresh hand-off cost more
// than sending it. Without records, digests are filled in.
func (l *local) snapshot(filter func(ids.ResourceID) bool, records bool) []entry {
	var out []entry
	for i := range l.shards {
		sh := &l.shards[i]
		if records {
			sh.mu.RLock()
		} else {
			sh.mu.Lock() // digests are cached in the items
		}
		for rid, it := range sh.items {
			if filter != nil && !filter(rid) {
				continue
			}
			e := entry{rid: rid}
			if records {
				e.rec = it.rec.Clone()
			} else {
				if it.digest == 0 {
					it.digest = it.rec.Digest() | 1 // never 0: 0 means "stale"
				}
				e.digest = it.digest
			}
			out = append(out, e)
		}
		if records {
			sh.mu.RUnlock()
		} else {
			sh.mu.Unlock()
		}
	}
	return out
}

// sweep drops expired entries and empty records; returns records dropped.
func (l *local) sweep(now time.Time) int {
	dropped := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for rid, it := range sh.items {
			if it.rec.Sweep(now) > 0 {
				it.digest = 0
			}
			if len(it.rec.Entries) == 0 {
				delete(sh.items, rid)
				l.count(it.rec.Kind, -1)
				dropped++
			}
		}
		sh.mu.Unlock()
	}
	return dropped
}
