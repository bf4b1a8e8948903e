package registrar

import (
	"context"
	"errors"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
)

// regError is a REGISTER refused with a status (and maybe extra headers).
type regError struct {
	code   int
	reason string
	hdrs   []sip.Header
}

func (e *regError) Error() string { return strconv.Itoa(e.code) + " " + e.reason }

func refuse(code int, reason string, hdrs ...sip.Header) *regError {
	return &regError{code: code, reason: reason, hdrs: hdrs}
}

// update is one contact of a REGISTER, parsed and checked.
type update struct {
	b       binding       // the binding as it will be (expires zero: removal)
	exp     time.Duration // 0 removes
	prev    *binding      // current local binding for the key, if any
	removed *record.Entry // for a removal without local binding: the stored entry
}

// HandleRegister is the REGISTER handler (siproute.Config.Register),
// following RFC 3261 §10.3: the AoR must be sip:User@Overlay (fixed user)
// or, with Authorize, in the overlay and owned by the user Authorize
// authenticated (else 403; Authorize's own refusal, e.g. a 401 challenge,
// is sent as it is); a REGISTER without Contact is a query; "*" with
// Expires: 0 removes every binding this node holds for the AoR; each
// contact's expiry is its expires parameter, else the Expires header, else
// DefaultExpires, and must be 0 or at least MinExpires (else 423), clamped
// to MaxExpires; a Call-ID already bound with a CSeq not lower than the
// request's is refused (500). The result is written to the overlay (503
// with Retry-After when that fails) and the 200 lists every live contact
// of the AoR. Nothing is written for a refused request.
func (g *Registrar) HandleRegister(req *sip.Request, tx sip.ServerTransaction) {
	res := g.handle(req)
	if err := tx.Respond(res); err != nil {
		g.log.Debug().Err(err).Msg("register response not sent")
	}
}

func (g *Registrar) handle(req *sip.Request) *sip.Response {
	aor, err := g.checkAOR(req)
	user := g.cfg.User
	if err == nil && g.cfg.Authorize != nil {
		u, refusal := g.cfg.Authorize(req, aor)
		switch {
		case refusal != nil:
			g.stats.unauthorized.Add(1)
			g.log.Debug().Int("code", refusal.StatusCode).Str("aor", aor).Str("call_id", callID(req)).Msg("register not authorized")
			return refusal
		case u == "" || ids.AORUser(aor) != u:
			// Per-message lines are debug (sampled): a stranger's flood of
			// bad REGISTERs shows in the counters, not as a flood of lines.
			g.log.Debug().Str("aor", aor).Str("user", u).Str("call_id", callID(req)).Msg("register for another user's aor refused")
			err = refuse(403, "Forbidden")
		}
		user = u
	}
	var res *sip.Response
	if err == nil {
		res, err = g.submit(req, aor, user)
	}
	if err != nil {
		var re *regError
		if !errors.As(err, &re) {
			re = refuse(500, "Server Internal Error")
		}
		g.stats.refused.Add(1)
		g.log.Debug().Int("code", re.code).Str("reason", re.reason).Str("aor", aor).Str("call_id", callID(req)).Msg("register refused")
		res = sip.NewResponseFromRequest(req, re.code, re.reason, nil)
		for _, h := range re.hdrs {
			res.AppendHeader(h)
		}
	}
	return res
}

// updatesOf checks a REGISTER against the bindings as v has them and
// returns its updates (none for a query); the AoR's lock is held.
func (g *Registrar) updatesOf(ctx context.Context, req *sip.Request, v *view, user string) ([]update, error) {
	cid, cseq := req.CallID(), req.CSeq()
	if cid == nil || cseq == nil || cseq.MethodName != sip.REGISTER {
		return nil, refuse(400, "Missing Call-ID or CSeq")
	}
	if record.CheckText(cid.Value(), record.MaxFieldLen) != nil {
		return nil, refuse(400, "Bad Call-ID") // it is stored with the bindings
	}
	contacts, wildcard, err := contactsOf(req)
	if err != nil {
		return nil, err
	}
	hdrExp, hasHdrExp, err := expiresHeader(req)
	if err != nil {
		return nil, err
	}
	switch {
	case wildcard:
		if len(contacts) != 1 || !hasHdrExp || hdrExp != 0 {
			return nil, refuse(400, "Wildcard Contact Needs Expires: 0 Alone")
		}
		return g.removeAll(ctx, v, user, cid.Value(), cseq.SeqNo)
	case len(contacts) > 0:
		return g.updates(ctx, req, v, user, contacts, hdrExp, hasHdrExp)
	}
	return nil, nil
}

// checkAOR returns the normalized AoR of the To URI: this agent's user in
// the overlay (fixed user), or any AoR of the overlay.
func (g *Registrar) checkAOR(req *sip.Request) (string, error) {
	to := req.To()
	if to == nil {
		return "", refuse(400, "Missing To")
	}
	if hasControl(to.Value()) || hasControl(req.Recipient.String()) {
		return "", refuse(400, "Bad Request")
	}
	if to.Address.Scheme != "sip" && to.Address.Scheme != "sips" && to.Address.Scheme != "" {
		return "", refuse(400, "Not a SIP AoR")
	}
	aor, err := ids.NormalizeAOR("sip:" + to.Address.User + "@" + to.Address.Host)
	if err != nil {
		return "", refuse(400, "Bad AoR")
	}
	switch {
	case g.aor != "" && aor != g.aor:
		return aor, refuse(403, "Forbidden")
	case !strings.EqualFold(ids.AORHost(aor), g.cfg.Overlay):
		return aor, refuse(403, "Not Our Domain")
	}
	return aor, nil
}

// contactsOf returns the Contact values; wildcard reports a "*" among them.
func contactsOf(req *sip.Request) ([]*sip.ContactHeader, bool, error) {
	var out []*sip.ContactHeader
	wildcard := false
	for _, h := range req.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok {
			return nil, false, refuse(400, "Bad Contact")
		}
		wildcard = wildcard || c.Address.Wildcard
		out = append(out, c)
	}
	return out, wildcard, nil
}

// expiresHeader parses the Expires header (delta-seconds).
func expiresHeader(req *sip.Request) (time.Duration, bool, error) {
	h := req.GetHeader("Expires")
	if h == nil {
		return 0, false, nil
	}
	n, err := strconv.ParseUint(strings.TrimSpace(h.Value()), 10, 32)
	if err != nil {
		return 0, false, refuse(400, "Bad Expires")
	}
	return time.Duration(n) * time.Second, true, nil
}

// updates turns the Contact list into binding updates, refusing the whole
// request on the first bad contact (nothing is written then).
func (g *Registrar) updates(ctx context.Context, req *sip.Request, v *view, user string, contacts []*sip.ContactHeader,
	hdrExp time.Duration, hasHdrExp bool) ([]update, error) {
	aor, now := v.aor, v.now
	callID, cseq := req.CallID().Value(), req.CSeq().SeqNo
	var stored *record.Record // fetched at most once, for removals we hold no binding for
	ups := make([]update, 0, len(contacts))
	added := 0
	for _, c := range contacts {
		u, err := g.parseContact(c, hdrExp, hasHdrExp)
		if err != nil {
			return nil, err
		}
		u.b.aor, u.b.user, u.b.callID, u.b.cseq = aor, user, callID, cseq
		u.b.transport, u.b.source = req.Transport(), req.Source()
		u.prev = v.current(u.b.key)
		if p := u.prev; p != nil && p.callID == callID && cseq <= p.cseq {
			return nil, refuse(500, "Out of Order CSeq")
		}
		if u.exp > 0 {
			u.b.expires = now.Add(u.exp)
			if u.prev == nil {
				added++
			}
		} else if u.prev == nil {
			if v.touched(u.b.key) {
				continue // removed earlier in the batch
			}
			if stored == nil {
				stored = g.fetch(ctx, aor)
			}
			if e := findLive(stored, u.b.key, now); e != nil {
				u.removed = e
			} else {
				continue // nothing bound: nothing to remove
			}
		}
		ups = append(ups, u)
	}
	if v.count()+added > g.cfg.MaxBindings {
		return nil, refuse(403, "Too Many Bindings")
	}
	return ups, nil
}

// parseContact reads one Contact value.
func (g *Registrar) parseContact(c *sip.ContactHeader, hdrExp time.Duration, hasHdrExp bool) (update, error) {
	var u update
	uri := c.Address.String()
	if record.CheckURI(uri) != nil {
		return u, refuse(400, "Bad Contact URI")
	}
	m, hp, ok := uriKeys(&c.Address) // as matchKeys(uri), without parsing it again
	if !ok {
		return u, refuse(400, "Bad Contact URI")
	}
	if strings.EqualFold(c.Address.Host, g.cfg.Overlay) {
		// A contact in the overlay's own domain would make this node
		// deliver requests for other AoRs (matched by Flow) to the phone.
		return u, refuse(403, "Contact In Overlay Domain")
	}
	u.b.uri, u.b.match, u.b.hostport = uri, m, hp
	switch v, ok := c.Params.Get("expires"); {
	case ok:
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
		if err != nil {
			return u, refuse(400, "Bad Contact Expires")
		}
		u.exp = time.Duration(n) * time.Second
	case hasHdrExp:
		u.exp = hdrExp
	default:
		u.exp = g.cfg.DefaultExpires
	}
	if u.exp > 0 && u.exp < g.cfg.MinExpires {
		return u, refuse(423, "Interval Too Brief",
			sip.NewHeader("Min-Expires", strconv.Itoa(int(g.cfg.MinExpires/time.Second))))
	}
	u.exp = min(u.exp, g.cfg.MaxExpires)
	if v, ok := c.Params.Get("+sip.instance"); ok {
		u.b.instance = strings.Trim(v, `"`)
		if u.b.instance == "" || record.CheckText(u.b.instance, record.MaxFieldLen) != nil {
			return u, refuse(400, "Bad +sip.instance")
		}
	}
	if v, ok := c.Params.Get("reg-id"); ok {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return u, refuse(400, "Bad reg-id")
		}
		u.b.regID = uint32(n)
	}
	u.b.q = 1000
	if v, ok := c.Params.Get("q"); ok {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || f > 1 {
			return u, refuse(400, "Bad q")
		}
		u.b.q = uint16(math.Round(f * 1000))
	}
	u.b.key = u.b.uri
	if u.b.instance != "" {
		u.b.key = u.b.instance
	}
	return u, nil
}

// removeAll handles "Contact: *": every binding this node holds for the
// AoR, including ones stored by an earlier run of it that the table no
// longer knows. Bindings of the same user at other nodes are theirs.
func (g *Registrar) removeAll(ctx context.Context, v *view, user, callID string, cseq uint32) ([]update, error) {
	aor, now := v.aor, v.now
	var ups []update
	for _, b := range v.live() {
		if b.callID == callID && cseq <= b.cseq {
			return nil, refuse(500, "Out of Order CSeq")
		}
		ups = append(ups, update{b: binding{aor: aor, user: user, key: b.key, uri: b.uri, callID: callID, cseq: cseq}, prev: b})
	}
	if rec := g.fetch(ctx, aor); rec != nil {
		for i := range rec.Entries {
			e := &rec.Entries[i]
			// Keys the batch touched are held or removed already.
			if e.Removed || e.Contact == nil || !g.ours(e.Contact) || v.touched(e.Key) || v.current(e.Key) != nil || e.Expires <= now.Unix() {
				continue
			}
			ups = append(ups, update{b: binding{aor: aor, user: user, key: e.Key, uri: e.Contact.URI, callID: callID, cseq: cseq}, removed: e})
		}
	}
	return ups, nil
}

// apply writes the updates to the overlay, then to the table, in one
// write. ups are in the order they were made: a later update of a key
// (from a later REGISTER of a batch) supersedes an earlier one, with a
// higher version. It returns the AoR's live record after the write when
// the store can tell.
func (g *Registrar) apply(ctx context.Context, aor, user string, ups []update, now time.Time) (*record.Record, error) {
	att := g.cfg.Attachment()
	rec := &record.Record{Kind: record.KindLocation, Name: aor, Entries: make([]record.Entry, 0, len(ups))}
	// written is, per key the batch writes: its entry in rec, its last
	// version, and the latest expiry a tombstone for it must outlive.
	type written struct {
		idx     int
		version uint64
		outlive int64
	}
	var keys map[string]written
	if len(ups) > 1 {
		keys = make(map[string]written, len(ups))
	}
	for i := range ups {
		u := &ups[i]
		var prev uint64
		// A tombstone must outlive the registration it removes, so that a
		// late copy of it cannot come back (record.Entry.Removed).
		outlive := now.Unix() + 1
		if u.prev != nil {
			prev = u.prev.version
			outlive = max(outlive, u.prev.expires.Unix())
		}
		if u.removed != nil {
			prev = max(prev, u.removed.Version)
			outlive = max(outlive, u.removed.Expires)
		}
		w, again := keys[u.b.key]
		if again {
			prev = max(prev, w.version)
			outlive = max(outlive, w.outlive)
		}
		u.b.version = record.NextVersion(&record.Entry{Version: prev}, now)
		var e record.Entry
		if u.exp > 0 {
			e = g.entry(&u.b, att)
			outlive = max(outlive, u.b.expires.Unix())
		} else {
			e = record.Entry{
				Key: u.b.key, CallID: u.b.callID, CSeq: u.b.cseq, Version: u.b.version,
				Expires: outlive, Removed: true, Writer: user,
			}
		}
		if again {
			rec.Entries[w.idx] = e
		} else {
			w.idx = len(rec.Entries)
			rec.Entries = append(rec.Entries, e)
		}
		if keys != nil {
			keys[u.b.key] = written{idx: w.idx, version: u.b.version, outlive: outlive}
		}
	}
	var state *record.Record
	var err error
	if sp, ok := g.cfg.Store.(StatePutter); ok {
		state, err = sp.PutState(ctx, user, rec)
	} else {
		err = g.cfg.Store.Put(ctx, user, rec)
	}
	if err != nil {
		g.stats.storeFailed.Add(1)
		g.log.Warn().Err(err).Str("aor", aor).Msg("location store failed")
		return nil, refuse(503, "Service Unavailable",
			sip.NewHeader("Retry-After", strconv.Itoa(int(g.cfg.RetryAfter/time.Second))))
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := range ups {
		u := &ups[i]
		if u.exp > 0 {
			b := u.b
			g.tab.put(&b)
			if u.prev == nil {
				g.log.Debug().Str("aor", aor).Str("contact", b.uri).Str("flow", b.flow()).Dur("expires", u.exp).Msg("binding added")
			}
			continue
		}
		if g.tab.del(aor, u.b.key) != nil {
			g.log.Debug().Str("aor", aor).Str("contact", u.b.uri).Msg("binding removed")
		}
	}
	return state, nil
}

// contact is one binding listed in a 200.
type contact struct {
	uri sip.Uri
	exp int64 // seconds left
}

// contactList is every live contact of the AoR as the overlay has it after
// a write (other nodes' too): state when the write returned it, else read;
// this node's own bindings when the read fails.
func (g *Registrar) contactList(ctx context.Context, aor string, state *record.Record, now time.Time) []contact {
	var list []contact
	add := func(uri string, exp int64) {
		c := contact{exp: max(exp, 0)}
		if err := sip.ParseUri(uri, &c.uri); err == nil {
			list = append(list, c)
		}
	}
	rec := state
	if rec == nil {
		rec = g.fetch(ctx, aor)
	}
	if rec != nil {
		for _, e := range rec.Live(now).Entries {
			if e.Contact != nil {
				add(e.Contact.URI, e.Expires-now.Unix())
			}
		}
		return list
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, b := range g.tab.byAOR[aor] {
		if b.expires.After(now) {
			add(b.uri, int64(b.expires.Sub(now)/time.Second))
		}
	}
	return list
}

// okResponse builds the 200 for req listing the contacts; date is the
// Date header's value.
func okResponse(req *sip.Request, list []contact, date string) *sip.Response {
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	for _, c := range list {
		h := &sip.ContactHeader{Address: c.uri, Params: sip.NewParams()}
		h.Params.Add("expires", strconv.FormatInt(c.exp, 10))
		res.AppendHeader(h)
	}
	res.AppendHeader(sip.NewHeader("Date", date))
	return res
}

// fetch reads the AoR's record; nil when it cannot (logged).
func (g *Registrar) fetch(ctx context.Context, aor string) *record.Record {
	rec, err := g.cfg.Store.Get(ctx, aor)
	if err != nil {
		g.log.Debug().Err(err).Str("aor", aor).Msg("location read failed")
		return nil
	}
	return rec
}

func findLive(rec *record.Record, key string, now time.Time) *record.Entry {
	if rec == nil {
		return nil
	}
	for i := range rec.Entries {
		if e := &rec.Entries[i]; e.Key == key && !e.Removed && e.Expires > now.Unix() {
			return e
		}
	}
	return nil
}

// current returns the live binding for key.
func (g *Registrar) current(aor, key string, now time.Time) *binding {
	g.mu.Lock()
	defer g.mu.Unlock()
	if b := g.tab.get(aor, key); b != nil && b.expires.After(now) {
		c := *b
		return &c
	}
	return nil
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return true
		}
	}
	return false
}

func callID(req *sip.Request) string {
	if h := req.CallID(); h != nil {
		return h.Value()
	}
	return ""
}
