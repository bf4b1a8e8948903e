package agent

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Registry is what the agent's /metrics serves: its own metrics (read
// from Status at scrape time, so nothing on the call path pays for them)
// and the Go runtime's and the process's.
func (a *Agent) Registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{a}, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

var (
	descAttached = prometheus.NewDesc("p2psip_agent_attached",
		"1 while the agent is attached to a super peer.", nil, nil)
	descFailovers = prometheus.NewDesc("p2psip_agent_failovers_total",
		"Reattachments after the super peer was lost or left.", nil, nil)
	descBindings = prometheus.NewDesc("p2psip_agent_bindings",
		"Phone bindings registered at the agent.", nil, nil)
	descTunnel = prometheus.NewDesc("p2psip_agent_sip_tunnel_messages_total",
		"SIP messages the agent exchanged through the overlay tunnel, by direction.", []string{"direction"}, nil)
	descTunnelHops = prometheus.NewDesc("p2psip_agent_sip_tunnel_in_by_hops_total",
		"SIP messages received through the tunnel, by the overlay hops they took (\"other\": out of range).", []string{"hops"}, nil)
	descTunnelDropped = prometheus.NewDesc("p2psip_agent_sip_tunnel_dropped_total",
		"Tunnelled SIP messages thrown away (malformed, over the hop bound, queue full).", nil, nil)
	descRelayed = prometheus.NewDesc("p2psip_agent_relay_messages_total",
		"SIP messages by path: sent over the overlay, sent and received through the TURN relays.", []string{"path", "direction"}, nil)
	descRelayTimeouts = prometheus.NewDesc("p2psip_agent_relay_timeouts_total",
		"Requests re-sent on the other path because no response came within --relay-after.", nil, nil)
	descRelayDups = prometheus.NewDesc("p2psip_agent_relay_duplicates_total",
		"Inbound requests absorbed as second copies (one came over each path).", nil, nil)
	descRelaySticky = prometheus.NewDesc("p2psip_agent_relay_sticky",
		"Destinations currently reached through the relays only.", nil, nil)
	descAllocs = prometheus.NewDesc("p2psip_agent_turn_allocations_total",
		"TURN allocations made, by outcome (ok, failed, lost: stopped relaying).", []string{"outcome"}, nil)
)

type collector struct{ a *Agent }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAttached, descFailovers, descBindings, descTunnel, descTunnelHops,
		descTunnelDropped, descRelayed, descRelayTimeouts, descRelayDups, descRelaySticky, descAllocs} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	st := c.a.Status()
	attached := 0.0
	if st.Attached {
		attached = 1
	}
	gauge(descAttached, attached)
	counter(descFailovers, uint64(st.Failovers))
	gauge(descBindings, float64(st.Bindings))
	if c.a.router != nil {
		s := c.a.router.Stats()
		counter(descTunnel, s.TunnelIn, "in")
		counter(descTunnel, s.TunnelOut, "out")
		for hops, n := range s.InByHops {
			label := strconv.Itoa(hops)
			if hops == 0 {
				label = "other"
			}
			counter(descTunnelHops, n, label)
		}
		counter(descTunnelDropped, s.Dropped)
	}
	if r := st.Relay; r != nil {
		counter(descRelayed, r.OverlayOut, "overlay", "out")
		counter(descRelayed, r.RelayedOut, "relay", "out")
		counter(descRelayed, r.RelayedIn, "relay", "in")
		counter(descRelayTimeouts, r.Timeouts)
		counter(descRelayDups, r.Duplicates)
		gauge(descRelaySticky, float64(r.Sticky))
		counter(descAllocs, r.Allocations, "ok")
		counter(descAllocs, r.Failures, "failed")
		counter(descAllocs, r.Lost, "lost")
	}
}
