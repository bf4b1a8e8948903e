package localsip_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/e2e/harness/phone"
)

func contactsOf(res *sip.Response) []string {
	var out []string
	for _, h := range res.GetHeaders("Contact") {
		out = append(out, h.Value())
	}
	return out
}

func TestRegister(t *testing.T) {
	o := newOverlay()
	a := o.startAgent(t, "alice", newPeerID())
	p := newPhone(t, "alice", "alice", a, false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("ok lists bindings", func(t *testing.T) {
		res, err := p.Register(ctx, 600)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("register: %v %v", res, err)
		}
		cs := contactsOf(res)
		if len(cs) != 1 || !strings.Contains(cs[0], p.Contact.Address.String()) || !strings.Contains(cs[0], "expires=") {
			t.Errorf("200 contacts = %q", cs)
		}
		if res.GetHeader("Date") == nil {
			t.Error("200 without Date")
		}
		rec, err := o.get("sip:alice@example.net")
		if err != nil || len(rec.Entries) != 1 {
			t.Fatalf("stored record %v %v", rec, err)
		}
		c := rec.Entries[0].Contact
		if c.PeerID != a.id || c.SP != a.sp || c.SPAddr == "" || c.Q != 1000 || c.URI != p.Contact.Address.String() {
			t.Errorf("stored contact %+v", c)
		}
		if tp, addr, ok := a.reg.Flow(c.URI); !ok || tp != "UDP" || addr != p.Addr {
			t.Errorf("Flow = %s %s %v, want UDP %s", tp, addr, ok, p.Addr)
		}
	})

	t.Run("query without contact", func(t *testing.T) {
		req := p.NextRegister()
		res, err := p.Do(ctx, req)
		if err != nil || res.StatusCode != 200 || len(contactsOf(res)) != 1 {
			t.Fatalf("query: %v %v", res, err)
		}
	})

	t.Run("interval too brief", func(t *testing.T) {
		res, err := p.Register(ctx, 10)
		if err != nil || res.StatusCode != 423 {
			t.Fatalf("register expires 10: %v %v", res, err)
		}
		if h := res.GetHeader("Min-Expires"); h == nil || h.Value() != "60" {
			t.Errorf("Min-Expires = %v", h)
		}
	})

	t.Run("out of order cseq", func(t *testing.T) {
		req := p.NewRegister(p.RegisterCallID(), 1) // below the CSeqs already used
		req.AppendHeader(p.Contact.Clone())
		res, err := p.Do(ctx, req)
		if err != nil || res.StatusCode != 500 {
			t.Fatalf("stale CSeq: %v %v", res, err)
		}
	})

	t.Run("other user's aor", func(t *testing.T) {
		mallory := newPhone(t, "mallory", "bob", a, false)
		res, err := mallory.Register(ctx, 600)
		if err != nil || res.StatusCode != 403 {
			t.Fatalf("register bob at alice's agent: %v %v", res, err)
		}
		if _, err := o.get("sip:bob@example.net"); err == nil {
			t.Error("a record for bob was stored")
		}
	})

	t.Run("bad wildcard", func(t *testing.T) {
		for name, hdrs := range map[string][]sip.Header{
			"without expires": nil,
			"with contact":    {p.Contact.Clone(), sip.NewHeader("Expires", "0")},
			"nonzero expires": {sip.NewHeader("Expires", "60")},
		} {
			req := p.NextRegister()
			req.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Wildcard: true}})
			for _, h := range hdrs {
				req.AppendHeader(h)
			}
			res, err := p.Do(ctx, req)
			if err != nil || res.StatusCode != 400 {
				t.Errorf("%s: %v %v", name, res, err)
			}
		}
	})

	t.Run("store down", func(t *testing.T) {
		o.failPut.Store(true)
		defer o.failPut.Store(false)
		res, err := p.Register(ctx, 600)
		if err != nil || res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
			t.Fatalf("register with the overlay down: %v %v", res, err)
		}
	})

	t.Run("restore with new attachment", func(t *testing.T) {
		before, _ := o.get("sip:alice@example.net")
		if err := a.reg.Restore(ctx); err != nil {
			t.Fatal(err)
		}
		after, _ := o.get("sip:alice@example.net")
		if len(after.Entries) != 1 || after.Entries[0].Version <= before.Entries[0].Version ||
			after.Entries[0].CSeq != before.Entries[0].CSeq || after.Entries[0].CallID != before.Entries[0].CallID {
			t.Errorf("restore: before %+v after %+v", before.Entries, after.Entries)
		}
	})

	t.Run("wildcard removes", func(t *testing.T) {
		req := p.NextRegister()
		req.AppendHeader(&sip.ContactHeader{Address: sip.Uri{Wildcard: true}})
		req.AppendHeader(sip.NewHeader("Expires", "0"))
		res, err := p.Do(ctx, req)
		if err != nil || res.StatusCode != 200 || len(contactsOf(res)) != 0 {
			t.Fatalf("remove all: %v %v", res, err)
		}
		if a.reg.Bindings() != 0 {
			t.Errorf("%d bindings left", a.reg.Bindings())
		}
		o.mu.Lock()
		rec := o.records["sip:alice@example.net"].Clone()
		o.mu.Unlock()
		if len(rec.Entries) != 1 || !rec.Entries[0].Removed || rec.Entries[0].Expires < time.Now().Unix() {
			t.Errorf("want one live tombstone, got %+v", rec.Entries)
		}
		if _, _, ok := a.reg.Flow(p.Contact.Address.String()); ok {
			t.Error("Flow still knows the removed phone")
		}
	})

	t.Run("register again after removal", func(t *testing.T) {
		phone.MustRegister(t, p)
		if a.reg.Bindings() != 1 {
			t.Errorf("%d bindings", a.reg.Bindings())
		}
	})

	t.Run("expires 0 removes one", func(t *testing.T) {
		res, err := p.Register(ctx, 0)
		if err != nil || res.StatusCode != 200 || len(contactsOf(res)) != 0 || a.reg.Bindings() != 0 {
			t.Fatalf("de-register: %v %v (bindings %d)", res, err, a.reg.Bindings())
		}
	})
}

// TestRegisterInstance: +sip.instance keys the binding, q and reg-id are
// stored.
func TestRegisterInstance(t *testing.T) {
	o := newOverlay()
	a := o.startAgent(t, "alice", newPeerID())
	p := newPhone(t, "alice", "alice", a, true)
	p.Contact.Params = sip.NewParams()
	p.Contact.Params.Add("+sip.instance", `"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"`)
	p.Contact.Params.Add("reg-id", "1")
	p.Contact.Params.Add("q", "0.5")
	phone.MustRegister(t, p)
	rec, err := o.get("sip:alice@example.net")
	if err != nil || len(rec.Entries) != 1 {
		t.Fatal(rec, err)
	}
	e := rec.Entries[0]
	if e.Key != "<urn:uuid:00000000-0000-1000-8000-000a95a0e128>" || e.Contact.RegID != 1 || e.Contact.Q != 500 {
		t.Errorf("entry %+v contact %+v", e, e.Contact)
	}
	if e.Key != record.EntryKey(record.KindLocation, &e) {
		t.Errorf("key %q is not EntryKey", e.Key)
	}
	if tp, _, ok := a.reg.Flow(p.Contact.Address.String()); !ok || tp != "TCP" {
		t.Errorf("Flow = %s %v", tp, ok)
	}
}
