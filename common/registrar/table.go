package registrar

import "sync"

// table holds the bindings with the indexes Flow and DropFlow need, so
// neither scans every binding of a registrar serving many users. Callers
// hold Registrar.mu.
type table struct {
	byAOR   map[string]map[string]*binding // AoR → entry key → binding
	byMatch map[string]set                 // user@host:port
	byHost  map[string]set                 // host:port
	byFlow  map[string]set                 // flowKey
}

type set = map[*binding]struct{}

func newTable() table {
	return table{
		byAOR: make(map[string]map[string]*binding), byMatch: make(map[string]set),
		byHost: make(map[string]set), byFlow: make(map[string]set),
	}
}

func (t *table) get(aor, key string) *binding { return t.byAOR[aor][key] }

// put adds b, replacing the binding with the same AoR and key. The new
// binding is indexed before the old one is unindexed, so that a refresh
// (same contact, same flow) keeps its index sets instead of freeing and
// making them again.
func (t *table) put(b *binding) {
	keys := t.byAOR[b.aor]
	if keys == nil {
		keys = make(map[string]*binding)
		t.byAOR[b.aor] = keys
	}
	old := keys[b.key]
	keys[b.key] = b
	index(t.byMatch, b.match, b)
	index(t.byHost, b.hostport, b)
	index(t.byFlow, b.flow(), b)
	if old != nil {
		unindex(t.byMatch, old.match, old)
		unindex(t.byHost, old.hostport, old)
		unindex(t.byFlow, old.flow(), old)
	}
}

// del removes the binding of aor and key, if any, and returns it.
func (t *table) del(aor, key string) *binding {
	keys := t.byAOR[aor]
	b := keys[key]
	if b == nil {
		return nil
	}
	delete(keys, key)
	if len(keys) == 0 {
		delete(t.byAOR, aor)
	}
	unindex(t.byMatch, b.match, b)
	unindex(t.byHost, b.hostport, b)
	unindex(t.byFlow, b.flow(), b)
	return b
}

func index(m map[string]set, k string, b *binding) {
	s := m[k]
	if s == nil {
		s = make(set, 1)
		m[k] = s
	}
	s[b] = struct{}{}
}

func unindex(m map[string]set, k string, b *binding) {
	if s := m[k]; s != nil {
		delete(s, b)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

// keyLocks is a mutex per key (AoR), created on demand and freed when no
// one holds or waits for it.
type keyLocks struct {
	mu sync.Mutex // guards m
	m  map[string]*keyLock
}

type keyLock struct {
	mu   sync.Mutex
	refs int // holders and waiters; guarded by keyLocks.mu
}

// lock locks key and returns its unlock.
func (l *keyLocks) lock(key string) func() {
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[string]*keyLock)
	}
	k := l.m[key]
	if k == nil {
		k = &keyLock{}
		l.m[key] = k
	}
	k.refs++
	l.mu.Unlock()
	k.mu.Lock()
	return func() {
		k.mu.Unlock()
		l.mu.Lock()
		if k.refs--; k.refs == 0 {
			delete(l.m, key)
		}
		l.mu.Unlock()
	}
}
