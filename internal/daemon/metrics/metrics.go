// Package metrics exposes a running gateway to operators (R-O2): a
// Prometheus collector over tunnel.Gateway.Stats, and the admin HTTP
// handler with /metrics, /healthz and /readyz. It reads the gateway's
// counters at scrape time, so it adds nothing to the data path.
package metrics

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/underpass/underpass/internal/daemon/fdlimit"
	"github.com/underpass/underpass/tunnel"
)

// Source is what the collector reads; *tunnel.Gateway implements it.
type Source interface {
	Stats() tunnel.Stats
}

type metric struct {
	desc *prometheus.Desc
	kind prometheus.ValueType
	val  func(*snapshot) float64
}

// snapshot is what one scrape reads: the gateway's counters and the
// process's file-descriptor limits (zero if getrlimit fails).
type snapshot struct {
	tunnel.Stats
	fd fdlimit.Limits
}

// Collector is a prometheus.Collector over a gateway's counters.
type Collector struct {
	src     Source
	metrics []metric
}

// NewCollector returns a collector for src.
func NewCollector(src Source) *Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("underpass_"+name, help, nil, nil)
	}
	c, g := prometheus.CounterValue, prometheus.GaugeValue
	return &Collector{src: src, metrics: []metric{
		{d("sessions", "Signed-in sessions (connected or within their reconnect grace)."), g, func(s *snapshot) float64 { return float64(s.Sessions) }},
		{d("sessions_connected", "Sessions with a live tunnel connection."), g, func(s *snapshot) float64 { return float64(s.Connected) }},
		{d("sign_ins_total", "Successful sign-ins."), c, func(s *snapshot) float64 { return float64(s.SignIns) }},
		{d("sign_in_failures_total", "Refused sign-ins."), c, func(s *snapshot) float64 { return float64(s.SignInFailures) }},
		{d("received_bytes_total", "IP bytes received from clients."), c, func(s *snapshot) float64 { return float64(s.BytesIn) }},
		{d("sent_bytes_total", "IP bytes sent to clients."), c, func(s *snapshot) float64 { return float64(s.BytesOut) }},
		{d("received_packets_total", "IP packets received from clients."), c, func(s *snapshot) float64 { return float64(s.Stack.PacketsIn) }},
		{d("sent_packets_total", "IP packets sent to clients."), c, func(s *snapshot) float64 { return float64(s.Stack.PacketsOut) }},
		{d("tcp_flows_active", "Forwarded TCP flows now."), g, func(s *snapshot) float64 { return float64(s.Stack.TCPActive) }},
		{d("udp_flows_active", "Forwarded UDP flows now."), g, func(s *snapshot) float64 { return float64(s.Stack.UDPActive) }},
		{d("tcp_flows_total", "Forwarded TCP flows established."), c, func(s *snapshot) float64 { return float64(s.Stack.TCPFlows) }},
		{d("udp_flows_total", "Forwarded UDP flows opened."), c, func(s *snapshot) float64 { return float64(s.Stack.UDPFlows) }},
		{d("tcp_dial_failures_total", "Upstream TCP dials that failed (answered with RST)."), c, func(s *snapshot) float64 { return float64(s.Stack.TCPDialFailed) }},
		{d("dial_no_fd_total", "Upstream dials (TCP and UDP) that failed for lack of file descriptors (EMFILE/ENFILE); also in the dial failure counts."), c, func(s *snapshot) float64 { return float64(s.Stack.DialNoFD) }},
		{d("fd_soft_limit", "The process's open file descriptor limit (soft RLIMIT_NOFILE), which caps flows: each holds one."), g, func(s *snapshot) float64 { return float64(s.fd.Soft) }},
		{d("fd_hard_limit", "The ceiling the soft file descriptor limit may be raised to (hard RLIMIT_NOFILE); the binary raises the soft limit to it at start."), g, func(s *snapshot) float64 { return float64(s.fd.Hard) }},
		{d("tcp_dials_capped_total", "Client SYNs ignored because their session had its share of upstream dials in flight."), c, func(s *snapshot) float64 { return float64(s.Stack.TCPDialCapped) }},
		{d("tcp_flows_capped_total", "Client SYNs refused because their session held its maximum of TCP flows."), c, func(s *snapshot) float64 { return float64(s.Stack.TCPFlowsCapped) }},
		{d("udp_flows_capped_total", "Client datagrams dropped because their session held its maximum of UDP flows."), c, func(s *snapshot) float64 { return float64(s.Stack.UDPFlowsCapped) }},
		{d("echo_capped_total", "Client pings refused because their session had its share of forwarded pings in flight."), c, func(s *snapshot) float64 { return float64(s.Stack.EchoCapped) }},
		{d("fragmented_packets_total", "Packets to clients fragmented to their transport's MTU (CONNECT-IP: 1280)."), c, func(s *snapshot) float64 { return float64(s.Stack.Fragmented) }},
		{d("reassembled_packets_total", "Client datagrams (IPv4, IPv6) reassembled from their fragments before forwarding."), c, func(s *snapshot) float64 { return float64(s.Stack.Reassembled) }},
		{d("fragment_drops_total", "Client datagrams (IPv4, IPv6) discarded before they were whole (overlapping, empty or contradicting fragments, too long, timed out, over the reassembly limits, or their session ended)."), c, func(s *snapshot) float64 { return float64(s.Stack.FragmentsDropped) }},
		{d("ttl_exceeded_total", "Client packets whose TTL ran out at the gateway (answered with ICMP time exceeded)."), c, func(s *snapshot) float64 { return float64(s.Stack.TTLExceeded) }},
		{d("policy_drops_total", "Client packets to destinations outside the routes (answered)."), c, func(s *snapshot) float64 { return float64(s.Stack.DropNotAllowed) }},
		{d("spoofed_drops_total", "Client packets whose source was not the session's address."), c, func(s *snapshot) float64 { return float64(s.Stack.DropSpoofed) }},
		{d("stalled_drops_total", "Packets dropped because a client stopped reading."), c, func(s *snapshot) float64 { return float64(s.Stack.DropBlocked) }},
		{d("parked_drops_total", "Packets for clients between connections dropped past their queue (TCP retransmits them)."), c, func(s *snapshot) float64 { return float64(s.Stack.DropParked) }},
		{d("dtls_handshakes_total", "AnyConnect DTLS channels established."), c, func(s *snapshot) float64 { return float64(s.DTLSUp) }},
		{d("dtls_received_packets_total", "IP packets received from clients over DTLS."), c, func(s *snapshot) float64 { return float64(s.DTLSPacketsIn) }},
		{d("dtls_sent_packets_total", "IP packets sent to clients over DTLS."), c, func(s *snapshot) float64 { return float64(s.DTLSPacketsOut) }},
		{d("dtls_dropped_datagrams_total", "UDP datagrams dropped before any DTLS state (not a ClientHello of a live session, or over the handshake cap)."), c, func(s *snapshot) float64 { return float64(s.DTLSDropped) }},
		{d("dtls_peers", "Client addresses with DTLS state (handshaking or up)."), g, func(s *snapshot) float64 { return float64(s.DTLSPeers) }},
		// The in-tunnel DNS proxy (tunnel.Stats.DNS; all zero when it is off).
		{d("dns_queries_total", "DNS queries from clients to the in-tunnel DNS proxy."), c, func(s *snapshot) float64 { return float64(s.DNS.Queries) }},
		{d("dns_cache_hits_total", "DNS lookups answered from the proxy's cache."), c, func(s *snapshot) float64 { return float64(s.DNS.CacheHits) }},
		{d("dns_cache_misses_total", "DNS lookups the cache could not answer (asked upstream, or joined such a lookup)."), c, func(s *snapshot) float64 { return float64(s.DNS.CacheMisses) }},
		{d("dns_deduplicated_lookups_total", "DNS lookups that joined an identical upstream lookup in flight."), c, func(s *snapshot) float64 { return float64(s.DNS.Deduplicated) }},
		{d("dns_upstream_queries_total", "Exchanges with upstream DNS servers (UDP and TCP)."), c, func(s *snapshot) float64 { return float64(s.DNS.UpstreamQueries) }},
		{d("dns_upstream_failures_total", "Exchanges with upstream DNS servers that failed (timeout, network error, bad reply)."), c, func(s *snapshot) float64 { return float64(s.DNS.UpstreamFailures) }},
		{d("dns_dropped_queries_total", "DNS queries not answered at all (unparseable, a response, or over the in-flight limit)."), c, func(s *snapshot) float64 { return float64(s.DNS.Dropped) }},
		{d("dns_formerr_responses_total", "DNS queries answered FORMERR."), c, func(s *snapshot) float64 { return float64(s.DNS.FormErr) }},
		{d("dns_servfail_responses_total", "DNS queries answered SERVFAIL."), c, func(s *snapshot) float64 { return float64(s.DNS.ServFail) }},
		{d("dns_refused_responses_total", "DNS queries answered REFUSED."), c, func(s *snapshot) float64 { return float64(s.DNS.Refused) }},
		{d("dns_panics_total", "Internal errors the DNS proxy recovered from, dropping the query (a bug if non-zero)."), c, func(s *snapshot) float64 { return float64(s.DNS.Panics) }},
		{d("dns_cache_entries", "Answers in the DNS proxy's cache."), g, func(s *snapshot) float64 { return float64(s.DNS.CacheEntries) }},
		{d("dns_cache_bytes", "Estimated memory held by the DNS proxy's cache, in bytes."), g, func(s *snapshot) float64 { return float64(s.DNS.CacheBytes) }},
		// The site store (tunnel.Stats.SiteStore; 0 without one).
		{d("site_store_up", "1 when the site store answered this server's last call; 0 when it did not or none is configured."), g, func(s *snapshot) float64 { return b2f(s.SiteStore.Up) }},
		{d("site_store_queued_records", "Revocations and bans applied here and waiting for the site store."), g, func(s *snapshot) float64 { return float64(s.SiteStore.Queued) }},
		{d("site_store_dropped_records_total", "Records and lease calls dropped from a full site store queue during an outage."), c, func(s *snapshot) float64 { return float64(s.SiteStore.Dropped) }},
		{d("site_store_queued_leases", "Address lease claims and releases waiting for the site store."), g, func(s *snapshot) float64 { return float64(s.SiteStore.LeasesQueued) }},
		{d("site_lease_conflicts_total", "Addresses found leased to another session of the site: resumes refused, and outage leases refused afterwards."), c, func(s *snapshot) float64 { return float64(s.SiteStore.LeaseConflicts) }},
	}}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.metrics {
		ch <- m.desc
	}
}

// Collect implements prometheus.Collector: one Stats snapshot per scrape.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := snapshot{Stats: c.src.Stats()}
	s.fd, _ = fdlimit.Get()
	for _, m := range c.metrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.val(&s))
	}
}

// Handler serves /metrics (the gateway's collector plus Go runtime and
// process metrics), /healthz (the process answers) and /readyz (ready()
// is nil: serving; else 503 with the reason). Mount it on a listener
// separate from the VPN port, loopback by default.
func Handler(src Source, ready func() error) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		err := ready()
		body := map[string]any{"ready": err == nil}
		if err != nil {
			body["reason"] = err.Error()
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(body)
	})
	return mux
}
