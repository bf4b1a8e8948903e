// Package admin is the super peer's operator HTTP interface
// (ARCHITECTURE.md §9): health and readiness probes, Prometheus metrics and
// a small JSON API (/v1/status, /v1/members, /v1/records/{aor}, and
// /v1/overview for the live status page served at /).
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/p2psip/p2psip/common/logx"
	"github.com/p2psip/p2psip/common/record"
	"github.com/p2psip/p2psip/common/wire"
)

// Source is what the admin API shows; the super peer implements it.
type Source interface {
	// Serving reports whether the node serves (listening and joined).
	Serving() bool
	// Status is the node's own summary (JSON-encodable).
	Status() any
	// Members is the mesh as this node sees it (JSON-encodable).
	Members() any
	// Peers lists the sessions: attached agents, clients, super-peer links.
	Peers() any
	// Location fetches an AoR's location record through the store.
	Location(ctx context.Context, aor string) (*record.Record, error)
	// MeshDetail is what the status page adds: recent membership changes
	// and the super peers this node is linked to.
	MeshDetail() MeshDetail
}

// Config configures the server.
type Config struct {
	// Listener is the bound listener (required); Run closes it.
	Listener net.Listener
	Gatherer prometheus.Gatherer
	Source   Source
}

// Server serves the admin API.
type Server struct {
	cfg Config
	log zerolog.Logger
	srv *http.Server
}

// New builds the server.
func New(cfg Config, log zerolog.Logger) (*Server, error) {
	if cfg.Listener == nil || cfg.Source == nil {
		return nil, errors.New("admin: Listener and Source are required")
	}
	s := &Server{cfg: cfg, log: logx.Component(log, "admin")}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) }) //nolint:errcheck
	mux.HandleFunc("GET /readyz", s.readyz)
	if cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, cfg.Source.Status()) })
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, cfg.Source.Members()) })
	mux.HandleFunc("GET /v1/peers", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, cfg.Source.Peers()) })
	mux.HandleFunc("GET /v1/records/{aor}", s.records)
	mux.HandleFunc("GET /v1/overview", s.overview)
	mux.HandleFunc("GET /{$}", servePage)
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      15 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	return s, nil
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.cfg.Listener) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.srv.Shutdown(sctx) //nolint:errcheck // closing anyway
	<-errc
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Source.Serving() {
		w.Write([]byte("ready\n")) //nolint:errcheck
		return
	}
	http.Error(w, "not ready", http.StatusServiceUnavailable)
}

func (s *Server) records(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	rec, err := s.cfg.Source.Location(ctx, r.PathValue("aor"))
	if err != nil {
		code := http.StatusInternalServerError
		switch wire.CodeOf(err) {
		case wire.CodeNotFound:
			code = http.StatusNotFound
		case wire.CodeBadRequest:
			code = http.StatusBadRequest
		case wire.CodeUnavailable, wire.CodeNoQuorum:
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v) //nolint:errcheck // the client went away
}
