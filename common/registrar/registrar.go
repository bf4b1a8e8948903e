package registrar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
)

// Store is the overlay's location database as the registrar sees it.
type Store interface {
	// Put merges rec's entries into the overlay record as user, the
	// authenticated owner of the AoR (a session that is already that user
	// may ignore it).
	Put(ctx context.Context, user string, rec *record.Record) error
	// Get returns the live record of an AoR.
	Get(ctx context.Context, aor string) (*record.Record, error)
}

// StatePutter is a Store that can answer a write with the AoR's live
// record as the write quorum holds it afterwards (nil when it cannot
// tell): the 200 then needs no second read of the overlay.
type StatePutter interface {
	PutState(ctx context.Context, user string, rec *record.Record) (*record.Record, error)
}

// Attachment is where this node is attached now; it is stamped on every
// stored contact.
type Attachment struct {
	SP     ids.PeerID
	SPAddr string
	Relay  string
}

// Config configures a Registrar.
type Config struct {
	// Self is the node holding the bindings: the agent's Peer-ID (stored as
	// each contact's PeerID) or, with Edge, the super peer's (stored as
	// each contact's SP).
	Self ids.PeerID
	// User is the one authenticated user of fixed-user mode (the agent):
	// only sip:User@Overlay is accepted. Leave it empty and set Authorize to
	// serve many users.
	User    string
	Overlay string
	Store   Store
	// Authorize, used when User is empty, authenticates a REGISTER for aor
	// (normalized, sip:user@Overlay) and returns the authenticated user, or
	// a response refusing the request (a 401 challenge, a 403). The AoR's
	// user must then equal the returned user (else 403). It is called on
	// the SIP handler goroutine before anything is read or written, and
	// must be safe for concurrent use.
	Authorize func(req *sip.Request, aor string) (user string, refusal *sip.Response)
	// Edge marks a super peer's SIP edge: contacts are stored without a
	// Peer-ID, with SP = Self, and with the phone's flow in Contact.Flow
	// ("tcp 198.51.100.7:40122").
	Edge bool
	// Attachment returns the current attachment; nil means none. With Edge
	// only SPAddr is used.
	Attachment func() Attachment
	// MinExpires (0: 60s), MaxExpires (0: 3600s) and DefaultExpires (0:
	// 3600s) are the RFC 3261 §10.3 registration intervals.
	MinExpires, MaxExpires, DefaultExpires time.Duration
	// StoreTimeout bounds one Store call; 0 means 5s.
	StoreTimeout time.Duration
	// RetryAfter is sent with 503 when the overlay cannot be written; 0
	// means 5s.
	RetryAfter time.Duration
	// MaxQueuedPerAOR bounds the REGISTERs of one AoR handled or waiting
	// at once; past it, 503 with Retry-After at once. Those waiting behind
	// a write in flight are written together in the next one, so a queue
	// costs about one write however long it is: the bound is for floods
	// (each REGISTER authenticated already), not to spare the store. 0
	// means 64: room for a burst of one user's REGISTERs read at once
	// from the socket buffer after a scheduling stall.
	MaxQueuedPerAOR int
	// MaxBindings bounds the bindings of one AoR at this node; 0 means 16.
	// A record holds at most record.MaxEntries entries in all.
	MaxBindings int
	// SweepInterval is how often Run drops expired bindings; 0 means 1s.
	SweepInterval time.Duration
	Log           zerolog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// binding is one registered contact.
type binding struct {
	aor       string // normalized AoR it is bound to
	user      string // the AoR's authenticated owner (entry writer)
	key       string // record entry key: +sip.instance, else the contact URI
	uri       string // contact URI as the phone gave it (no header params)
	match     string // user@host:port, for Flow
	hostport  string // host:port, Flow's fallback
	transport string // sipgo transport the phone registered over
	source    string // ip:port it registered from
	callID    string
	cseq      uint32
	expires   time.Time
	instance  string
	regID     uint32
	q         uint16
	version   uint64 // of the entry last stored for it
}

func (b *binding) flow() string { return flowKey(b.transport, b.source) }

// flowKey identifies a flow the way sipgo's pools do: transport and remote
// ip:port.
func flowKey(transport, source string) string { return strings.ToUpper(transport) + " " + source }

// Registrar serves REGISTER and answers siproute's Flow questions. Its
// methods are safe for concurrent use.
type Registrar struct {
	cfg Config
	log zerolog.Logger
	aor string // fixed-user mode: the one AoR; "" otherwise

	// locks serializes everything that writes one AoR's record, so that
	// versions and CSeq checks see each other's results.
	locks keyLocks
	// queue holds the REGISTERs of each AoR waiting for their batch
	// (batch.go).
	queue queues
	stats struct {
		writes, batched, busy, storeFailed atomic.Uint64
		unauthorized, refused              atomic.Uint64
	}

	mu  sync.Mutex // guards tab
	tab table
}

// New validates cfg; it does no I/O.
func New(cfg Config) (*Registrar, error) {
	switch {
	case cfg.Self.IsZero() || cfg.Overlay == "" || cfg.Store == nil:
		return nil, errors.New("registrar: Self, Overlay and Store required")
	case (cfg.User == "") == (cfg.Authorize == nil):
		return nil, errors.New("registrar: exactly one of User and Authorize required")
	}
	var aor string
	if cfg.User != "" {
		var err error
		if aor, err = ids.NormalizeAOR("sip:" + cfg.User + "@" + cfg.Overlay); err != nil {
			return nil, fmt.Errorf("registrar: user %q: %w", cfg.User, err)
		}
	}
	setDefault(&cfg.MinExpires, 60*time.Second)
	setDefault(&cfg.MaxExpires, 3600*time.Second)
	setDefault(&cfg.DefaultExpires, 3600*time.Second)
	setDefault(&cfg.StoreTimeout, 5*time.Second)
	setDefault(&cfg.RetryAfter, 5*time.Second)
	setDefault(&cfg.SweepInterval, time.Second)
	if cfg.MinExpires > cfg.MaxExpires {
		return nil, errors.New("registrar: MinExpires above MaxExpires")
	}
	cfg.DefaultExpires = min(max(cfg.DefaultExpires, cfg.MinExpires), cfg.MaxExpires)
	if cfg.MaxQueuedPerAOR <= 0 {
		cfg.MaxQueuedPerAOR = 64
	}
	if cfg.MaxBindings <= 0 {
		cfg.MaxBindings = 16
	}
	cfg.MaxBindings = min(cfg.MaxBindings, record.MaxEntries)
	if cfg.Attachment == nil {
		cfg.Attachment = func() Attachment { return Attachment{} }
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log.With().Str("component", "registrar").Logger()
	if aor != "" {
		log = log.With().Str("aor", aor).Logger()
	}
	return &Registrar{cfg: cfg, aor: aor, log: log, tab: newTable()}, nil
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}

// AOR is the one address-of-record a fixed-user registrar accepts ("" when
// it serves many users).
func (g *Registrar) AOR() string { return g.aor }

// Stats counts what the registrar did with REGISTERs.
type Stats struct {
	// Writes is the number of store writes made for REGISTERs, Batched
	// the REGISTERs they carried (each answered 200).
	Writes, Batched uint64
	// Busy counts 503s for a full per-AoR queue (MaxQueuedPerAOR),
	// StoreFailed the failed store writes (each a 503 for its batch).
	Busy, StoreFailed uint64
	// Unauthorized counts REGISTERs Authorize answered (challenges
	// included); Refused those answered with an error after it (bad
	// request, another user's AoR, too brief, Busy, StoreFailed, ...).
	Unauthorized, Refused uint64
}

// Stats returns a snapshot of the counters.
func (g *Registrar) Stats() Stats {
	return Stats{
		Writes: g.stats.writes.Load(), Batched: g.stats.batched.Load(),
		Busy: g.stats.busy.Load(), StoreFailed: g.stats.storeFailed.Load(),
		Unauthorized: g.stats.unauthorized.Load(), Refused: g.stats.refused.Load(),
	}
}

// Bindings is the number of live bindings.
func (g *Registrar) Bindings() int {
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, keys := range g.tab.byAOR {
		for _, b := range keys {
			if b.expires.After(now) {
				n++
			}
		}
	}
	return n
}

// Flow implements siproute.Local: the transport and source address the
// phone owning contactURI registered from. Matching ignores parameters:
// user, host and port must agree. Failing that (a phone may put another
// user part in its dialog Contact): in fixed-user mode, host and port
// alone; with Edge, host and port must be the flow's own source address
// (a phone not behind NAT) — phones behind different NATs often share a
// private address, and a request must never reach the wrong one. For the
// same reason the live bindings that match must all share one flow; a
// request for an ambiguous contact is better undelivered.
func (g *Registrar) Flow(contactURI string) (transport, addr string, ok bool) {
	m, hp, ok := matchKeys(contactURI)
	if !ok {
		return "", "", false
	}
	return g.flow(m, hp, func() string { return contactURI })
}

// FlowURI is Flow for a URI the caller has parsed already (siproute uses
// it when its Local has it): every request the router forwards asks, and
// printing the URI only for Flow to parse it again was a few per cent of
// a call's allocations.
func (g *Registrar) FlowURI(u *sip.Uri) (transport, addr string, ok bool) {
	m, hp, ok := uriKeys(u)
	if !ok {
		return "", "", false
	}
	return g.flow(m, hp, u.String)
}

// flow is Flow for the keys of a contact; what names it in a log line.
func (g *Registrar) flow(m, hp string, what func() string) (transport, addr string, ok bool) {
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	var candidates [4]set
	candidates[0] = g.tab.byMatch[m]
	if g.cfg.Edge {
		for i, tp := range [3]string{"UDP", "TCP", "TLS"} {
			candidates[i+1] = g.tab.byFlow[tp+" "+hp]
		}
	} else {
		candidates[1] = g.tab.byHost[hp]
	}
	for _, s := range candidates {
		var only *binding
		for b := range s {
			if !b.expires.After(now) {
				continue
			}
			if only != nil && (only.source != b.source || !strings.EqualFold(only.transport, b.transport)) {
				g.log.Debug().Str("contact", what()).Msg("contact matches bindings of several flows; not delivered")
				return "", "", false
			}
			only = b
		}
		if only != nil {
			return only.transport, only.source, true
		}
	}
	return "", "", false
}

// FlowUser reports whether a phone holds a live binding registered over
// the flow (transport, source), and for which user: the SIP edge treats
// requests arriving on a registered flow as that user's.
func (g *Registrar) FlowUser(transport, source string) (user string, ok bool) {
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	for b := range g.tab.byFlow[flowKey(transport, source)] {
		if b.expires.After(now) {
			return b.user, true
		}
	}
	return "", false
}

// matchKeys returns "user@host:port" and "host:port" of a SIP URI, host
// lower-cased and the default port made explicit.
func matchKeys(s string) (match, hostport string, ok bool) {
	var u sip.Uri
	if err := sip.ParseUri(s, &u); err != nil {
		return "", "", false
	}
	return uriKeys(&u)
}

// uriKeys is matchKeys for a parsed URI.
func uriKeys(u *sip.Uri) (match, hostport string, ok bool) {
	if u.Host == "" {
		return "", "", false
	}
	port := u.Port
	if port == 0 {
		port = 5060
		if u.Scheme == "sips" {
			port = 5061
		}
	}
	hostport = net.JoinHostPort(strings.ToLower(strings.Trim(u.Host, "[]")), strconv.Itoa(port))
	return u.User + "@" + hostport, hostport, true
}

// Run drops expired bindings until ctx ends. (Their overlay entries expire
// on their own.)
func (g *Registrar) Run(ctx context.Context) error {
	t := time.NewTicker(g.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			g.sweep(g.cfg.Now())
		}
	}
}

func (g *Registrar) sweep(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, keys := range g.tab.byAOR {
		for _, b := range keys {
			if !b.expires.After(now) {
				g.tab.del(b.aor, b.key)
				g.log.Debug().Str("aor", b.aor).Str("contact", b.uri).Msg("binding expired")
			}
		}
	}
}

// Restore re-stores every live binding with the current attachment, after
// a failover: same Call-ID, CSeq and expiry, a new Version, so the new
// entries supersede the old ones wherever they are merged. AoRs are written
// one after the other; the first error ends the restore.
func (g *Registrar) Restore(ctx context.Context) error {
	g.mu.Lock()
	aors := make([]string, 0, len(g.tab.byAOR))
	for aor := range g.tab.byAOR {
		aors = append(aors, aor)
	}
	g.mu.Unlock()
	total := 0
	for _, aor := range aors {
		n, err := g.restore(ctx, aor)
		if err != nil {
			return err
		}
		total += n
	}
	if total > 0 {
		g.log.Info().Int("bindings", total).Str("sp_id", g.cfg.Attachment().SP.Short()).Msg("bindings re-stored")
	}
	return nil
}

func (g *Registrar) restore(ctx context.Context, aor string) (int, error) {
	defer g.locks.lock(aor)()
	now := g.cfg.Now()
	att := g.cfg.Attachment()
	rec := &record.Record{Kind: record.KindLocation, Name: aor}
	var live []*binding
	g.mu.Lock()
	for _, b := range g.tab.byAOR[aor] {
		if b.expires.After(now) {
			c := *b
			c.version = record.NextVersion(&record.Entry{Version: b.version}, now)
			live = append(live, &c)
			rec.Entries = append(rec.Entries, g.entry(&c, att))
		}
	}
	g.mu.Unlock()
	if len(live) == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.StoreTimeout)
	defer cancel()
	if err := g.cfg.Store.Put(ctx, live[0].user, rec); err != nil {
		return 0, fmt.Errorf("registrar: restore %d bindings of %s: %w", len(live), aor, err)
	}
	g.mu.Lock()
	for _, b := range live {
		if cur := g.tab.get(aor, b.key); cur != nil && cur.callID == b.callID && cur.cseq == b.cseq {
			cur.version = b.version
		}
	}
	g.mu.Unlock()
	return len(live), nil
}

// DropFlow removes every binding registered over the flow (transport,
// source) — a TCP or TLS connection that closed for good, so nothing can
// reach those phones any more — and tombstones their overlay entries. A
// binding the phone has meanwhile refreshed over another flow is kept. It
// returns how many bindings it removed; a failed overlay write is logged
// (the entries then expire on their own) and the bindings are removed
// anyway.
func (g *Registrar) DropFlow(transport, source string) int {
	fk := flowKey(transport, source)
	g.mu.Lock()
	var aors []string
	seen := make(map[string]bool)
	for b := range g.tab.byFlow[fk] {
		if !seen[b.aor] {
			seen[b.aor] = true
			aors = append(aors, b.aor)
		}
	}
	g.mu.Unlock()
	n := 0
	for _, aor := range aors {
		n += g.dropFlow(aor, fk)
	}
	if n > 0 {
		g.log.Info().Str("flow", fk).Int("bindings", n).Msg("flow closed, bindings removed")
	}
	return n
}

func (g *Registrar) dropFlow(aor, fk string) int {
	defer g.locks.lock(aor)()
	now := g.cfg.Now()
	var ups []update
	g.mu.Lock()
	for _, b := range g.tab.byAOR[aor] {
		if b.flow() != fk {
			continue
		}
		prev := *b
		ups = append(ups, update{b: binding{aor: aor, user: b.user, key: b.key, uri: b.uri, callID: b.callID, cseq: b.cseq + 1}, prev: &prev})
	}
	g.mu.Unlock()
	if len(ups) == 0 {
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.StoreTimeout)
	defer cancel()
	if _, err := g.apply(ctx, aor, ups[0].b.user, ups, now); err != nil {
		g.log.Warn().Err(err).Str("aor", aor).Msg("tombstones for a closed flow not stored")
		g.mu.Lock()
		for _, u := range ups {
			if cur := g.tab.get(aor, u.b.key); cur != nil && cur.flow() == fk {
				g.tab.del(aor, u.b.key)
			}
		}
		g.mu.Unlock()
	}
	return len(ups)
}

// entry is the location entry for a live binding.
func (g *Registrar) entry(b *binding, att Attachment) record.Entry {
	c := &record.Contact{
		URI: b.uri, PeerID: g.cfg.Self, SP: att.SP, SPAddr: att.SPAddr, Relay: att.Relay,
		Instance: b.instance, RegID: b.regID, Q: b.q,
	}
	if g.cfg.Edge {
		c.PeerID, c.SP, c.Relay = ids.PeerID{}, g.cfg.Self, ""
		c.Flow = strings.ToLower(b.transport) + " " + b.source
	}
	return record.Entry{
		Key: b.key, CallID: b.callID, CSeq: b.cseq, Version: b.version,
		Expires: b.expires.Unix(), Writer: b.user, Contact: c,
	}
}

// ours reports whether a stored contact is one this node registered.
func (g *Registrar) ours(c *record.Contact) bool {
	if g.cfg.Edge {
		return c.PeerID.IsZero() && c.SP == g.cfg.Self
	}
	return c.PeerID == g.cfg.Self
}
