package store

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/p2psip/p2psip/common/record"
)

// metrics are the store's Prometheus series (ARCHITECTURE.md §9).
type metrics struct {
	opSeconds  *prometheus.HistogramVec // op: put, get, remove
	opErrors   *prometheus.CounterVec   // op, reason
	replicated *prometheus.CounterVec   // result: ok, error
	handoff    prometheus.Counter       // records handed to new replicas
	repaired   *prometheus.CounterVec   // how: read_repair, anti_entropy
	oneReads   *prometheus.CounterVec   // answered_by: one, quorum
	swept      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, l *local) *metrics {
	m := &metrics{
		opSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "p2psip", Subsystem: "store", Name: "operation_seconds",
			Help:    "Latency of coordinated store operations.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"op"}),
		opErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "p2psip", Subsystem: "store", Name: "operation_errors_total",
			Help: "Failed coordinated store operations, by reason.",
		}, []string{"op", "reason"}),
		replicated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "p2psip", Subsystem: "store", Name: "replica_writes_total",
			Help: "Writes sent to replicas, by result.",
		}, []string{"result"}),
		handoff: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "p2psip", Subsystem: "store", Name: "handoff_records_total",
			Help: "Records handed to new replicas after membership changes.",
		}),
		repaired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "p2psip", Subsystem: "store", Name: "repairs_total",
			Help: "Stale replicas repaired, by mechanism.",
		}, []string{"how"}),
		oneReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "p2psip", Subsystem: "store", Name: "routing_reads_total",
			Help: "Routing reads (GetOne), by what answered: one replica's copy, or a quorum read when that copy had nothing live.",
		}, []string{"answered_by"}),
		swept: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "p2psip", Subsystem: "store", Name: "expired_records_total",
			Help: "Records dropped because every entry expired.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.opSeconds, m.opErrors, m.replicated, m.handoff, m.repaired, m.oneReads, m.swept)
		for _, k := range []record.Kind{record.KindLocation, record.KindService, record.KindPeer} {
			k := k
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Namespace: "p2psip", Subsystem: "store", Name: "records",
				Help:        "Records held by this super peer, by kind.",
				ConstLabels: prometheus.Labels{"kind": k.String()},
			}, func() float64 { return float64(l.counts[k].Load()) }))
		}
	}
	return m
}
