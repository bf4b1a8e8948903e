package admin

import (
	_ "embed"
	"net/http"
	"sort"
	"sync"
	"time"
)

// The status page (GET /): one self-contained HTML document with inline
// CSS and JavaScript (no CDN, no external requests) that draws the overlay
// as this super peer sees it and refreshes itself every second from
// /v1/overview.
//
//go:embed page/index.html
var indexHTML []byte

// pageCSP allows the page's own inline style and script and fetches to this
// origin only; nothing may frame it.
const pageCSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; " +
	"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func servePage(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	// The page is embedded in the binary and tiny: revalidate each time so
	// an upgraded super peer never serves a stale page.
	h.Set("Cache-Control", "no-cache")
	w.Write(indexHTML) //nolint:errcheck // the client went away
}

// MeshDetail is what the status page needs beyond Status and Members.
type MeshDetail struct {
	// Events are the recent membership changes, oldest first.
	Events []MemberEvent `json:"events"`
	// Links are the Peer-IDs of the super peers this node holds a live
	// peer-protocol link to.
	Links []string `json:"links"`
}

// Overview is the /v1/overview document: one consistent poll for the
// status page.
type Overview struct {
	Time    time.Time     `json:"time"`
	Status  any           `json:"status"`
	Members any           `json:"members"`
	Events  []MemberEvent `json:"events"`
	Links   []string      `json:"links"`
}

func (s *Server) overview(w http.ResponseWriter, r *http.Request) {
	d := s.cfg.Source.MeshDetail()
	if d.Events == nil {
		d.Events = []MemberEvent{}
	}
	if d.Links == nil {
		d.Links = []string{}
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, Overview{
		Time: time.Now().UTC(), Status: s.cfg.Source.Status(), Members: s.cfg.Source.Members(),
		Events: d.Events, Links: d.Links,
	})
}

// Kinds of MemberEvent.
const (
	MemberJoined   = "joined"
	MemberDeparted = "departed"
)

// MemberEvent is one membership change seen by this node.
type MemberEvent struct {
	Time   time.Time `json:"time"`
	PeerID string    `json:"peer_id"`
	// Kind is MemberJoined or MemberDeparted (a crash and a graceful leave
	// look alike to the mesh).
	Kind string `json:"kind"`
	// Member is the member's last known mesh entry (JSON-encodable).
	Member any `json:"member,omitempty"`
}

// memberLogSize bounds the events kept.
const memberLogSize = 64

// MemberLog is a small ring buffer of membership changes for the status
// page: Observe is given each new view and records who joined and who
// departed since the previous one. The zero value is ready; it is safe for
// concurrent use.
type MemberLog struct {
	mu     sync.Mutex
	seen   bool
	last   map[string]any
	events []MemberEvent // ring: oldest at next once full
	next   int
}

// Observe records the changes between the previous view and members
// (Peer-ID to mesh entry). The first view is the baseline, not news.
func (l *MemberLog) Observe(now time.Time, members map[string]any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen {
		var news []MemberEvent
		for id, m := range l.last {
			if _, ok := members[id]; !ok {
				news = append(news, MemberEvent{Time: now, PeerID: id, Kind: MemberDeparted, Member: m})
			}
		}
		for id, m := range members {
			if _, ok := l.last[id]; !ok {
				news = append(news, MemberEvent{Time: now, PeerID: id, Kind: MemberJoined, Member: m})
			}
		}
		sort.Slice(news, func(i, j int) bool {
			if news[i].Kind != news[j].Kind {
				return news[i].Kind == MemberDeparted
			}
			return news[i].PeerID < news[j].PeerID
		})
		for _, e := range news {
			l.add(e)
		}
	}
	l.seen = true
	l.last = make(map[string]any, len(members))
	for id, m := range members {
		l.last[id] = m
	}
}

func (l *MemberLog) add(e MemberEvent) {
	if len(l.events) < memberLogSize {
		l.events = append(l.events, e)
		return
	}
	l.events[l.next] = e
	l.next = (l.next + 1) % memberLogSize
}

// Events returns the recorded changes, oldest first.
func (l *MemberLog) Events() []MemberEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]MemberEvent, 0, len(l.events))
	out = append(out, l.events[l.next:]...)
	return append(out, l.events[:l.next]...)
}
