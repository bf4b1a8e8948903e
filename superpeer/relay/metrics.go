package relay

import "github.com/prometheus/client_golang/prometheus"

// Refusal reasons, the values of the reason label of
// p2psip_turn_refused_total.
const (
	reasonAuth       = "auth"       // wrong, expired or malformed credentials (401)
	reasonQuota      = "quota"      // per-user or total allocation quota (486)
	reasonPermission = "permission" // forbidden peer address (403/443, or a datagram dropped)
)

type metrics struct {
	allocated prometheus.Counter
	refused   *prometheus.CounterVec // reason
}

// newMetrics registers the relay's metrics on reg (nil: none). live reports
// the current number of allocations for the gauge.
func newMetrics(reg prometheus.Registerer, live func() int) (*metrics, error) {
	m := &metrics{
		allocated: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "p2psip", Subsystem: "turn", Name: "allocations_total",
			Help: "TURN relay sockets bound: allocations created (plus pion's EVEN-PORT probes, which are rare).",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "p2psip", Subsystem: "turn", Name: "refused_total",
			Help: "TURN requests and relayed datagrams refused, by reason (auth, quota, permission).",
		}, []string{"reason"}),
	}
	for _, r := range []string{reasonAuth, reasonQuota, reasonPermission} {
		m.refused.WithLabelValues(r) // export zeros, so rate() works from the start
	}
	if reg == nil {
		return m, nil
	}
	gauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "p2psip", Subsystem: "turn", Name: "allocations",
		Help: "TURN allocations currently open.",
	}, func() float64 { return float64(live()) })
	for _, c := range []prometheus.Collector{gauge, m.allocated, m.refused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
