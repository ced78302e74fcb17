// Package loadgen is the load generator behind `underpass loadtest`: it
// holds many sessions on a gateway, opens flows through them to an echo
// server, moves bulk data, runs a reconnect storm, and reports the result
// in the README's sizing-table terms (sessions, flows, Mbit/s, setup rate,
// and the gateway's RSS and CPU per 1,000 devices).
//
// Two kinds of session:
//   - light: AnyConnect over TLS with no IP stack (the XML sign-in, CSTP
//     CONNECT, DPD requests answered), the cheapest client that still costs
//     the gateway a whole session;
//   - full: a tunnel.Client over TLS or QUIC (CONNECT-IP) with its own
//     userspace stack, which can carry flows.
//
// Every phase is bounded by the run's deadline and its context; Run
// returns what it measured so far when either ends.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Mode is the kind of session the generator holds.
type Mode string

// Modes.
const (
	ModeLight Mode = "light" // AnyConnect over TLS, no IP stack
	ModeTLS   Mode = "tls"   // tunnel.Client over AnyConnect (CSTP over TLS)
	ModeQUIC  Mode = "quic"  // tunnel.Client over QUIC (CONNECT-IP)
)

// Defaults, each with its reason.
const (
	// DefaultSessions is small enough for a laptop gateway and a quick look.
	DefaultSessions = 100
	// DefaultConcurrency bounds setups in flight: enough to keep two cores
	// of gateway busy with handshakes, few enough that a slow gateway is
	// measured rather than buried under timeouts.
	DefaultConcurrency = 32
	// DefaultFlowBytes is what each flow sends and expects back: a few
	// segments each way, so every flow has carried data (its buffers and
	// goroutine stacks have grown) before it is held.
	DefaultFlowBytes = 4 << 10
	// DefaultSetupTimeout bounds one session's sign-in and CONNECT, as the
	// gateway's own handshake timeout does (tunnel.DefaultHandshakeTimeout).
	DefaultSetupTimeout = 15 * time.Second
	// DefaultDuration bounds the whole run.
	DefaultDuration = 10 * time.Minute
	// failoverRetry is the pause between a lost session's attempts to
	// come back: a balancer takes a dead server out after a few failed
	// checks (HAProxy's default: 3 × 2 s), and until then, or while the
	// surviving servers are busy, an attempt may fail fast. Half a second
	// keeps a retry from hammering them and costs the measurement at
	// most that much.
	failoverRetry = 500 * time.Millisecond
)

// Config is one load run. Server and Username with Password, or Token, are required;
// Target is required when Flows or BulkFlows is set. Other zero values
// take the defaults above.
type Config struct {
	// Server is the gateway: "host:port" or "https://host:port/path".
	Server string
	// PinSHA256 accepts exactly the gateway certificate with this
	// public-key hash ("pin-sha256:BASE64", as openconnect's
	// --servercert); empty: verify against the system roots.
	PinSHA256 string
	// Username and Password sign every session in (a static user or an
	// IdP's password grant, as openconnect would).
	Username, Password string
	// Token, instead, signs every session in with this OIDC access or ID
	// token (Authorization: Bearer on the first request, as openconnect
	// --token-mode=oidc --http-auth=Bearer): the sign-in an IdP's users
	// make, without the IdP in the measurement.
	Token string

	// Mode is the kind of session; default ModeLight.
	Mode Mode
	// Sessions is how many sessions to hold; default DefaultSessions.
	Sessions int
	// Rate caps new sessions per second; 0: as fast as Concurrency allows.
	Rate float64
	// Concurrency caps setups (and reconnects) in flight; default
	// DefaultConcurrency.
	Concurrency int
	// SetupTimeout bounds one session's setup; default DefaultSetupTimeout.
	SetupTimeout time.Duration

	// Target is the echo server's host:port, reached through the tunnel
	// (ModeTLS and ModeQUIC only). `underpass loadtest -echo` serves one.
	Target string
	// Flows is how many flows each session opens and holds. Each sends
	// FlowBytes and checks that the same bytes come back.
	Flows int
	// FlowBytes is what each held flow echoes; default DefaultFlowBytes.
	FlowBytes int
	// BulkFlows flows each echo BulkBytes at once, for throughput; they
	// are spread over the sessions and closed after.
	BulkFlows int
	BulkBytes int64

	// Hold keeps the sessions and flows up this long after setup, for
	// the gateway's idle cost.
	Hold time.Duration
	// Reconnect runs a reconnect storm after the hold: every session's
	// connection is dropped at once and comes back with its cookie (light
	// and TLS sessions: a QUIC client's UDP socket is its own, so it
	// cannot be cut from outside).
	Reconnect bool
	// Failover keeps light sessions through the loss of their server: a
	// session whose connection ends without a DISCONNECT or TERMINATE
	// from the gateway (the server was killed, the connection cut)
	// connects again to Server with its cookie and address, every
	// failoverRetry, each attempt bounded by SetupTimeout, Concurrency
	// attempts in flight at most, until it is back or the hold ends.
	// Behind a load balancer this is the reconnect storm a dead server
	// causes; Result's Lost, Recovered and Failover fields measure it.
	// Light mode only.
	Failover bool
	// Duration bounds the whole run; default DefaultDuration.
	Duration time.Duration

	// Gateway samples the gateway's RSS and CPU time; nil: not measured.
	Gateway Probe
	// Logger receives progress; default silent.
	Logger *slog.Logger
}

// Errors counts failures per category.
type Errors struct {
	SignInRefused  int64 // the gateway refused the credentials or cookie
	ConnectFailed  int64 // TCP, TLS, QUIC or CSTP CONNECT failed (not a refusal of credentials)
	SessionDropped int64 // an established session ended before logoff
	ReconnectFail  int64 // a session did not come back in the reconnect storm
	FlowReset      int64 // a flow was refused or reset
	FlowFailed     int64 // a flow timed out or failed otherwise
	BytesLost      int64 // bytes that did not come back, or came back different
}

// Total is the sum of all categories.
func (e Errors) Total() int64 {
	return e.SignInRefused + e.ConnectFailed + e.SessionDropped + e.ReconnectFail + e.FlowReset + e.FlowFailed + e.BytesLost
}

// Result is what a run measured.
type Result struct {
	Mode     Mode
	Sessions int // sessions up at the end of setup
	Flows    int // flows held (carried their bytes, then stayed open)

	SetupTime time.Duration // first setup start to last setup end
	BulkBytes int64         // bytes echoed by the bulk flows (each way)
	BulkTime  time.Duration

	Reconnected   int           // sessions back after the storm
	ReconnectTime time.Duration // storm start to the last session back

	// Failover (Config.Failover): sessions whose connection was lost, and
	// of those, the ones back with their cookie and address.
	Lost, Recovered int
	// FailoverTime is the first loss to the last session back; Median,
	// P99 and Max are over each recovered session's loss to its return.
	FailoverTime                             time.Duration
	FailoverMedian, FailoverP99, FailoverMax time.Duration

	Gateway GatewayUsage
	Errors  Errors
	// Interrupted is why the run stopped early (the context or Duration),
	// nil when it ran every phase.
	Interrupted error
}

// SetupRate is sessions set up per second.
func (r *Result) SetupRate() float64 { return perSecond(r.Sessions, r.SetupTime) }

// Mbps is the bulk flows' throughput, each way, in Mbit/s.
func (r *Result) Mbps() float64 {
	if r.BulkTime <= 0 {
		return 0
	}
	return float64(r.BulkBytes) * 8 / r.BulkTime.Seconds() / 1e6
}

// ReconnectRate is sessions back per second in the storm.
func (r *Result) ReconnectRate() float64 { return perSecond(r.Reconnected, r.ReconnectTime) }

func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// ConfigError is a Config that cannot run; Field names the Go field.
type ConfigError struct {
	Field, Reason string
}

func (e *ConfigError) Error() string { return "loadgen: " + e.Field + ": " + e.Reason }

// validate fills defaults and reports the first problem.
func (c *Config) validate() error {
	if c.Server == "" {
		return &ConfigError{"Server", "empty"}
	}
	if c.Username == "" && c.Token == "" {
		return &ConfigError{"Username", "empty, and no Token"}
	}
	if c.Username != "" && c.Token != "" {
		return &ConfigError{"Token", "set with Username: give one credential"}
	}
	switch c.Mode {
	case "":
		c.Mode = ModeLight
	case ModeLight, ModeTLS, ModeQUIC:
	default:
		return &ConfigError{"Mode", fmt.Sprintf("%q: want light, tls or quic", c.Mode)}
	}
	for _, f := range []struct {
		name string
		v    int64
	}{{"Sessions", int64(c.Sessions)}, {"Concurrency", int64(c.Concurrency)}, {"Flows", int64(c.Flows)},
		{"FlowBytes", int64(c.FlowBytes)}, {"BulkFlows", int64(c.BulkFlows)}, {"BulkBytes", c.BulkBytes}} {
		if f.v < 0 {
			return &ConfigError{f.name, fmt.Sprintf("%d: must not be negative", f.v)}
		}
	}
	if c.Rate < 0 {
		return &ConfigError{"Rate", fmt.Sprintf("%g: must not be negative", c.Rate)}
	}
	if c.Mode == ModeLight && (c.Flows > 0 || c.BulkFlows > 0) {
		return &ConfigError{"Flows", "light sessions have no IP stack: flows need mode tls or quic"}
	}
	if c.Failover && c.Mode != ModeLight {
		return &ConfigError{"Failover", "light sessions only"}
	}
	if c.Mode == ModeQUIC && c.Reconnect {
		return &ConfigError{"Reconnect", "QUIC sessions cannot be made to reconnect (the client's UDP socket is its own): use mode light or tls"}
	}
	if (c.Flows > 0 || c.BulkFlows > 0) && c.Target == "" {
		return &ConfigError{"Target", "flows need an echo server (underpass loadtest -echo ADDR serves one)"}
	}
	if c.BulkFlows > 0 && c.BulkBytes == 0 {
		return &ConfigError{"BulkBytes", "0 with BulkFlows set"}
	}
	if c.Sessions == 0 {
		c.Sessions = DefaultSessions
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.FlowBytes == 0 {
		c.FlowBytes = DefaultFlowBytes
	}
	if c.SetupTimeout <= 0 {
		c.SetupTimeout = DefaultSetupTimeout
	}
	if c.Duration <= 0 {
		c.Duration = DefaultDuration
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// session is one held session of either kind.
type session interface {
	// reconnect drops the connection and brings the session back with its
	// cookie; it returns when the session is back or ctx ends.
	reconnect(ctx context.Context) error
	// done is closed when the session has ended, by close or not.
	done() <-chan struct{}
	// close logs the session off.
	close()
}

// flowDialer is a session that carries flows.
type flowDialer interface {
	session
	dial(ctx context.Context, target string) (net.Conn, error)
}

// run is the state of one Run.
type run struct {
	cfg  Config
	ep   *endpoint // light sessions' gateway and TLS settings
	log  *slog.Logger
	errs struct {
		signIn, connect, dropped, reconnect, reset, flowFailed, lost atomic.Int64
	}
	mu       sync.Mutex
	sessions []session
	flows    []net.Conn
	closing  atomic.Bool // close has begun: sessions ending now are not drops
	storming atomic.Bool // a storm cuts connections: its failures count as ReconnectFail

	fo failovers // Config.Failover
}

// failovers is the state of Config.Failover's reconnects.
type failovers struct {
	ctx  context.Context // ends with the hold: attempts stop
	stop context.CancelFunc
	sem  chan struct{} // attempts in flight

	mu        sync.Mutex
	over      bool // the hold has ended: no failover starts
	wg        sync.WaitGroup
	firstLost time.Time
	lastBack  time.Time
	lost      int
	took      []time.Duration // each recovered session's loss to return
}

// Run runs the load described by cfg: setup, flows, bulk, hold, the
// reconnect storm, then logoff of every session. It returns the result
// even when ctx or cfg.Duration ended it early (Result.Interrupted says
// so); the error is for a Config that cannot run.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	ep, err := newEndpoint(&cfg)
	if err != nil {
		return nil, err
	}
	r := &run{cfg: cfg, ep: ep, log: cfg.Logger}
	res := &Result{Mode: cfg.Mode}
	probe := newSampler(cfg.Gateway)
	defer func() {
		r.closeAll()
		res.Errors = r.counts()
	}()
	r.fo.ctx, r.fo.stop = context.WithCancel(ctx)
	r.fo.sem = make(chan struct{}, cfg.Concurrency)
	defer r.endFailovers(res) // before closeAll: no session comes back after its logoff

	probe.mark(ctx, "start")
	r.setup(ctx, res)
	probe.mark(ctx, "setup")
	if err := ctx.Err(); err != nil {
		res.Interrupted = err
		res.Gateway = probe.usage(res.Sessions)
		return res, nil
	}
	if cfg.Flows > 0 {
		res.Flows = r.openFlows(ctx)
	}
	if cfg.BulkFlows > 0 && ctx.Err() == nil {
		res.BulkBytes, res.BulkTime = r.bulk(ctx)
	}
	probe.mark(ctx, "flows")
	if cfg.Hold > 0 && ctx.Err() == nil {
		r.log.Info("holding", "sessions", res.Sessions, "flows", res.Flows, "for", cfg.Hold)
		select {
		case <-time.After(cfg.Hold):
		case <-ctx.Done():
		}
	}
	r.endFailovers(res)
	probe.mark(ctx, "hold")
	if cfg.Reconnect && ctx.Err() == nil {
		res.Reconnected, res.ReconnectTime = r.storm(ctx)
		probe.mark(ctx, "storm")
		if res.Flows > 0 {
			r.recheckFlows(ctx)
		}
	}
	res.Interrupted = ctx.Err()
	res.Gateway = probe.usage(res.Sessions)
	return res, nil
}

// counts reads the error counters.
func (r *run) counts() Errors {
	e := &r.errs
	return Errors{SignInRefused: e.signIn.Load(), ConnectFailed: e.connect.Load(), SessionDropped: e.dropped.Load(),
		ReconnectFail: e.reconnect.Load(), FlowReset: e.reset.Load(), FlowFailed: e.flowFailed.Load(), BytesLost: e.lost.Load()}
}

// setup brings cfg.Sessions sessions up at cfg.Rate with cfg.Concurrency
// in flight.
func (r *run) setup(ctx context.Context, res *Result) {
	lim := rate.NewLimiter(rate.Inf, 1)
	if r.cfg.Rate > 0 {
		lim = rate.NewLimiter(rate.Limit(r.cfg.Rate), 1)
	}
	start := time.Now()
	var last atomic.Int64
	fanOut(ctx, r.cfg.Sessions, r.cfg.Concurrency, lim.Wait, func(i int) {
		sctx, cancel := context.WithTimeout(ctx, r.cfg.SetupTimeout)
		defer cancel()
		s, err := r.open(sctx, i)
		if err != nil {
			if ctx.Err() == nil { // not the run's end cutting it short
				r.countSetup(err)
			}
			r.log.Debug("session setup failed", "n", i, "err", err)
			return
		}
		storeMax(&last, int64(time.Since(start)))
		r.mu.Lock()
		r.sessions = append(r.sessions, s)
		r.mu.Unlock()
		go r.watch(s)
	})
	res.Sessions = len(r.sessions)
	res.SetupTime = time.Duration(last.Load())
	r.log.Info("setup done", "sessions", res.Sessions, "in", res.SetupTime.Round(time.Millisecond))
}

// fanOut runs fn(0) ... fn(n-1), each on its own goroutine, at most limit
// at once; before starting each it waits for wait (the ramp's rate, or
// nil) and a free slot. It starts no more once ctx ends, and returns how
// many it started when all of those have returned.
func fanOut(ctx context.Context, n, limit int, wait func(context.Context) error, fn func(i int)) int {
	sem := make(chan struct{}, max(limit, 1))
	var wg sync.WaitGroup
	started := 0
	for ; started < n; started++ {
		if wait != nil && wait(ctx) != nil {
			break
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			fn(i)
		}(started)
	}
	wg.Wait()
	return started
}

// open sets one session up.
func (r *run) open(ctx context.Context, n int) (session, error) {
	if r.cfg.Mode == ModeLight {
		var lost func(*light)
		if r.cfg.Failover {
			lost = r.failover
		}
		return dialLight(ctx, r.ep, &r.cfg, n, lost)
	}
	return dialFull(ctx, &r.cfg, n)
}

// watch counts a session that ends before the run closes it.
func (r *run) watch(s session) {
	<-s.done()
	if l, ok := s.(*light); ok && l.failedOver.Load() {
		return // counted as ReconnectFail
	}
	if !r.closing.Load() && !r.storming.Load() {
		r.errs.dropped.Add(1)
	}
}

// countSetup files a setup error under its category.
func (r *run) countSetup(err error) {
	var re *refusedError
	if errors.As(err, &re) {
		r.errs.signIn.Add(1)
		return
	}
	r.errs.connect.Add(1)
}

// storm drops every session's connection at once and waits for all to
// come back, cfg.Concurrency at a time.
func (r *run) storm(ctx context.Context) (int, time.Duration) {
	r.mu.Lock()
	ss := append([]session(nil), r.sessions...)
	r.mu.Unlock()
	r.storming.Store(true)
	defer r.storming.Store(false)
	var back, last atomic.Int64
	start := time.Now()
	fanOut(ctx, len(ss), r.cfg.Concurrency, nil, func(i int) {
		sctx, cancel := context.WithTimeout(ctx, r.cfg.SetupTimeout)
		defer cancel()
		if err := ss[i].reconnect(sctx); err != nil {
			if ctx.Err() == nil {
				r.errs.reconnect.Add(1)
			}
			r.log.Debug("reconnect failed", "err", err)
			return
		}
		back.Add(1)
		storeMax(&last, int64(time.Since(start)))
	})
	d := time.Duration(last.Load())
	r.log.Info("reconnect storm done", "back", back.Load(), "of", len(ss), "in", d.Round(time.Millisecond))
	return int(back.Load()), d
}

// failover brings a light session whose connection was lost back with
// its cookie (Config.Failover).
func (r *run) failover(s *light) {
	fo := &r.fo
	lostAt := time.Now()
	fo.mu.Lock()
	if fo.over {
		fo.mu.Unlock()
		s.end() // after the hold: an ordinary drop
		return
	}
	fo.wg.Add(1)
	if fo.lost == 0 || lostAt.Before(fo.firstLost) {
		fo.firstLost = lostAt
	}
	fo.lost++
	fo.mu.Unlock()
	defer fo.wg.Done()
	for {
		err := r.attempt(s)
		if err == nil {
			now := time.Now()
			fo.mu.Lock()
			fo.took = append(fo.took, now.Sub(lostAt))
			if now.After(fo.lastBack) {
				fo.lastBack = now
			}
			fo.mu.Unlock()
			return
		}
		r.log.Debug("failover attempt failed", "addr", s.addr, "err", err)
		var re *refusedError
		if !errors.As(err, &re) {
			select {
			case <-time.After(failoverRetry):
				continue
			case <-fo.ctx.Done(): // the hold ended first
			}
		}
		// The cookie was refused, or the hold ended first: lost for good.
		s.failedOver.Store(true)
		r.errs.reconnect.Add(1)
		s.end()
		return
	}
}

// attempt is one try of a failover, holding one of Concurrency slots.
func (r *run) attempt(s *light) error {
	fo := &r.fo
	select {
	case fo.sem <- struct{}{}:
	case <-fo.ctx.Done():
		return fo.ctx.Err()
	}
	defer func() { <-fo.sem }()
	ctx, cancel := context.WithTimeout(fo.ctx, r.cfg.SetupTimeout)
	defer cancel()
	return s.redial(ctx)
}

// endFailovers ends Config.Failover's attempts, waits for them, and
// fills res's failover fields. Safe to call more than once.
func (r *run) endFailovers(res *Result) {
	fo := &r.fo
	fo.mu.Lock()
	over := fo.over
	fo.over = true
	fo.mu.Unlock()
	if over {
		return
	}
	fo.stop()
	fo.wg.Wait()
	res.Lost, res.Recovered = fo.lost, len(fo.took)
	if len(fo.took) == 0 {
		return
	}
	res.FailoverTime = fo.lastBack.Sub(fo.firstLost)
	slices.Sort(fo.took)
	res.FailoverMedian = fo.took[len(fo.took)/2]
	res.FailoverP99 = fo.took[(len(fo.took)*99)/100]
	res.FailoverMax = fo.took[len(fo.took)-1]
	r.log.Info("failover done", "lost", res.Lost, "back", res.Recovered, "in", res.FailoverTime.Round(time.Millisecond))
}

// storeMax stores v in a unless a holds more.
func storeMax(a *atomic.Int64, v int64) {
	for {
		old := a.Load()
		if old >= v || a.CompareAndSwap(old, v) {
			return
		}
	}
}

// closeAll closes the flows, then logs every session off.
func (r *run) closeAll() {
	r.closing.Store(true)
	r.mu.Lock()
	flows, ss := r.flows, r.sessions
	r.flows, r.sessions = nil, nil
	r.mu.Unlock()
	for _, f := range flows {
		f.Close()
	}
	// Not the run's context: it may have ended, and every session still
	// logs off.
	fanOut(context.Background(), len(ss), r.cfg.Concurrency, nil, func(i int) { ss[i].close() })
}
