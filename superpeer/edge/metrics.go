package edge

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the SIP edge's counters (its router's and its
// registrar's) as Prometheus metrics, read at scrape time: the counters
// live in siproute and registrar, which know nothing of Prometheus.
func (e *Edge) Collector() prometheus.Collector { return collector{e} }

var (
	descForwarded = prometheus.NewDesc("p2psip_sip_forwarded_requests_total",
		"Requests the SIP edge sent on, by method (one per branch of a forked request).", []string{"method"}, nil)
	descRejected = prometheus.NewDesc("p2psip_sip_rejected_total",
		"Requests the SIP edge answered itself with an error status (404, 403, 483, ...), overload excluded.", nil, nil)
	descOverload = prometheus.NewDesc("p2psip_sip_overload_total",
		"Requests refused with 503 and Retry-After past the in-flight limits.", nil, nil)
	descBranches = prometheus.NewDesc("p2psip_sip_client_transactions_total",
		"Client transactions the SIP edge created (forwarded requests and fork branches).", nil, nil)
	descForks = prometheus.NewDesc("p2psip_sip_forks_total",
		"Requests forked to more than one contact.", nil, nil)
	descTunnel = prometheus.NewDesc("p2psip_sip_tunnel_messages_total",
		"SIP messages the edge exchanged with overlay nodes through the tunnel, by direction.", []string{"direction"}, nil)
	descTunnelDropped = prometheus.NewDesc("p2psip_sip_tunnel_dropped_total",
		"Tunnelled SIP messages the edge threw away (malformed, over the hop bound, queue full).", nil, nil)
	descTunnelErrors = prometheus.NewDesc("p2psip_sip_tunnel_send_errors_total",
		"SIP messages the edge failed to send into the tunnel.", nil, nil)
	descRegisters = prometheus.NewDesc("p2psip_registrar_registers_total",
		"REGISTERs by outcome: ok (200), unauthorized (challenged or refused by digest authentication), refused (any other error).",
		[]string{"outcome"}, nil)
	descRegWrites = prometheus.NewDesc("p2psip_registrar_store_writes_total",
		"Quorum writes of location records for REGISTERs (one may carry several REGISTERs of an AoR).", nil, nil)
	descRegBusy = prometheus.NewDesc("p2psip_registrar_busy_total",
		"REGISTERs answered 503 because their AoR's queue was full.", nil, nil)
	descRegStoreFailed = prometheus.NewDesc("p2psip_registrar_store_failures_total",
		"Failed quorum writes for REGISTERs (each a 503 for its REGISTERs).", nil, nil)
	descBindings = prometheus.NewDesc("p2psip_registrar_bindings",
		"Live bindings of phones registered at this super peer's SIP edge.", nil, nil)
	descConns = prometheus.NewDesc("p2psip_sip_connections",
		"Phones' TCP and TLS connections open at the SIP edge.", nil, nil)
	descConnsRefused = prometheus.NewDesc("p2psip_sip_connections_refused_total",
		"Phone connections closed on accept, by limit: total (--sip-max-conns) or per_ip (--sip-max-conns-per-ip).", []string{"limit"}, nil)
	descConnsSilent = prometheus.NewDesc("p2psip_sip_connections_silent_total",
		"Phone connections closed because nothing (no TLS handshake, no request) came within the silence bound.", nil, nil)
)

type collector struct{ e *Edge }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descForwarded, descRejected, descOverload, descBranches, descForks, descTunnel,
		descTunnelDropped, descTunnelErrors, descRegisters, descRegWrites, descRegBusy, descRegStoreFailed, descBindings,
		descConns, descConnsRefused, descConnsSilent} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	s := c.e.router.Stats()
	for m, n := range s.Forwarded {
		counter(descForwarded, n, m)
	}
	counter(descRejected, s.Rejected)
	counter(descOverload, s.Overload)
	counter(descBranches, s.Branches)
	counter(descForks, s.Forks)
	counter(descTunnel, s.TunnelIn, "in")
	counter(descTunnel, s.TunnelOut, "out")
	counter(descTunnelDropped, s.Dropped)
	counter(descTunnelErrors, s.TunnelErrors)
	r := c.e.reg.Stats()
	counter(descRegisters, r.Batched, "ok")
	counter(descRegisters, r.Unauthorized, "unauthorized")
	counter(descRegisters, r.Refused, "refused")
	counter(descRegWrites, r.Writes)
	counter(descRegBusy, r.Busy)
	counter(descRegStoreFailed, r.StoreFailed)
	ch <- prometheus.MustNewConstMetric(descBindings, prometheus.GaugeValue, float64(c.e.reg.Bindings()))
	ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(c.e.conns.Open()))
	counter(descConnsRefused, c.e.conns.refusedMax.Load(), "total")
	counter(descConnsRefused, c.e.conns.refusedPerIP.Load(), "per_ip")
	counter(descConnsSilent, c.e.conns.silent.Load())
}
