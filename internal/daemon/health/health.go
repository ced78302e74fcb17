// Package health watches a running gateway (R-O2, R-S3): it samples
// connections, throughput, CPU, memory, latency through the gateway's
// outbound path, disk space and certificate lifetime, grades each against
// configurable thresholds, checks the site's internal URL every five
// minutes, keeps a bounded history for trend charts, and serves a
// self-contained status page.
package health

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/underpass/underpass/internal/daemon/fdlimit"
	"github.com/underpass/underpass/tunnel"
)

// Level grades one check.
type Level string

// Levels, best first.
const (
	Healthy   Level = "healthy"
	Warning   Level = "warning"
	Unhealthy Level = "unhealthy"
	Unknown   Level = "unknown"
)

// Thresholds are the grading rules; DefaultThresholds are R-O2's.
type Thresholds struct {
	MaxConnections int           `yaml:"max_connections"` // healthy up to this many connected clients
	CPUWarn        float64       `yaml:"cpu_warn"`        // percent: warning from here
	CPUBad         float64       `yaml:"cpu_bad"`         // unhealthy from here
	MemWarn        float64       `yaml:"mem_warn"`
	MemBad         float64       `yaml:"mem_bad"`
	LatencyWarn    time.Duration `yaml:"latency_warn"` // warning from here
	LatencyBad     time.Duration `yaml:"latency_bad"`  // unhealthy above this
	CertWarnDays   int           `yaml:"cert_warn_days"`
	DiskWarn       float64       `yaml:"disk_warn"` // percent used
	DiskBad        float64       `yaml:"disk_bad"`
	MaxMbps        float64       `yaml:"max_mbps"` // warning above (0: no limit)
	// FDWarn and FDBad grade the forwarded flows (TCP and UDP, one host
	// socket each) as a percentage of the soft file descriptor limit
	// (RLIMIT_NOFILE): warning from FDWarn, unhealthy from FDBad; 0 means
	// the default (80, 95). At the limit new flows are refused (a RST).
	FDWarn float64 `yaml:"fd_warn"`
	FDBad  float64 `yaml:"fd_bad"`
}

// DefaultThresholds are the reference system's figures (R-O2).
var DefaultThresholds = Thresholds{
	MaxConnections: 4990, CPUWarn: 96, CPUBad: 100, MemWarn: 96, MemBad: 100,
	LatencyWarn: 10 * time.Millisecond, LatencyBad: 20 * time.Millisecond,
	CertWarnDays: 30, DiskWarn: 90, DiskBad: 98,
	FDWarn: defaultFDWarn, FDBad: defaultFDBad,
}

const (
	// defaultFDWarn: issue 14's warning point, early enough to raise the
	// limit (a restart) before flows are refused.
	defaultFDWarn = 80
	// defaultFDBad: the limit also covers sessions' sockets, listeners and
	// files, so flows alone never reach 100 %; at 95 % new flows are about
	// to be refused, and /readyz fails so a load balancer sends new
	// sessions elsewhere.
	defaultFDBad = 95
)

// Defaults for Config, each with its reason.
const (
	// DefaultInterval: a sample every 30 s keeps 6 h of history in 720
	// points, fine enough for trend charts.
	DefaultInterval = 30 * time.Second
	// DefaultHistory is 6 hours at DefaultInterval.
	DefaultHistory = 720
	// CheckEvery is R-S3's internal-network check period.
	CheckEvery = 5 * time.Minute
	// checkTimeout bounds one check URL request or latency probe.
	checkTimeout = 10 * time.Second
)

// Config configures a Monitor.
type Config struct {
	Gateway    interface{ Stats() tunnel.Stats }
	Cert       func() *x509.Certificate // the serving leaf; nil: unknown
	CheckURL   string                   // R-S3; "" = unknown
	HTTPClient *http.Client             // for CheckURL (extra roots, proxies); nil: a default client
	Dialer     interface {
		DialContext(ctx context.Context, network, address string) (net.Conn, error)
	} // the gateway's outbound path, for the latency probe; nil: net.Dialer
	DiskPath string // the state directory
	// FDLimits reports the process's file descriptor limits; nil means
	// fdlimit.Get (getrlimit).
	FDLimits   func() (fdlimit.Limits, error)
	Thresholds Thresholds
	Interval   time.Duration
	History    int
}

// Sample is one point of the trend charts.
type Sample struct {
	Time        time.Time `json:"t"`
	Connections int       `json:"connections"`
	CPU         float64   `json:"cpu"`     // percent of all CPUs
	Memory      float64   `json:"memory"`  // percent
	LatencyMs   float64   `json:"latency"` // -1: unknown
	Mbps        float64   `json:"mbps"`
	Flows       int64     `json:"flows"` // forwarded TCP and UDP flows
}

// Check is one graded line of the health table.
type Check struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	Level Level  `json:"level"`
}

// Report is the health table.
type Report struct {
	Time    time.Time `json:"time"`
	Overall Level     `json:"overall"`
	Checks  []Check   `json:"checks"`
}

// Monitor samples and grades. Safe for concurrent use.
type Monitor struct {
	cfg Config

	mu        sync.Mutex
	hist      []Sample
	last      Sample
	lastBytes uint64
	lastCPU   time.Duration
	lastAt    time.Time
	internal  Level
	internalV string
	lastCheck time.Time
	fd        fdlimit.Limits // at the last sample
	fdErr     error
}

// New returns a monitor; call Run (or Sample) to fill it.
func New(cfg Config) *Monitor {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.History <= 0 {
		cfg.History = DefaultHistory
	}
	if cfg.Thresholds == (Thresholds{}) {
		cfg.Thresholds = DefaultThresholds
	}
	if cfg.Thresholds.FDWarn <= 0 {
		cfg.Thresholds.FDWarn = defaultFDWarn
	}
	if cfg.Thresholds.FDBad <= 0 {
		cfg.Thresholds.FDBad = defaultFDBad
	}
	if cfg.FDLimits == nil {
		cfg.FDLimits = fdlimit.Get
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: checkTimeout}
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	m := &Monitor{cfg: cfg, internal: Unknown, internalV: "no check URL set"}
	m.last.LatencyMs = -1
	return m
}

// Run samples every Interval and checks the internal URL every
// CheckEvery until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	m.CheckInternal(ctx)
	m.Sample(ctx)
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if time.Since(m.lastCheckTime()) >= CheckEvery {
				m.CheckInternal(ctx)
			}
			m.Sample(ctx)
		}
	}
}

func (m *Monitor) lastCheckTime() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastCheck
}

// CheckInternal GETs the check URL (R-S3): 2xx/3xx is healthy.
func (m *Monitor) CheckInternal(ctx context.Context) {
	lvl, v := Unknown, "no check URL set"
	if m.cfg.CheckURL != "" {
		ctx, cancel := context.WithTimeout(ctx, checkTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.cfg.CheckURL, nil)
		if err == nil {
			var resp *http.Response
			if resp, err = m.cfg.HTTPClient.Do(req); err == nil {
				resp.Body.Close()
				if resp.StatusCode < 400 {
					lvl, v = Healthy, fmt.Sprintf("%s: %s", m.cfg.CheckURL, resp.Status)
				} else {
					lvl, v = Unhealthy, fmt.Sprintf("%s: %s", m.cfg.CheckURL, resp.Status)
				}
			}
		}
		if err != nil {
			lvl, v = Unhealthy, fmt.Sprintf("%s: %v", m.cfg.CheckURL, err)
		}
	}
	m.mu.Lock()
	m.internal, m.internalV, m.lastCheck = lvl, v, time.Now()
	m.mu.Unlock()
}

// Sample takes one sample now.
func (m *Monitor) Sample(ctx context.Context) {
	now := time.Now()
	st := m.cfg.Gateway.Stats()
	cpu := processCPU()
	lat := m.latency(ctx)
	mem := memoryPercent()
	fd, fdErr := m.cfg.FDLimits()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fd, m.fdErr = fd, fdErr
	s := Sample{Time: now, Connections: st.Connected, Memory: mem, LatencyMs: lat, Flows: st.Stack.TCPActive + st.Stack.UDPActive}
	if !m.lastAt.IsZero() {
		dt := now.Sub(m.lastAt).Seconds()
		if dt > 0 {
			s.CPU = 100 * (cpu - m.lastCPU).Seconds() / dt / float64(runtime.NumCPU())
			s.Mbps = float64(st.BytesIn+st.BytesOut-m.lastBytes) * 8 / dt / 1e6
		}
	}
	m.lastAt, m.lastCPU, m.lastBytes = now, cpu, st.BytesIn+st.BytesOut
	m.last = s
	m.hist = append(m.hist, s)
	if len(m.hist) > m.cfg.History {
		m.hist = m.hist[len(m.hist)-m.cfg.History:]
	}
}

// latency measures a TCP connect to the check URL's host through the
// gateway's outbound dialer (the path client flows take); -1 if unknown.
func (m *Monitor) latency(ctx context.Context) float64 {
	u, err := url.Parse(m.cfg.CheckURL)
	if m.cfg.CheckURL == "" || err != nil || u.Host == "" {
		return -1
	}
	host := u.Host
	if u.Port() == "" {
		port := "443"
		if u.Scheme == "http" {
			port = "80"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	t0 := time.Now()
	c, err := m.cfg.Dialer.DialContext(ctx, "tcp", host)
	if err != nil {
		return -1
	}
	d := time.Since(t0)
	c.Close()
	return float64(d.Microseconds()) / 1000
}

// History returns the samples, oldest first.
func (m *Monitor) History() []Sample {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Sample(nil), m.hist...)
}

// Report grades the latest sample.
func (m *Monitor) Report() Report {
	m.mu.Lock()
	s, internal, internalV, at, fd, fdErr := m.last, m.internal, m.internalV, m.lastAt, m.fd, m.fdErr
	m.mu.Unlock()
	th := m.cfg.Thresholds
	r := Report{Time: time.Now()}
	add := func(name, value string, l Level) { r.Checks = append(r.Checks, Check{name, value, l}) }
	add("Current connections", strconv.Itoa(s.Connections), gradeMax(float64(s.Connections), float64(th.MaxConnections), -1))
	tp := Healthy
	if th.MaxMbps > 0 && s.Mbps > th.MaxMbps {
		tp = Warning
	}
	add("Throughput", fmt.Sprintf("%.1f Mbit/s", s.Mbps), tp)
	add("CPU", fmt.Sprintf("%.1f %%", s.CPU), gradePct(s.CPU, th.CPUWarn, th.CPUBad))
	add("Memory", fmt.Sprintf("%.1f %%", s.Memory), gradePct(s.Memory, th.MemWarn, th.MemBad))
	if s.LatencyMs < 0 {
		add("Latency through the gateway", "unknown (no check URL)", Unknown)
	} else {
		ms := time.Duration(s.LatencyMs * float64(time.Millisecond))
		l := Healthy
		switch {
		case ms > th.LatencyBad:
			l = Unhealthy
		case ms >= th.LatencyWarn:
			l = Warning
		}
		add("Latency through the gateway", fmt.Sprintf("%.1f ms", s.LatencyMs), l)
	}
	switch {
	case fdErr != nil:
		add("File descriptors", "unknown: "+fdErr.Error(), Unknown)
	case fd.Soft == 0:
		add("File descriptors", "unknown (not sampled yet)", Unknown)
	default:
		pct := 100 * float64(s.Flows) / float64(fd.Soft)
		add("File descriptors", fmt.Sprintf("%d flows, %.0f %% of the limit %d (hard %d)", s.Flows, pct, fd.Soft, fd.Hard),
			gradePct(pct, th.FDWarn, th.FDBad))
	}
	if pct, free, err := diskUsed(m.cfg.DiskPath); err != nil {
		add("Disk space", "unknown: "+err.Error(), Unknown)
	} else {
		add("Disk space", fmt.Sprintf("%.0f %% used, %d MiB free", pct, free>>20), gradePct(pct, th.DiskWarn, th.DiskBad))
	}
	if m.cfg.Cert == nil || m.cfg.Cert() == nil {
		add("TLS certificate", "unknown", Unknown)
	} else {
		left := time.Until(m.cfg.Cert().NotAfter)
		days := int(left.Hours() / 24)
		l := Healthy
		switch {
		case left <= 0:
			l = Unhealthy
		case days <= th.CertWarnDays:
			l = Warning
		}
		add("TLS certificate", fmt.Sprintf("%d days left", days), l)
	}
	add("Internal network accessibility", internalV, internal)
	if at.IsZero() {
		add("Last health report", "never", Unknown)
	} else {
		l := Healthy
		if time.Since(at) > 3*m.cfg.Interval { // the sampler is stuck
			l = Unhealthy
		}
		add("Last health report", at.UTC().Format(time.RFC3339), l)
	}
	r.Overall = Healthy
	for _, c := range r.Checks {
		if rank(c.Level) > rank(r.Overall) {
			r.Overall = c.Level
		}
	}
	return r
}

// rank orders levels for the overall grade; unknown does not spoil it.
func rank(l Level) int {
	switch l {
	case Warning:
		return 1
	case Unhealthy:
		return 2
	}
	return 0
}

// gradeMax: healthy up to limit, unhealthy above bad (or warning if bad<0).
func gradeMax(v, limit, bad float64) Level {
	switch {
	case bad >= 0 && v > bad:
		return Unhealthy
	case v > limit:
		return Warning
	}
	return Healthy
}

// gradePct: healthy below warn, warning from warn, unhealthy from bad.
func gradePct(v, warn, bad float64) Level {
	switch {
	case v >= bad:
		return Unhealthy
	case v >= warn:
		return Warning
	}
	return Healthy
}

// processCPU returns the process's user+system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return tv(ru.Utime) + tv(ru.Stime)
}

// memoryPercent is the process's resident memory as a share of the
// memory it may use: the cgroup limit if one is set, else MemTotal.
func memoryPercent() float64 {
	rss := readStatmRSS()
	limit := cgroupLimit()
	if limit == 0 {
		limit = memTotal()
	}
	if rss == 0 || limit == 0 {
		return 0
	}
	return 100 * float64(rss) / float64(limit)
}

func readStatmRSS() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

func cgroupLimit() uint64 {
	b, err := os.ReadFile("/sys/fs/cgroup/memory.max")
	if err != nil {
		return 0
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil { // "max": no limit
		return 0
	}
	return v
}

func memTotal() uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// diskUsed returns the used share and free bytes of path's filesystem.
func diskUsed(path string) (float64, uint64, error) {
	if path == "" {
		path = "/"
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(path, &fs); err != nil {
		return 0, 0, err
	}
	total := fs.Blocks * uint64(fs.Bsize)
	free := fs.Bavail * uint64(fs.Bsize)
	if total == 0 {
		return 0, 0, fmt.Errorf("statfs %s: empty filesystem", path)
	}
	return 100 * float64(total-free) / float64(total), free, nil
}
