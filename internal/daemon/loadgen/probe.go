package loadgen

import (
	"context"
	"fmt"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/procfs"
)

// Probe reads the gateway's resident memory and the CPU time it has used.
type Probe interface {
	// Sample returns the gateway's RSS in bytes and its CPU time so far.
	Sample(ctx context.Context) (rss uint64, cpu time.Duration, err error)
	// Source says where the figures come from, for the report.
	Source() string
}

// ProcProbe reads /proc/PID of a gateway on this machine.
type ProcProbe struct{ PID int }

// Sample implements Probe: RSS from /proc/PID/stat's rss pages, CPU from
// its utime and stime.
func (p ProcProbe) Sample(context.Context) (uint64, time.Duration, error) {
	proc, err := procfs.NewProc(p.PID)
	if err != nil {
		return 0, 0, err
	}
	st, err := proc.Stat()
	if err != nil {
		return 0, 0, err
	}
	return uint64(st.ResidentMemory()), time.Duration(st.CPUTime() * float64(time.Second)), nil
}

// Source implements Probe.
func (p ProcProbe) Source() string { return fmt.Sprintf("/proc/%d", p.PID) }

// MetricsProbe reads the gateway's Prometheus endpoint (the admin_http
// listener's /metrics): process_resident_memory_bytes and
// process_cpu_seconds_total, which the Go client's process collector
// exports from the same /proc figures.
type MetricsProbe struct {
	URL    string
	Client *http.Client // default http.DefaultClient
}

// Sample implements Probe.
func (p MetricsProbe) Sample(ctx context.Context) (uint64, time.Duration, error) {
	hc := p.Client
	if hc == nil {
		hc = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL, nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("%s: %s", p.URL, resp.Status)
	}
	tp := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := tp.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", p.URL, err)
	}
	rss, ok1 := gauge(fams, "process_resident_memory_bytes")
	cpu, ok2 := gauge(fams, "process_cpu_seconds_total")
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("%s: no process_resident_memory_bytes or process_cpu_seconds_total", p.URL)
	}
	return uint64(rss), time.Duration(cpu * float64(time.Second)), nil
}

// Source implements Probe.
func (p MetricsProbe) Source() string { return p.URL }

// gauge returns the value of the first sample of family name (a gauge or
// a counter).
func gauge(fams map[string]*dto.MetricFamily, name string) (float64, bool) {
	f, ok := fams[name]
	if !ok || len(f.GetMetric()) == 0 {
		return 0, false
	}
	m := f.GetMetric()[0]
	if g := m.GetGauge(); g != nil {
		return g.GetValue(), true
	}
	if c := m.GetCounter(); c != nil {
		return c.GetValue(), true
	}
	return 0, false
}

// GatewayUsage is the gateway's cost as the run saw it.
type GatewayUsage struct {
	Source string // where the figures come from ("" when not measured)
	Err    string // the last sampling error, if any

	RSSStart, RSSHeld uint64        // bytes, before setup and with everything held
	CPUSetup          time.Duration // CPU time the gateway spent during setup
	CPUHold           time.Duration // CPU time during the hold
	Hold              time.Duration // the hold's length
	Sessions          int
}

// RSSPerSession is the memory each held session (and its flows) added.
func (u GatewayUsage) RSSPerSession() float64 {
	if u.Sessions == 0 || u.RSSHeld < u.RSSStart {
		return 0
	}
	return float64(u.RSSHeld-u.RSSStart) / float64(u.Sessions)
}

// CPUPerSetup is the gateway's CPU time per session set up.
func (u GatewayUsage) CPUPerSetup() time.Duration {
	if u.Sessions == 0 {
		return 0
	}
	return u.CPUSetup / time.Duration(u.Sessions)
}

// IdleCores is the share of one core the gateway used while holding the
// sessions (1.0: a whole core).
func (u GatewayUsage) IdleCores() float64 {
	if u.Hold <= 0 {
		return 0
	}
	return u.CPUHold.Seconds() / u.Hold.Seconds()
}

// sample is one reading.
type sample struct {
	at  time.Time
	rss uint64
	cpu time.Duration
	ok  bool
}

// sampler takes readings at the run's phase boundaries.
type sampler struct {
	p     Probe
	marks map[string]sample
	err   error
}

func newSampler(p Probe) *sampler { return &sampler{p: p, marks: make(map[string]sample)} }

// sampleTimeout bounds one reading, so an unreachable /metrics cannot
// hold the run.
const sampleTimeout = 5 * time.Second

// mark takes a reading named phase.
func (s *sampler) mark(ctx context.Context, phase string) {
	if s.p == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sampleTimeout)
	defer cancel()
	rss, cpu, err := s.p.Sample(ctx)
	if err != nil {
		s.err = err
		return
	}
	s.marks[phase] = sample{at: time.Now(), rss: rss, cpu: cpu, ok: true}
}

// usage works the readings out for sessions held sessions.
func (s *sampler) usage(sessions int) GatewayUsage {
	if s.p == nil {
		return GatewayUsage{}
	}
	u := GatewayUsage{Source: s.p.Source(), Sessions: sessions}
	if s.err != nil {
		u.Err = s.err.Error()
	}
	start, setup, flows, hold := s.marks["start"], s.marks["setup"], s.marks["flows"], s.marks["hold"]
	if start.ok {
		u.RSSStart = start.rss
	}
	if start.ok && setup.ok {
		u.CPUSetup = setup.cpu - start.cpu
	}
	// RSS held: at the end of the hold, else the last phase reached (a
	// run cut short).
	for _, m := range []sample{hold, flows, setup} {
		if m.ok {
			u.RSSHeld = m.rss
			break
		}
	}
	if flows.ok && hold.ok {
		u.CPUHold = hold.cpu - flows.cpu
		u.Hold = hold.at.Sub(flows.at)
	}
	return u
}
