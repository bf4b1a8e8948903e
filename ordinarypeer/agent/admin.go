package agent

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/p2psip/p2psip/common/ids"
)

// Status is the agent's /v1/status document.
type Status struct {
	PeerID       ids.PeerID `json:"peer_id"`
	User         string     `json:"user"`
	Overlay      string     `json:"overlay"`
	Attached     bool       `json:"attached"`
	SuperPeer    ids.PeerID `json:"super_peer"`
	SPAddr       string     `json:"super_peer_addr"`
	Failovers    int        `json:"failovers"`
	LastReattach string     `json:"last_reattach,omitempty"`
	Bindings     int        `json:"bindings"`
	NAT          any        `json:"nat,omitempty"`
	NATError     string     `json:"nat_error,omitempty"`
	SIP          any        `json:"sip"`
	// Relay is the TURN fallback: allocation and relayed vs overlay
	// message counts.
	Relay *RelayStatus `json:"relay,omitempty"`
	// Role is "ordinary" or "superpeer" (promoted); Promotion, with role
	// auto, says why not (yet) or where its super peer is.
	Role      string           `json:"role"`
	Promotion *PromotionStatus `json:"promotion,omitempty"`
}

// Status reports the agent's state.
func (a *Agent) Status() Status {
	att, ok := a.up.Attachment()
	st := Status{PeerID: a.self, User: a.user, Overlay: a.cfg.Overlay, Attached: ok,
		SuperPeer: att.SP, SPAddr: att.SPAddr, Failovers: a.up.Failovers()}
	if att.Reattach > 0 {
		st.LastReattach = att.Reattach.String()
	}
	if a.reg != nil {
		st.Bindings = a.reg.Bindings()
	}
	if res, err := a.nat.get(); res != nil {
		st.NAT = res
	} else {
		st.NATError = err
	}
	if a.router != nil {
		st.SIP = a.router.Stats()
	}
	var promo *PromotionStatus
	st.Role, promo = a.promo.status()
	if a.cfg.Role == "auto" {
		st.Promotion = promo
	}
	if a.send != nil {
		rs := a.send.status()
		st.Relay = &rs
	}
	return st
}

func (a *Agent) serveAdmin(ctx context.Context) error {
	l := a.cfg.AdminListener
	if l == nil {
		var err error
		if l, err = net.Listen("tcp", a.cfg.Admin); err != nil {
			return err
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) }) //nolint:errcheck
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := a.up.Attachment(); !ok {
			http.Error(w, "not attached", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n")) //nolint:errcheck
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(a.Status()) //nolint:errcheck
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.Registry(), promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	srv.Shutdown(sctx) //nolint:errcheck
	<-errc
	return nil
}
