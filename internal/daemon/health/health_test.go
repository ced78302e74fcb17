package health

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/underpass/underpass/internal/daemon/fdlimit"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

// fakeGW reports connected clients and growing byte counters.
type fakeGW struct{ conns, bytes atomic.Int64 }

func (f *fakeGW) Stats() tunnel.Stats {
	b := uint64(f.bytes.Load())
	return tunnel.Stats{Connected: int(f.conns.Load()), BytesIn: b / 2, BytesOut: b / 2}
}

func TestGrades(t *testing.T) {
	th := DefaultThresholds
	for _, tc := range []struct {
		v, warn, bad float64
		want         Level
	}{{50, th.CPUWarn, th.CPUBad, Healthy}, {95, th.CPUWarn, th.CPUBad, Healthy}, {96, th.CPUWarn, th.CPUBad, Warning},
		{99, th.CPUWarn, th.CPUBad, Warning}, {100, th.CPUWarn, th.CPUBad, Unhealthy}} {
		if got := gradePct(tc.v, tc.warn, tc.bad); got != tc.want {
			t.Errorf("gradePct(%v) = %s, want %s", tc.v, got, tc.want)
		}
	}
	for _, tc := range []struct {
		v    float64
		want Level
	}{{4990, Healthy}, {4991, Warning}} {
		if got := gradeMax(tc.v, float64(th.MaxConnections), -1); got != tc.want {
			t.Errorf("gradeMax(%v) = %s", tc.v, got)
		}
	}
}

func level(r Report, name string) Check {
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	return Check{}
}

func TestReportRules(t *testing.T) {
	for _, tc := range []struct {
		name     string
		latency  float64
		certLeft time.Duration
		conns    int64
		check    string
		want     map[string]Level
		overall  Level
	}{
		{"all good", 3, 90 * 24 * time.Hour, 10, "ok", map[string]Level{"Latency through the gateway": Healthy, "TLS certificate": Healthy, "Current connections": Healthy, "Internal network accessibility": Healthy}, Healthy},
		{"latency warning", 15, 90 * 24 * time.Hour, 10, "ok", map[string]Level{"Latency through the gateway": Warning}, Warning},
		{"latency unhealthy", 25, 90 * 24 * time.Hour, 10, "ok", map[string]Level{"Latency through the gateway": Unhealthy}, Unhealthy},
		{"cert 30 days", 3, 30*24*time.Hour - time.Minute, 10, "ok", map[string]Level{"TLS certificate": Warning}, Warning},
		{"cert expired", 3, -time.Hour, 10, "ok", map[string]Level{"TLS certificate": Unhealthy}, Unhealthy},
		{"too many connections", 3, 90 * 24 * time.Hour, 5000, "ok", map[string]Level{"Current connections": Warning}, Warning},
		{"internal check failing", 3, 90 * 24 * time.Hour, 10, "fail", map[string]Level{"Internal network accessibility": Unhealthy}, Unhealthy},
		{"no check URL", -1, 90 * 24 * time.Hour, 10, "", map[string]Level{"Internal network accessibility": Unknown, "Latency through the gateway": Unknown}, Healthy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := &fakeGW{}
			gw.conns.Store(tc.conns)
			cert := &x509.Certificate{NotAfter: time.Now().Add(tc.certLeft)}
			m := New(Config{Gateway: gw, Cert: func() *x509.Certificate { return cert }, DiskPath: t.TempDir()})
			m.Sample(context.Background())
			m.mu.Lock()
			m.last.LatencyMs = tc.latency
			switch tc.check {
			case "ok":
				m.internal, m.internalV = Healthy, "200 OK"
			case "fail":
				m.internal, m.internalV = Unhealthy, "connection refused"
			}
			m.mu.Unlock()
			r := m.Report()
			for name, want := range tc.want {
				if got := level(r, name); got.Level != want {
					t.Errorf("%s = %+v, want %s", name, got, want)
				}
			}
			if r.Overall != tc.overall {
				t.Errorf("overall %s, want %s", r.Overall, tc.overall)
			}
			for _, want := range []string{"CPU", "Memory", "Disk space", "Throughput", "Last health report"} {
				if level(r, want).Name == "" {
					t.Errorf("report lacks %s", want)
				}
			}
		})
	}
}

// flowGW reports forwarded flows.
type flowGW struct{ tcp, udp int64 }

func (f flowGW) Stats() tunnel.Stats {
	var st tunnel.Stats
	st.Stack.TCPActive, st.Stack.UDPActive = f.tcp, f.udp
	return st
}

// TestFDCheck grades flows against the soft file descriptor limit:
// warning from 80 %, unhealthy from 95 % (the defaults) or the configured
// thresholds; unknown when the limit cannot be read.
func TestFDCheck(t *testing.T) {
	limit := func(soft uint64) func() (fdlimit.Limits, error) {
		return func() (fdlimit.Limits, error) { return fdlimit.Limits{Soft: soft, Hard: 4 * soft}, nil }
	}
	for _, tc := range []struct {
		name     string
		tcp, udp int64
		limits   func() (fdlimit.Limits, error)
		th       Thresholds
		want     Level
		value    string
	}{
		{"idle", 0, 0, limit(1000), Thresholds{}, Healthy, "0 flows, 0 % of the limit 1000 (hard 4000)"},
		{"just under 80 %", 700, 99, limit(1000), Thresholds{}, Healthy, "799 flows"},
		{"80 % warns", 700, 100, limit(1000), Thresholds{}, Warning, "800 flows, 80 %"},
		{"95 % is unhealthy", 900, 50, limit(1000), Thresholds{}, Unhealthy, "950 flows"},
		{"configured", 500, 0, limit(1000), Thresholds{MaxConnections: 1, FDWarn: 50, FDBad: 60}, Warning, "500 flows"},
		{"limit unreadable", 1, 0, func() (fdlimit.Limits, error) { return fdlimit.Limits{}, errors.New("no getrlimit") }, Thresholds{}, Unknown, "unknown: no getrlimit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := New(Config{Gateway: flowGW{tc.tcp, tc.udp}, FDLimits: tc.limits, Thresholds: tc.th, DiskPath: t.TempDir()})
			if c := level(m.Report(), "File descriptors"); c.Level != Unknown {
				t.Errorf("before a sample: %+v, want unknown", c)
			}
			m.Sample(context.Background())
			c := level(m.Report(), "File descriptors")
			if c.Level != tc.want || !strings.Contains(c.Value, tc.value) {
				t.Errorf("%+v, want %s with %q", c, tc.want, tc.value)
			}
		})
	}
}

func TestSamplerAndInternalCheck(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(int(status.Load())) }))
	defer web.Close()
	gw := &fakeGW{}
	m := New(Config{Gateway: gw, CheckURL: web.URL, History: 3, DiskPath: t.TempDir()})
	ctx := context.Background()
	m.CheckInternal(ctx)
	if c := level(m.Report(), "Internal network accessibility"); c.Level != Healthy {
		t.Errorf("check: %+v", c)
	}
	status.Store(503)
	m.CheckInternal(ctx)
	if c := level(m.Report(), "Internal network accessibility"); c.Level != Unhealthy || !strings.Contains(c.Value, "503") {
		t.Errorf("check: %+v", c)
	}
	for i := range 5 {
		gw.bytes.Add(10_000_000)
		time.Sleep(20 * time.Millisecond)
		m.Sample(ctx)
		if i > 0 && m.History()[len(m.History())-1].Mbps <= 0 {
			t.Errorf("sample %d: no throughput", i)
		}
	}
	h := m.History()
	if len(h) != 3 {
		t.Errorf("history %d samples, want the last 3", len(h))
	}
	if h[2].LatencyMs <= 0 {
		t.Errorf("latency %v: the probe to %s did not run", h[2].LatencyMs, web.URL)
	}
	web.Close()
	m.CheckInternal(ctx)
	if c := level(m.Report(), "Internal network accessibility"); c.Level != Unhealthy {
		t.Errorf("unreachable check URL: %+v", c)
	}
}

// TestStatusPageInChromium renders the page in headless Chromium: the
// health table and the five trend charts are built by the page itself.
func TestStatusPageInChromium(t *testing.T) {
	testenv.RequireTool(t, "chromium")
	chromium, _ := testenv.LookTool("chromium")
	gw := &fakeGW{}
	m := New(Config{Gateway: gw, DiskPath: t.TempDir(), Cert: func() *x509.Certificate {
		return &x509.Certificate{NotAfter: time.Now().Add(200 * 24 * time.Hour)}
	}})
	// Six hours of synthetic history before a real sample, so the charts
	// have a shape.
	now := time.Now()
	m.mu.Lock()
	for i := range 120 {
		m.hist = append(m.hist, Sample{Time: now.Add(time.Duration(i-120) * 3 * time.Minute), Connections: 100 + i%37,
			CPU: float64(20 + i%50), Memory: 30, LatencyMs: float64(2 + i%7), Mbps: float64(300 + 5*i)})
	}
	m.mu.Unlock()
	m.Sample(context.Background())
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	run := func(args ...string) []byte {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
			"--disable-component-update", "--disable-sync", "--user-data-dir=" + t.TempDir(), "--virtual-time-budget=3000"}
		out, err := exec.CommandContext(ctx, chromium, append(base, args...)...).Output()
		if err != nil {
			t.Fatalf("chromium %v: %v", args, err)
		}
		return out
	}
	dom := string(run("--dump-dom", srv.URL+"/"))
	rows := regexp.MustCompile(`<tr class="(healthy|warning|unhealthy|unknown)">`).FindAllString(dom, -1)
	if len(rows) < 9 {
		t.Errorf("health table has %d rows:\n%.2000s", len(rows), dom)
	}
	for _, key := range []string{"connections", "cpu", "memory", "latency", "mbps"} {
		re := regexp.MustCompile(`id="chart-` + key + `"[\s\S]*?<polyline points="([^"]+)"`)
		mm := re.FindStringSubmatch(dom)
		if mm == nil || len(strings.Fields(mm[1])) < 100 {
			t.Errorf("chart %s not drawn", key)
		}
	}
	if !strings.Contains(dom, `class="badge healthy"`) && !strings.Contains(dom, `class="badge warning"`) {
		t.Errorf("overall badge missing")
	}
	dir := os.Getenv("ARTIFACTS_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	shot := filepath.Join(dir, "status-page.png")
	run("--screenshot="+shot, "--window-size=1280,1000", srv.URL+"/")
	png, err := os.ReadFile(shot)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) || len(png) < 20_000 {
		t.Errorf("screenshot %s: %d bytes, %v", shot, len(png), err)
	}
	t.Logf("screenshot: %s (%d bytes)", shot, len(png))
}
