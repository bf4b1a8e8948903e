package route

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	fromAgents     prometheus.Counter
	delivered      prometheus.Counter
	forwarded      prometheus.Counter
	hopLimit       prometheus.Counter
	failed         *prometheus.CounterVec // code
	dropped        *prometheus.CounterVec // reason
	redirects      prometheus.Counter
	refused        prometheus.Counter
	membersNotices prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, r *Router) *metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "p2psip", Subsystem: "tunnel", Name: name, Help: help})
	}
	m := &metrics{
		fromAgents: c("from_agents_total", "Tunnel frames received from attached agents."),
		delivered:  c("delivered_total", "Tunnel frames delivered to attached agents."),
		forwarded:  c("forwarded_total", "Tunnel frames forwarded to another super peer."),
		hopLimit:   c("hop_limit_total", "Tunnel frames refused because they would take a fourth hop."),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "p2psip", Subsystem: "tunnel", Name: "undeliverable_total",
			Help: "Tunnel frames answered with an error frame, by reason."}, []string{"reason"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "p2psip", Subsystem: "tunnel", Name: "dropped_total",
			Help: "Tunnel frames dropped, by reason."}, []string{"reason"}),
		redirects:      prometheus.NewCounter(prometheus.CounterOpts{Namespace: "p2psip", Subsystem: "attach", Name: "redirects_total", Help: "Attach requests redirected to a less loaded super peer."}),
		refused:        prometheus.NewCounter(prometheus.CounterOpts{Namespace: "p2psip", Subsystem: "attach", Name: "refused_total", Help: "Attach requests refused because this super peer is full."}),
		membersNotices: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "p2psip", Subsystem: "attach", Name: "members_notices_total", Help: "Notices sent to attached agents that super peers left, died, began draining or joined."}),
	}
	if reg != nil {
		reg.MustRegister(m.fromAgents, m.delivered, m.forwarded, m.hopLimit, m.failed, m.dropped, m.redirects, m.refused, m.membersNotices,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "p2psip", Subsystem: "attach", Name: "attached_peers", Help: "Agents attached to this super peer."},
				func() float64 { return float64(r.Attached()) }))
	}
	return m
}
