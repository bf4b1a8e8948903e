package session

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	sessions *prometheus.GaugeVec   // role
	refused  *prometheus.CounterVec // reason
	closed   *prometheus.CounterVec // reason
	frames   *prometheus.CounterVec // type
	overload prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "p2psip", Subsystem: "session", Name: "open",
			Help: "Open peer-protocol sessions, by role.",
		}, []string{"role"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "p2psip", Subsystem: "session", Name: "refused_total",
			Help: "Connections refused at the handshake, by reason.",
		}, []string{"reason"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "p2psip", Subsystem: "session", Name: "broken_total",
			Help: "Sessions closed because of bad input or I/O errors, by reason.",
		}, []string{"reason"}),
		frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "p2psip", Subsystem: "session", Name: "requests_total",
			Help: "Requests received, by message type.",
		}, []string{"type"}),
		overload: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "p2psip", Subsystem: "session", Name: "overload_total",
			Help: "Requests refused because too many were in flight.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.sessions, m.refused, m.closed, m.frames, m.overload)
	}
	return m
}
