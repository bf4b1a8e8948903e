package admin

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeSource struct {
	log MemberLog
}

func (f *fakeSource) Serving() bool { return true }
func (f *fakeSource) Status() any {
	return map[string]any{"peer_id": "aabbccdd00", "overlay": "example.net", "attached": 2, "capacity": 10, "records": map[string]int{"location": 3}}
}
func (f *fakeSource) Members() any {
	return []map[string]any{{"peer_id": "aabbccdd00", "load": 2, "capacity": 10}}
}
func (f *fakeSource) Peers() any { return []any{} }
func (f *fakeSource) Location(ctx context.Context, aor string) (*record.Record, error) {
	return nil, wire.Errorf(wire.CodeNotFound, "no record for %s", aor)
}
func (f *fakeSource) MeshDetail() MeshDetail { return MeshDetail{Events: f.log.Events()} }

func start(t *testing.T, src Source) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Listener: l, Source: src, Gatherer: prometheus.NewRegistry()}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return "http://" + l.Addr().String()
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

func TestRoutes(t *testing.T) {
	src := &fakeSource{}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	src.log.Observe(t0, map[string]any{"aa": 1, "bb": 2})
	src.log.Observe(t0.Add(time.Second), map[string]any{"aa": 1})
	base := start(t, src)
	defer http.DefaultClient.CloseIdleConnections()

	for _, tc := range []struct {
		path, want string
		code       int
	}{
		{"/healthz", "ok", 200},
		{"/readyz", "ready", 200},
		{"/metrics", "", 200},
		{"/v1/status", `"overlay": "example.net"`, 200},
		{"/v1/members", `"capacity": 10`, 200},
		{"/v1/peers", "[]", 200},
		{"/v1/records/alice@example.net", "no record", 404},
		{"/nope", "", 404},
	} {
		res, body := get(t, base+tc.path)
		if res.StatusCode != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("GET %s: %d %q, want %d containing %q", tc.path, res.StatusCode, body, tc.code, tc.want)
		}
	}

	res, body := get(t, base+"/")
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	csp := res.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if res.Header.Get("Cache-Control") == "" || res.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("page headers: %v", res.Header)
	}
	if !strings.Contains(body, "v1/overview") {
		t.Error("page does not poll /v1/overview")
	}
	// Self-contained: nothing is loaded from elsewhere.
	local := strings.ReplaceAll(body, "http://www.w3.org/2000/svg", "") // a namespace, not a fetch
	for _, bad := range []string{"<script src", "<link", "https://", "http://", "@import", "url("} {
		if strings.Contains(local, bad) {
			t.Errorf("page refers to something outside it: %q", bad)
		}
	}

	res, body = get(t, base+"/v1/overview")
	if res.StatusCode != 200 || res.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("overview: %d %v", res.StatusCode, res.Header)
	}
	var ov struct {
		Status  map[string]any   `json:"status"`
		Members []map[string]any `json:"members"`
		Events  []MemberEvent    `json:"events"`
		Links   []string         `json:"links"`
	}
	if err := json.Unmarshal([]byte(body), &ov); err != nil {
		t.Fatal(err)
	}
	if ov.Status["overlay"] != "example.net" || len(ov.Members) != 1 || ov.Links == nil {
		t.Errorf("overview: %s", body)
	}
	if len(ov.Events) != 1 || ov.Events[0].PeerID != "bb" || ov.Events[0].Kind != MemberDeparted || !ov.Events[0].Time.Equal(t0.Add(time.Second)) {
		t.Errorf("overview events: %+v", ov.Events)
	}
}

func TestMemberLog(t *testing.T) {
	var l MemberLog
	now := time.Unix(1000, 0)
	l.Observe(now, map[string]any{"a": 1})
	if got := l.Events(); len(got) != 0 {
		t.Fatalf("baseline recorded events: %+v", got)
	}
	l.Observe(now, map[string]any{"a": 1, "b": 2, "c": 3})
	l.Observe(now, map[string]any{"a": 1, "c": 3, "d": 4})
	got := l.Events()
	want := []string{"joined b", "joined c", "departed b", "joined d"}
	if len(got) != len(want) {
		t.Fatalf("events %+v, want %v", got, want)
	}
	for i, e := range got {
		if e.Kind+" "+e.PeerID != want[i] {
			t.Errorf("event %d: %s %s, want %s", i, e.Kind, e.PeerID, want[i])
		}
	}
	if got[2].Member != 2 {
		t.Errorf("departed event keeps the last entry: %v", got[2].Member)
	}
	// The ring keeps the newest memberLogSize events, oldest first.
	for i := range memberLogSize + 5 {
		if i%2 == 0 {
			l.Observe(now.Add(time.Duration(i)*time.Second), map[string]any{"a": 1})
		} else {
			l.Observe(now.Add(time.Duration(i)*time.Second), map[string]any{"a": 1, "x": i})
		}
	}
	got = l.Events()
	if len(got) != memberLogSize {
		t.Fatalf("kept %d events, want %d", len(got), memberLogSize)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Time.Before(got[i-1].Time) {
			t.Fatalf("events out of order at %d: %v before %v", i, got[i].Time, got[i-1].Time)
		}
	}
	if last := got[len(got)-1]; !last.Time.Equal(now.Add(time.Duration(memberLogSize+4) * time.Second)) {
		t.Errorf("newest event at %v", last.Time)
	}
}
