package registrar

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/p2psip/p2psip/common/record"
)

// Group commit. Writes of one AoR are serialized (versions and CSeq checks
// must see each other's results), and each is a quorum write to the
// overlay: one write in flight per AoR. A phone that re-registers, or
// several phones of one user registering at once, would otherwise queue
// one round trip each. Instead, the REGISTERs that queue behind a write in
// flight are applied together in the next single write: each is checked
// in order against the bindings as the earlier ones of its batch leave
// them (RFC 3261 §10.3 rules per request), a refused one contributes
// nothing, and each accepted one gets its own 200 listing the AoR's
// bindings after the write (or a 503 when it failed).

// pending is one REGISTER waiting for its batch.
type pending struct {
	req  *sip.Request
	user string
	// wake is signalled once to make the waiter the AoR's next leader
	// (done unset) and once with its outcome (done set).
	wake chan struct{}
	done bool
	res  *sip.Response
	err  error
}

// aorQueue is the REGISTERs of one AoR handled or waiting.
type aorQueue struct {
	n       int        // in the batch being written plus waiting
	waiting []*pending // not yet taken into a batch
	leading bool       // a goroutine is writing this AoR's batches
}

// queues holds an aorQueue per AoR with REGISTERs in progress.
type queues struct {
	mu sync.Mutex // guards m
	m  map[string]*aorQueue
}

// enqueue adds p to aor's queue unless max REGISTERs are there already
// (ok false: nothing queued). lead says the caller must write the next
// batch: no one else is. A phone sends one REGISTER at a time; a queue
// much longer than the phones of one user is a flood, and queueing it
// would keep the registrar busy with stale requests long after the flood
// ends (their clients gave up).
func (qs *queues) enqueue(aor string, p *pending, max int) (lead, ok bool) {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	if qs.m == nil {
		qs.m = make(map[string]*aorQueue)
	}
	q := qs.m[aor]
	if q == nil {
		q = &aorQueue{}
		qs.m[aor] = q
	}
	if q.n >= max {
		return false, false
	}
	q.n++
	q.waiting = append(q.waiting, p)
	if !q.leading {
		q.leading = true
		lead = true
	}
	return lead, true
}

// take returns every waiting REGISTER of aor as the next batch.
func (qs *queues) take(aor string) []*pending {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	q := qs.m[aor]
	b := q.waiting
	q.waiting = nil
	return b
}

// finish ends a batch of n REGISTERs and returns the waiter that leads the
// next one, or nil when none waits (the queue is then gone).
func (qs *queues) finish(aor string, n int) *pending {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	q := qs.m[aor]
	q.n -= n
	if len(q.waiting) > 0 {
		return q.waiting[0]
	}
	q.leading = false
	if q.n == 0 {
		delete(qs.m, aor)
	}
	return nil
}

// queued is how many REGISTERs of aor are handled or waiting (tests).
func (qs *queues) queued(aor string) int {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	if q := qs.m[aor]; q != nil {
		return q.n
	}
	return 0
}

// submit queues a checked REGISTER for aor and returns its outcome: its
// 200, or why it was refused (503 at once when the AoR's queue is full).
func (g *Registrar) submit(req *sip.Request, aor, user string) (*sip.Response, error) {
	p := &pending{req: req, user: user, wake: make(chan struct{}, 1)}
	lead, ok := g.queue.enqueue(aor, p, g.cfg.MaxQueuedPerAOR)
	if !ok {
		g.stats.busy.Add(1)
		return nil, refuse(503, "Service Unavailable",
			sip.NewHeader("Retry-After", strconv.Itoa(int(g.cfg.RetryAfter/time.Second))))
	}
	for {
		if lead {
			g.lead(aor)
		}
		<-p.wake
		if p.done {
			return p.res, p.err
		}
		lead = true
	}
}

// lead writes the next batch of aor (the caller's REGISTER is in it),
// wakes its REGISTERs with their outcomes and hands the lead to the first
// one that arrived meanwhile.
func (g *Registrar) lead(aor string) {
	batch := g.queue.take(aor)
	unlock := g.locks.lock(aor) // against Restore and DropFlow
	now := g.cfg.Now()
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.StoreTimeout)
	for rest := batch; len(rest) > 0; {
		rest = g.commit(ctx, aor, rest, now)
	}
	cancel()
	unlock()
	next := g.queue.finish(aor, len(batch))
	for _, p := range batch {
		p.done = true
		p.wake <- struct{}{}
	}
	if next != nil {
		next.wake <- struct{}{}
	}
}

// commit checks the REGISTERs of batch in order against the bindings as
// the earlier ones leave them and writes those accepted in one store
// write, setting each one's outcome. It stops before a REGISTER that
// would take the write past record.MaxEntries keys and returns the rest.
func (g *Registrar) commit(ctx context.Context, aor string, batch []*pending, now time.Time) (rest []*pending) {
	v := &view{g: g, aor: aor, now: now, over: make(map[string]*binding)}
	var accepted []*pending
	var ups []update
	for i, p := range batch {
		pu, err := g.updatesOf(ctx, p.req, v, p.user)
		if err != nil {
			p.err = err
			continue
		}
		if len(accepted) > 0 && v.keysWith(pu) > record.MaxEntries {
			rest = batch[i:]
			break
		}
		v.add(pu)
		accepted = append(accepted, p)
		ups = append(ups, pu...)
	}
	if len(accepted) == 0 {
		return rest
	}
	var state *record.Record
	if len(ups) > 0 {
		var err error
		if state, err = g.apply(ctx, aor, accepted[0].user, ups, now); err != nil {
			for _, p := range accepted {
				p.err = err
			}
			return rest
		}
		g.stats.writes.Add(1)
		g.stats.batched.Add(uint64(len(accepted)))
	}
	list := g.contactList(ctx, aor, state, now)
	date := now.UTC().Format(http.TimeFormat)
	for _, p := range accepted {
		p.res = okResponse(p.req, list, date)
	}
	return rest
}

// view is the bindings of one AoR as the table holds them, with the
// changes of the batch being built on top.
type view struct {
	g    *Registrar
	aor  string
	now  time.Time
	over map[string]*binding // entry key → binding as the batch leaves it; nil: removed
}

// current returns the live binding for key.
func (v *view) current(key string) *binding {
	if b, ok := v.over[key]; ok {
		if b == nil || !b.expires.After(v.now) {
			return nil
		}
		c := *b
		return &c
	}
	return v.g.current(v.aor, key, v.now)
}

// touched reports whether the batch changes key.
func (v *view) touched(key string) bool {
	_, ok := v.over[key]
	return ok
}

// live returns copies of the live bindings.
func (v *view) live() []*binding {
	var out []*binding
	v.g.mu.Lock()
	for key, b := range v.g.tab.byAOR[v.aor] {
		if _, ok := v.over[key]; !ok && b.expires.After(v.now) {
			c := *b
			out = append(out, &c)
		}
	}
	v.g.mu.Unlock()
	for _, b := range v.over {
		if b != nil && b.expires.After(v.now) {
			c := *b
			out = append(out, &c)
		}
	}
	return out
}

// count is the number of live bindings.
func (v *view) count() int {
	n := 0
	v.g.mu.Lock()
	for key, b := range v.g.tab.byAOR[v.aor] {
		if _, ok := v.over[key]; !ok && b.expires.After(v.now) {
			n++
		}
	}
	v.g.mu.Unlock()
	for _, b := range v.over {
		if b != nil && b.expires.After(v.now) {
			n++
		}
	}
	return n
}

// keysWith is how many entry keys the batch writes with ups added.
func (v *view) keysWith(ups []update) int {
	n := len(v.over)
	seen := make(map[string]bool, len(ups))
	for _, u := range ups {
		if !v.touched(u.b.key) && !seen[u.b.key] {
			seen[u.b.key] = true
			n++
		}
	}
	return n
}

// add applies one accepted REGISTER's updates to the view.
func (v *view) add(ups []update) {
	for i := range ups {
		if u := &ups[i]; u.exp > 0 {
			b := u.b
			v.over[u.b.key] = &b
		} else {
			v.over[u.b.key] = nil
		}
	}
}
