package localsip

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
)

// Store is the overlay's location database as the agent's authenticated
// session sees it.
type Store interface {
	// Put merges rec's entries into the overlay record.
	Put(ctx context.Context, rec *record.Record) error
	// Get returns the live record of an AoR.
	Get(ctx context.Context, aor string) (*record.Record, error)
}

// Attachment is where this agent is attached now; it is stamped on every
// stored contact.
type Attachment struct {
	SP     ids.PeerID
	SPAddr string
	Relay  string
}

// Config configures a Registrar.
type Config struct {
	// Self is the agent's Peer-ID, stored as each contact's owner.
	Self ids.PeerID
	// User is the authenticated user; only sip:User@Overlay is accepted.
	User    string
	Overlay string
	Store   Store
	// Attachment returns the current attachment; nil means none.
	Attachment func() Attachment
	// MinExpires (0: 60s), MaxExpires (0: 3600s) and DefaultExpires (0:
	// 3600s) are the RFC 3261 §10.3 registration intervals.
	MinExpires, MaxExpires, DefaultExpires time.Duration
	// StoreTimeout bounds one Store call; 0 means 5s.
	StoreTimeout time.Duration
	// RetryAfter is sent with 503 when the overlay cannot be written; 0
	// means 5s.
	RetryAfter time.Duration
	// MaxBindings bounds the phone bindings of the user at this agent; 0
	// means 16. A record holds at most record.MaxEntries entries in all.
	MaxBindings int
	// SweepInterval is how often Run drops expired bindings; 0 means 1s.
	SweepInterval time.Duration
	Log           zerolog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// binding is one registered contact of the phone(s).
type binding struct {
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

// Registrar is the agent's registrar. HandleRegister and Flow are safe for
// concurrent use.
type Registrar struct {
	cfg Config
	log zerolog.Logger
	aor string

	// write serializes everything that writes the overlay record, so that
	// versions and CSeq checks see each other's results.
	write sync.Mutex

	mu       sync.Mutex // guards bindings
	bindings map[string]*binding
}

// New validates cfg; it does no I/O.
func New(cfg Config) (*Registrar, error) {
	if cfg.Self.IsZero() || cfg.User == "" || cfg.Overlay == "" || cfg.Store == nil {
		return nil, errors.New("localsip: Self, User, Overlay and Store required")
	}
	aor, err := ids.NormalizeAOR("sip:" + cfg.User + "@" + cfg.Overlay)
	if err != nil {
		return nil, fmt.Errorf("localsip: user %q: %w", cfg.User, err)
	}
	setDefault(&cfg.MinExpires, 60*time.Second)
	setDefault(&cfg.MaxExpires, 3600*time.Second)
	setDefault(&cfg.DefaultExpires, 3600*time.Second)
	setDefault(&cfg.StoreTimeout, 5*time.Second)
	setDefault(&cfg.RetryAfter, 5*time.Second)
	setDefault(&cfg.SweepInterval, time.Second)
	if cfg.MinExpires > cfg.MaxExpires {
		return nil, errors.New("localsip: MinExpires above MaxExpires")
	}
	cfg.DefaultExpires = min(max(cfg.DefaultExpires, cfg.MinExpires), cfg.MaxExpires)
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
	return &Registrar{
		cfg: cfg, aor: aor, bindings: make(map[string]*binding),
		log: cfg.Log.With().Str("component", "localsip").Str("aor", aor).Logger(),
	}, nil
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}

// AOR is the one address-of-record this registrar accepts.
func (g *Registrar) AOR() string { return g.aor }

// Bindings is the number of live bindings.
func (g *Registrar) Bindings() int {
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, b := range g.bindings {
		if b.expires.After(now) {
			n++
		}
	}
	return n
}

// Flow implements siproute.Local: the transport and source address the
// phone owning contactURI registered from. Matching ignores parameters:
// user, host and port must agree; failing that, host and port alone (a
// phone may put another user part in its dialog Contact).
func (g *Registrar) Flow(contactURI string) (transport, addr string, ok bool) {
	m, hp, ok := matchKeys(contactURI)
	if !ok {
		return "", "", false
	}
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	var fallback *binding
	for _, b := range g.bindings {
		if !b.expires.After(now) {
			continue
		}
		if b.match == m {
			return b.transport, b.source, true
		}
		if b.hostport == hp && fallback == nil {
			fallback = b
		}
	}
	if fallback != nil {
		return fallback.transport, fallback.source, true
	}
	return "", "", false
}

// matchKeys returns "user@host:port" and "host:port" of a SIP URI, host
// lower-cased and the default port made explicit.
func matchKeys(s string) (match, hostport string, ok bool) {
	var u sip.Uri
	if err := sip.ParseUri(s, &u); err != nil || u.Host == "" {
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
	for k, b := range g.bindings {
		if !b.expires.After(now) {
			delete(g.bindings, k)
			g.log.Info().Str("contact", b.uri).Msg("binding expired")
		}
	}
}

// Restore re-stores every live binding with the current attachment, after
// a failover: same Call-ID, CSeq and expiry, a new Version, so the new
// entries supersede the old ones wherever they are merged.
func (g *Registrar) Restore(ctx context.Context) error {
	g.write.Lock()
	defer g.write.Unlock()
	now := g.cfg.Now()
	att := g.cfg.Attachment()
	rec := &record.Record{Kind: record.KindLocation, Name: g.aor}
	g.mu.Lock()
	live := make([]*binding, 0, len(g.bindings))
	for _, b := range g.bindings {
		if b.expires.After(now) {
			c := *b
			c.version = record.NextVersion(&record.Entry{Version: b.version}, now)
			live = append(live, &c)
			rec.Entries = append(rec.Entries, g.entry(&c, att))
		}
	}
	g.mu.Unlock()
	if len(live) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.StoreTimeout)
	defer cancel()
	if err := g.cfg.Store.Put(ctx, rec); err != nil {
		return fmt.Errorf("localsip: restore %d bindings: %w", len(live), err)
	}
	g.mu.Lock()
	for _, b := range live {
		if cur := g.bindings[b.key]; cur != nil && cur.callID == b.callID && cur.cseq == b.cseq {
			cur.version = b.version
		}
	}
	g.mu.Unlock()
	g.log.Info().Int("bindings", len(live)).Str("sp_id", att.SP.Short()).Msg("bindings re-stored")
	return nil
}

// entry is the location entry for a live binding.
func (g *Registrar) entry(b *binding, att Attachment) record.Entry {
	return record.Entry{
		Key: b.key, CallID: b.callID, CSeq: b.cseq, Version: b.version,
		Expires: b.expires.Unix(), Writer: g.cfg.User,
		Contact: &record.Contact{
			URI: b.uri, PeerID: g.cfg.Self, SP: att.SP, SPAddr: att.SPAddr, Relay: att.Relay,
			Instance: b.instance, RegID: b.regID, Q: b.q,
		},
	}
}
