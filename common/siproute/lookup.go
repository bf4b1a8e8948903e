package siproute

import (
	"fmt"

	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
)

// Contacts turns the result of fetching aor's location record into what a
// Locator returns: the live contacts, or ErrNotFound when the overlay has
// no record. Agents and the SIP edge both fetch through it.
func Contacts(aor string, rec *record.Record, err error) ([]record.Contact, error) {
	if err != nil {
		if wire.CodeOf(err) == wire.CodeNotFound {
			return nil, fmt.Errorf("%s: %w", aor, ErrNotFound)
		}
		return nil, err
	}
	var out []record.Contact
	for _, e := range rec.Entries {
		if !e.Removed && e.Contact != nil {
			out = append(out, *e.Contact)
		}
	}
	return out, nil
}
