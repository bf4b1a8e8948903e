package store

import (
	"slices"

	"github.com/p2psip/p2psip/common/ids"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
)

// authorize applies the access rules of ARCHITECTURE.md §3 to a write.
func (s *Store) authorize(w Writer, rec *record.Record) error {
	switch rec.Kind {
	case record.KindLocation:
		if ids.AORHost(rec.Name) != s.cfg.Overlay {
			return wire.Errorf(wire.CodeForbidden, "%s is not in overlay %s", rec.Name, s.cfg.Overlay)
		}
		if w.User == "" || rec.Owner() != w.User {
			return wire.Errorf(wire.CodeForbidden, "user %q may not write the location of %s", w.User, rec.Name)
		}
	case record.KindService:
		if w.SuperPeer {
			return nil
		}
		if !slices.Contains(s.cfg.Publishers[rec.Name], w.User) {
			return wire.Errorf(wire.CodeForbidden, "user %q may not publish service %q", w.User, rec.Name)
		}
		for _, e := range rec.Entries {
			if e.Key != w.PeerID.String() {
				return wire.Errorf(wire.CodeForbidden, "a provider entry must name the publisher's own Peer-ID")
			}
		}
	case record.KindPeer:
		if !w.SuperPeer && rec.Name != w.PeerID.String() {
			return wire.Errorf(wire.CodeForbidden, "a peer record may only be written by that peer")
		}
	default:
		return wire.Errorf(wire.CodeBadRequest, "unknown record kind %d", rec.Kind)
	}
	return nil
}

// checkContactPeers applies to the entries a write stores (not to a
// removal, which may take out any contact of the owner's AoR): a contact
// that names a Peer-ID routes calls, and the TURN fallback's datagrams, to
// that peer, so only the peer itself may write one (edge contacts name
// none).
func checkContactPeers(w Writer, rec *record.Record) error {
	if rec.Kind != record.KindLocation || w.SuperPeer {
		return nil
	}
	for _, e := range rec.Entries {
		if c := e.Contact; c != nil && !e.Removed && !c.PeerID.IsZero() && c.PeerID != w.PeerID {
			return wire.Errorf(wire.CodeForbidden, "contact %q names Peer-ID %s, not the writer's own", c.URI, c.PeerID.Short())
		}
	}
	return nil
}

// checkStamps is the replica-side rule that holds for every record however
// it arrives (write, hand-off, repair): live location entries were written
// by the AoR's owner. A coordinator bug or a confused peer cannot plant
// someone else's contacts.
func checkStamps(rec *record.Record) error {
	if rec.Kind != record.KindLocation {
		return nil
	}
	owner := rec.Owner()
	for _, e := range rec.Entries {
		if e.Writer != owner {
			return wire.Errorf(wire.CodeForbidden, "entry %q of %s written by %q, not its owner", e.Key, rec.Name, e.Writer)
		}
	}
	return nil
}

// applyLocal validates rec as a replica must and merges it locally.
func (s *Store) applyLocal(rec *record.Record, writer string, writerPeer ids.PeerID) (bool, error) {
	if err := rec.Validate(); err != nil {
		return false, wire.Errorf(wire.CodeBadRequest, "%v", err)
	}
	if writer != "" {
		w := Writer{User: writer, PeerID: writerPeer}
		if len(writer) > 3 && writer[:3] == "sp:" {
			w = Writer{PeerID: writerPeer, SuperPeer: true}
		}
		if err := s.authorize(w, rec); err != nil {
			return false, err
		}
		if err := checkContactPeers(w, rec); err != nil {
			return false, err
		}
	}
	if err := checkStamps(rec); err != nil {
		return false, err
	}
	changed, err := s.local.merge(rec.ResourceID(), rec)
	if err != nil {
		return false, wire.Errorf(wire.CodeBadRequest, "%v", err)
	}
	return changed, nil
}

// HandleReplicate applies records sent by another super peer (a write it
// coordinates, a hand-off or a repair).
func (s *Store) HandleReplicate(from ids.PeerID, req *wire.ReplicateReq) (*wire.ReplicateResp, error) {
	if _, err := s.state(); err != nil {
		return nil, err
	}
	resp := &wire.ReplicateResp{}
	var firstErr error
	for i := range req.Records {
		rec := &req.Records[i]
		rec.Normalize()
		changed, err := s.applyLocal(rec, req.Writer, req.WriterPeer)
		if err != nil {
			s.log.Warn().Err(err).Str("sp_id", from.Short()).Str("resource_id", rec.ResourceID().Short()).Msg("replica refused record")
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if changed {
			resp.Applied++
		}
		if req.Echo {
			if cur := s.local.get(rec.ResourceID()); cur != nil {
				resp.Records = append(resp.Records, *cur)
			}
		}
	}
	// A single-record write reports its refusal; a batch applies what it can.
	if firstErr != nil && len(req.Records) == 1 {
		return nil, firstErr
	}
	return resp, nil
}

// HandleRead answers a coordinator's read with the local copy.
func (s *Store) HandleRead(req *wire.ReadReq) (*wire.FetchResp, error) {
	if _, err := s.state(); err != nil {
		return nil, err
	}
	rid, err := resourceOf(req.Kind, req.Name)
	if err != nil {
		return nil, err
	}
	return &wire.FetchResp{Record: s.local.get(rid)}, nil
}
