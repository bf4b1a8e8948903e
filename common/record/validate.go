package record

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/p2psip/p2psip/common/ids"
)

// EntryKey returns the Key an entry of the given kind should carry given its
// payload: location → Contact.Instance if set, else Contact.URI (RFC 5626: one
// binding per instance, else per contact URI); service → the provider's
// Peer-ID hex; peer → PeerKey. It returns "" when the payload the kind needs
// is missing and for unknown kinds.
func EntryKey(kind Kind, e *Entry) string {
	switch kind {
	case KindLocation:
		if e.Contact == nil {
			return ""
		}
		if e.Contact.Instance != "" {
			return e.Contact.Instance
		}
		return e.Contact.URI
	case KindService:
		if e.Provider == nil {
			return ""
		}
		return e.Provider.PeerID.String()
	case KindPeer:
		return PeerKey
	}
	return ""
}

// Validate enforces the model on a record from any source: a known kind; a
// canonical Name (location: a normalized AoR; service: 1..64 of [a-z0-9._-];
// peer: lower-case Peer-ID hex); at most MaxEntries entries; in each entry
// the payload its kind needs and no other (a tombstone may carry none), a
// Key consistent with that payload (EntryKey), bounded strings free of CR,
// LF and NUL (they would let a stored value inject SIP header lines) and
// valid UTF-8, and Q <= 1000. The error wraps ErrInvalid and names the
// offending field. Entry order is not checked; Normalize fixes it.
func (r *Record) Validate() error {
	if r == nil {
		return invalid("record", "nil")
	}
	var peer ids.PeerID
	switch r.Kind {
	case KindLocation:
		if n, err := ids.NormalizeAOR(r.Name); err != nil || n != r.Name {
			return invalid("name", "location name %q is not a normalized AoR", clip(r.Name))
		}
	case KindService:
		if err := checkServiceName(r.Name); err != nil {
			return invalid("name", "service name %q: %v", clip(r.Name), err)
		}
	case KindPeer:
		p, err := ids.ParsePeerID(r.Name)
		if err != nil || p.String() != r.Name {
			return invalid("name", "peer name %q is not a lower-case peer id", clip(r.Name))
		}
		peer = p
	default:
		return invalid("kind", "unknown kind %d", uint8(r.Kind))
	}
	if len(r.Entries) > MaxEntries {
		return invalid("entries", "%d entries, limit %d", len(r.Entries), MaxEntries)
	}
	for i := range r.Entries {
		if err := validateEntry(fmt.Sprintf("entries[%d].", i), r.Kind, peer, &r.Entries[i]); err != nil {
			return err
		}
	}
	return nil
}

// invalid builds the error Validate returns: field, then reason, then the
// sentinel.
func invalid(field, format string, args ...any) error {
	return fmt.Errorf("validate record: %s: %s: %w", field, fmt.Sprintf(format, args...), ErrInvalid)
}

// clip shortens a hostile value quoted in an error so that one bad record
// cannot put kilobytes into a log line.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// checkServiceName allows short lower-case labels, so a service name can be
// used as a metric label and in a DNS-like name without escaping.
func checkServiceName(s string) error {
	if s == "" || len(s) > maxServiceNameLen {
		return fmt.Errorf("want 1..%d characters", maxServiceNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("invalid character %q", c)
		}
	}
	return nil
}

// checkString bounds a string and rejects what could break the text
// protocols the value is copied into: CR and LF end a SIP header line, NUL
// truncates C consumers, and invalid UTF-8 the CBOR decoder would refuse.
func checkString(field, s string, maxLen int) error {
	if len(s) > maxLen {
		return invalid(field, "%d bytes, limit %d", len(s), maxLen)
	}
	if strings.ContainsAny(s, "\r\n\x00") {
		return invalid(field, "contains CR, LF or NUL")
	}
	if !utf8.ValidString(s) {
		return invalid(field, "not valid UTF-8")
	}
	return nil
}

// CheckURI reports whether Validate would accept s as a contact URI, so
// that a writer can refuse bad input as bad input before it builds a
// record the store would refuse.
func CheckURI(s string) error { return checkURI("uri", s) }

// CheckText reports whether Validate would accept s in a text field of at
// most max bytes (Call-ID, instance, ...).
func CheckText(s string, max int) error { return checkString("text", s, max) }

// checkURI is checkString plus what a URI cannot contain unescaped
// (RFC 3261 §25.1): controls, space, '<', '>' and '"'. The edge writes the
// URI between angle brackets, so a '>' would end it early.
func checkURI(field, s string) error {
	if s == "" {
		return invalid(field, "empty")
	}
	if err := checkString(field, s, MaxURILen); err != nil {
		return err
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f || c == '<' || c == '>' || c == '"' {
			return invalid(field, "invalid character %q", c)
		}
	}
	return nil
}

// validateEntry checks one entry of a record of kind k; peer is the record's
// Peer-ID for KindPeer. at prefixes field names in errors ("entries[3].").
func validateEntry(at string, k Kind, peer ids.PeerID, e *Entry) error {
	if e.Key == "" {
		return invalid(at+"key", "empty")
	}
	for _, f := range []struct {
		name string
		s    string
		max  int
	}{
		{"key", e.Key, MaxURILen},
		{"call_id", e.CallID, MaxFieldLen},
		{"writer", e.Writer, MaxFieldLen},
	} {
		if err := checkString(at+f.name, f.s, f.max); err != nil {
			return err
		}
	}
	var err error
	switch k {
	case KindLocation:
		err = validateLocation(at, e)
	case KindService:
		err = validateService(at, e)
	case KindPeer:
		err = validatePeer(at, peer, e)
	}
	return err
}

// checkPayloads requires the payload named want (unless the entry is a
// tombstone) and forbids the others.
func checkPayloads(at string, e *Entry, want string) error {
	for _, p := range []struct {
		name string
		set  bool
	}{{"contact", e.Contact != nil}, {"provider", e.Provider != nil}, {"peer", e.Peer != nil}} {
		switch {
		case p.name != want && p.set:
			return invalid(at+p.name, "payload not allowed in a %s record", wantKind(want))
		case p.name == want && !p.set && !e.Removed:
			return invalid(at+want, "missing (only a tombstone may omit it)")
		}
	}
	return nil
}

// wantKind names the kind whose payload is called p, for error text.
func wantKind(p string) string {
	switch p {
	case "contact":
		return KindLocation.String()
	case "provider":
		return KindService.String()
	}
	return KindPeer.String()
}

func validateLocation(at string, e *Entry) error {
	if err := checkPayloads(at, e, "contact"); err != nil {
		return err
	}
	c := e.Contact
	if c == nil {
		return nil // tombstone without payload: any clean key will do
	}
	if err := checkURI(at+"contact.uri", c.URI); err != nil {
		return err
	}
	for _, f := range []struct{ name, s string }{
		{"contact.sp_addr", c.SPAddr},
		{"contact.relay", c.Relay},
		{"contact.instance", c.Instance},
		{"contact.flow", c.Flow},
	} {
		if err := checkString(at+f.name, f.s, MaxFieldLen); err != nil {
			return err
		}
	}
	if c.Q > maxQ {
		return invalid(at+"contact.q", "%d, limit %d", c.Q, maxQ)
	}
	if want := EntryKey(KindLocation, e); e.Key != want {
		return invalid(at+"key", "%q, want %q (instance, else contact URI)", clip(e.Key), clip(want))
	}
	return nil
}

func validateService(at string, e *Entry) error {
	if err := checkPayloads(at, e, "provider"); err != nil {
		return err
	}
	p := e.Provider
	if p == nil {
		if id, err := ids.ParsePeerID(e.Key); err != nil || id.String() != e.Key {
			return invalid(at+"key", "%q is not a lower-case peer id", clip(e.Key))
		}
		return nil
	}
	if p.PeerID.IsZero() {
		return invalid(at+"provider.peer_id", "zero")
	}
	if len(p.Addrs) > maxAddrs {
		return invalid(at+"provider.addrs", "%d addresses, limit %d", len(p.Addrs), maxAddrs)
	}
	for i, a := range p.Addrs {
		field := fmt.Sprintf("provider.addrs[%d]", i)
		if a == "" {
			return invalid(at+field, "empty")
		}
		if err := checkString(at+field, a, MaxFieldLen); err != nil {
			return err
		}
	}
	if want := EntryKey(KindService, e); e.Key != want {
		return invalid(at+"key", "%q, want provider peer id %q", clip(e.Key), want)
	}
	return nil
}

func validatePeer(at string, peer ids.PeerID, e *Entry) error {
	if err := checkPayloads(at, e, "peer"); err != nil {
		return err
	}
	if e.Key != PeerKey {
		return invalid(at+"key", "%q, want %q", clip(e.Key), PeerKey)
	}
	p := e.Peer
	if p == nil {
		return nil
	}
	if p.PeerID != peer {
		return invalid(at+"peer.peer_id", "%s, want the record's %s", p.PeerID, peer)
	}
	for _, f := range []struct{ name, s string }{
		{"peer.sp_addr", p.SPAddr},
		{"peer.relay", p.Relay},
		{"peer.reflexive", p.Reflexive},
		{"peer.nat", p.NAT},
	} {
		if err := checkString(at+f.name, f.s, MaxFieldLen); err != nil {
			return err
		}
	}
	return nil
}
