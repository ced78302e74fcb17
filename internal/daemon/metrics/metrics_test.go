package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	"github.com/underpass/underpass/internal/daemon/fdlimit"
	"github.com/underpass/underpass/internal/testinfra/gwtest"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

// scrape fetches /metrics and parses it as Prometheus text format.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text format: %v", err)
	}
	return fams
}

func value(t *testing.T, fams map[string]*dto.MetricFamily, name string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok || len(f.Metric) != 1 {
		t.Fatalf("metric %s missing", name)
	}
	m := f.Metric[0]
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// TestMetricsMoveWithTraffic: counters parse and grow when a client signs
// in, resolves a name through the in-tunnel DNS proxy and moves data
// through the gateway.
func TestMetricsMoveWithTraffic(t *testing.T) {
	up := testenv.LoopCorpDNS(t)
	gw := gwtest.Start(t, func(c *tunnel.Config) {
		c.DNS = []netip.Addr{netip.MustParseAddr("10.0.0.53")}
		c.DNSProxy.Upstreams = []string{up}
		c.DNSProxy.Domains = []string{"corp.example"}
	})
	var notReady atomic.Pointer[error]
	srv := httptest.NewServer(Handler(gw, func() error {
		if e := notReady.Load(); e != nil {
			return *e
		}
		return nil
	}))
	defer srv.Close()

	before := scrape(t, srv.URL)
	if v := value(t, before, "underpass_sessions"); v != 0 {
		t.Errorf("sessions before = %v", v)
	}
	if _, ok := before["go_goroutines"]; !ok {
		t.Error("runtime metrics missing")
	}
	dnsFamilies := []string{
		"underpass_dns_queries_total", "underpass_dns_cache_hits_total", "underpass_dns_cache_misses_total",
		"underpass_dns_deduplicated_lookups_total", "underpass_dns_upstream_queries_total",
		"underpass_dns_upstream_failures_total", "underpass_dns_dropped_queries_total",
		"underpass_dns_formerr_responses_total", "underpass_dns_servfail_responses_total",
		"underpass_dns_refused_responses_total", "underpass_dns_panics_total",
		"underpass_dns_cache_entries", "underpass_dns_cache_bytes",
	}
	for _, name := range dnsFamilies {
		if v := value(t, before, name); v != 0 {
			t.Errorf("%s = %v before any query", name, v)
		}
	}

	echo := testenv.EchoServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := tunnel.Dial(ctx, tunnel.ClientConfig{Server: gw.Addr, Username: gwtest.User, Password: gwtest.Password, PinSHA256: gw.Pin})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The same name twice: the first answer comes from upstream, the
	// second from the proxy's cache.
	for range 2 {
		addrs, err := c.LookupNetIP(ctx, "echo.corp.example.")
		if err != nil || len(addrs) != 1 || addrs[0] != netip.MustParseAddr("198.18.1.1") {
			t.Fatalf("LookupNetIP through the tunnel = %v, %v", addrs, err)
		}
	}
	conn, err := c.DialContext(ctx, "tcp", gwtest.Corp(echo).String())
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 200_000)
	go conn.Write(msg)
	if _, err := io.ReadFull(conn, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	after := scrape(t, srv.URL)
	for _, tc := range []struct {
		name string
		min  float64
	}{
		{"underpass_sessions", 1}, {"underpass_sessions_connected", 1}, {"underpass_sign_ins_total", 1},
		{"underpass_received_bytes_total", float64(len(msg))}, {"underpass_sent_bytes_total", float64(len(msg))},
		{"underpass_tcp_flows_total", 1}, {"underpass_tcp_flows_active", 1},
		{"underpass_dns_queries_total", 2}, {"underpass_dns_cache_misses_total", 1},
		{"underpass_dns_upstream_queries_total", 1}, {"underpass_dns_cache_hits_total", 1},
		{"underpass_dns_cache_entries", 1}, {"underpass_dns_cache_bytes", 1},
	} {
		if v := value(t, after, tc.name); v < tc.min {
			t.Errorf("%s = %v after traffic, want >= %v", tc.name, v, tc.min)
		}
	}
	conn.Close()

	for _, tc := range []struct {
		path   string
		ready  error
		status int
		body   string
	}{
		{"/healthz", nil, 200, "ok"},
		{"/readyz", nil, 200, `"ready":true`},
		{"/readyz", errors.New("draining"), 503, `"reason":"draining"`},
	} {
		notReady.Store(&tc.ready)
		resp, err := http.Get(srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.body) {
			t.Errorf("%s: %d %q", tc.path, resp.StatusCode, b)
		}
	}
}

// fdSource is a gateway whose dials have failed for lack of descriptors.
type fdSource struct{ noFD uint64 }

func (s fdSource) Stats() tunnel.Stats {
	var st tunnel.Stats
	st.Stack.DialNoFD = s.noFD
	return st
}

// TestFDMetrics: the descriptor limits are the process's (as getrlimit
// reports them at scrape time) and the lack-of-descriptor dial failures
// are the gateway's count. The soft limit is lowered below the hard one
// for the test (and restored), so the two cannot be mistaken.
func TestFDMetrics(t *testing.T) {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
			t.Errorf("restoring RLIMIT_NOFILE: %v", err)
		}
	}()
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: orig.Max - 1, Max: orig.Max}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler(fdSource{noFD: 7}, func() error { return nil }))
	defer srv.Close()
	fams := scrape(t, srv.URL)
	lim := fdlimit.Limits{Soft: orig.Max - 1, Hard: orig.Max}
	for _, tc := range []struct {
		name string
		want float64
	}{
		{"underpass_dial_no_fd_total", 7},
		{"underpass_fd_soft_limit", float64(lim.Soft)},
		{"underpass_fd_hard_limit", float64(lim.Hard)},
	} {
		if v := value(t, fams, tc.name); v != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, v, tc.want)
		}
	}
}

// zeroSource is a gateway that has seen nothing.
type zeroSource struct{}

func (zeroSource) Stats() tunnel.Stats { return tunnel.Stats{} }

// readmeMetrics returns the metric families README.md's "## Metrics"
// section documents, name -> type, from its table rows ("| `name` | type |
// unit | meaning |").
func readmeMetrics(t *testing.T) map[string]string {
	t.Helper()
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Metrics\n")
	if !ok {
		t.Fatal(`README.md has no "## Metrics" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	out := make(map[string]string)
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue // not a table row naming a metric
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		if _, dup := out[name]; dup {
			t.Errorf("README.md lists %s twice", name)
		}
		out[name] = strings.TrimSpace(cells[2])
	}
	return out
}

// TestREADMEListsEveryMetric: README.md's Metrics section lists every
// family /metrics exports (the gateway's collector and the runtime and
// process collectors), with its type, and no gateway family that is gone.
func TestREADMEListsEveryMetric(t *testing.T) {
	documented := readmeMetrics(t)
	srv := httptest.NewServer(Handler(zeroSource{}, func() error { return nil }))
	defer srv.Close()
	fams := scrape(t, srv.URL)
	collector := 0
	for name, f := range fams {
		typ := strings.ToLower(f.GetType().String())
		doc, ok := documented[name]
		switch {
		case !ok:
			t.Errorf("README.md's Metrics section does not list %s (%s: %s)", name, typ, f.GetHelp())
		case doc != typ:
			t.Errorf("README.md lists %s as a %s; /metrics exports a %s", name, doc, typ)
		}
		if strings.HasPrefix(name, "underpass_") {
			collector++
		}
	}
	descs := make(chan *prometheus.Desc)
	go func() {
		NewCollector(zeroSource{}).Describe(descs)
		close(descs)
	}()
	n := 0
	for range descs {
		n++
	}
	if collector != n {
		t.Errorf("/metrics exports %d underpass_ families; the collector describes %d", collector, n)
	}
	for name := range documented {
		if strings.HasPrefix(name, "underpass_") && fams[name] == nil {
			t.Errorf("README.md lists %s, which /metrics does not export", name)
		}
	}
}

// siteSource is a gateway with a site store in a given state.
type siteSource struct{ st tunnel.SiteStoreStats }

func (s siteSource) Stats() tunnel.Stats { return tunnel.Stats{SiteStore: s.st} }

// TestSiteStoreMetrics: the site store's families follow Stats.SiteStore.
func TestSiteStoreMetrics(t *testing.T) {
	for _, tc := range []struct {
		st                                     tunnel.SiteStoreStats
		up, queued, dropped, leases, conflicts float64
	}{
		{tunnel.SiteStoreStats{}, 0, 0, 0, 0, 0},
		{tunnel.SiteStoreStats{Configured: true, Up: true}, 1, 0, 0, 0, 0},
		{tunnel.SiteStoreStats{Configured: true, Queued: 3, Dropped: 2}, 0, 3, 2, 0, 0},
		{tunnel.SiteStoreStats{Configured: true, Leases: true, LeasesQueued: 4, LeaseConflicts: 5}, 0, 0, 0, 4, 5},
	} {
		srv := httptest.NewServer(Handler(siteSource{tc.st}, func() error { return nil }))
		fams := scrape(t, srv.URL)
		srv.Close()
		for name, want := range map[string]float64{
			"underpass_site_store_up": tc.up, "underpass_site_store_queued_records": tc.queued,
			"underpass_site_store_dropped_records_total": tc.dropped,
			"underpass_site_store_queued_leases":         tc.leases, "underpass_site_lease_conflicts_total": tc.conflicts,
		} {
			if v := value(t, fams, name); v != want {
				t.Errorf("%+v: %s = %v, want %v", tc.st, name, v, want)
			}
		}
	}
}
