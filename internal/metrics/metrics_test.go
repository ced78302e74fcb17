package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	"github.com/underpass/underpass/internal/gwtest"
	"github.com/underpass/underpass/internal/testenv"
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
// in and moves data through the gateway.
func TestMetricsMoveWithTraffic(t *testing.T) {
	gw := gwtest.Start(t, nil)
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

	echo := testenv.EchoServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := tunnel.Dial(ctx, tunnel.ClientConfig{Server: gw.Addr, Username: gwtest.User, Password: gwtest.Password, PinSHA256: gw.Pin})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
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
