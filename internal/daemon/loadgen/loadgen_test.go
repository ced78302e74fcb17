package loadgen

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/goleak"

	"github.com/underpass/underpass/internal/testinfra/gwtest"
	"github.com/underpass/underpass/internal/testinfra/oidctest"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// quic-go's UDP reader and timers end asynchronously after Close.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// testTimeout bounds every run here: the sizes below take a second or two.
const testTimeout = 60 * time.Second

// echoTarget serves ServeEcho on loopback until the test ends and returns
// its corporate stand-in address (gwtest's gateway dials it on loopback).
func echoTarget(t *testing.T) string {
	t.Helper()
	return serveTarget(t, func(ctx context.Context, l net.Listener) error { return ServeEcho(ctx, l, nil) })
}

// serveTarget serves l with serve until the test ends.
func serveTarget(t *testing.T, serve func(context.Context, net.Listener) error) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("echo server: %v", err)
		}
	})
	return gwtest.Corp(netip.MustParseAddrPort(l.Addr().String())).String()
}

func baseConfig(g *gwtest.Gateway) Config {
	return Config{Server: g.Addr, PinSHA256: g.Pin, Username: gwtest.User, Password: gwtest.Password,
		Duration: testTimeout, Gateway: ProcProbe{PID: os.Getpid()}}
}

// sessionsNow is the gateway's signed-in session count.
func sessionsNow(g *gwtest.Gateway) int { return len(g.Sessions()) }

// TestRun: every mode holds its sessions and flows, moves its bulk bytes,
// survives the reconnect storm with its flows intact, loses nothing, and
// logs every session off at the end.
func TestRun(t *testing.T) {
	g := gwtest.Start(t, nil)
	target := echoTarget(t)
	for _, tc := range []struct {
		mode      Mode
		flows     int
		bulk      int
		reconnect int // sessions the storm brings back
	}{
		{ModeLight, 0, 0, 12},
		{ModeTLS, 3, 2, 12},
		{ModeQUIC, 3, 2, 0}, // a QUIC client's UDP socket is its own: no storm
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			cfg := baseConfig(g)
			cfg.Mode, cfg.Sessions, cfg.Rate, cfg.Concurrency = tc.mode, 12, 200, 4
			cfg.Target, cfg.Flows, cfg.FlowBytes = target, tc.flows, 20_000
			cfg.BulkFlows, cfg.BulkBytes = tc.bulk, 1<<20
			cfg.Hold, cfg.Reconnect = 100*time.Millisecond, tc.mode != ModeQUIC
			held := make(chan int, 1)
			res, err := runWatching(t, cfg, g, held)
			if err != nil {
				t.Fatal(err)
			}
			var sb strings.Builder
			WriteSummary(&sb, res)
			t.Log("\n" + sb.String())
			if res.Errors != (Errors{}) || res.Interrupted != nil {
				t.Errorf("errors %+v, interrupted %v", res.Errors, res.Interrupted)
			}
			if res.Sessions != 12 || res.Flows != 12*tc.flows {
				t.Errorf("sessions %d, flows %d; want 12, %d", res.Sessions, res.Flows, 12*tc.flows)
			}
			if want := int64(tc.bulk) << 20; res.BulkBytes != want {
				t.Errorf("bulk bytes %d, want %d", res.BulkBytes, want)
			}
			if res.Reconnected != tc.reconnect {
				t.Errorf("reconnected %d, want %d", res.Reconnected, tc.reconnect)
			}
			if n := <-held; n != 12 {
				t.Errorf("gateway held %d sessions during the run, want 12", n)
			}
			if res.Gateway.RSSHeld == 0 || res.Gateway.Source == "" {
				t.Errorf("gateway usage not measured: %+v", res.Gateway)
			}
			noneConnected(t, g)
		})
	}
}

// noneConnected fails the test if a session is still there after the
// run: every client logged off, so every session ended (none lingers
// detached for ReconnectGrace, as one did when a logoff raced the
// gateway's writer: TestLogoffWhileGatewaySends in tunnel).
func noneConnected(t *testing.T, g *gwtest.Gateway) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second) // a dozen closes: milliseconds
	for {
		var connected []string
		for _, s := range g.Sessions() {
			if s.Connected {
				connected = append(connected, s.DeviceID)
			}
		}
		if len(connected) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sessions still connected after the run: %v", connected)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Every client logged off: no session may linger detached (a logoff
	// racing the gateway's writer once passed for a lost connection).
	for _, s := range g.Sessions() {
		t.Errorf("session %s (%s) lingers detached after the run's logoff", s.ID, s.DeviceID)
		_ = g.Disconnect(s.ID)
	}
}

// runWatching runs cfg and reports on held the gateway's session count
// seen when the run reaches its hold (the probe's "flows" mark).
func runWatching(t *testing.T, cfg Config, g *gwtest.Gateway, held chan<- int) (*Result, error) {
	t.Helper()
	cfg.Gateway = &hookProbe{Probe: cfg.Gateway, at: 3, fn: func() { held <- sessionsNow(g) }}
	return Run(context.Background(), cfg)
}

// hookProbe calls fn at its at'th sample (start, setup, flows, ...).
type hookProbe struct {
	Probe
	n, at int
	fn    func()
}

func (h *hookProbe) Sample(ctx context.Context) (uint64, time.Duration, error) {
	if h.n++; h.n == h.at {
		h.fn()
	}
	return h.Probe.Sample(ctx)
}

// waitSessions waits until the gateway holds n sessions (logoff is
// asynchronous on its side).
func waitSessions(t *testing.T, g *gwtest.Gateway, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second) // logoff of a dozen sessions: milliseconds
	for sessionsNow(g) != n {
		if time.Now().After(deadline) {
			for _, s := range g.Sessions() {
				t.Logf("left: %s device %s connected %v created %v in %d out %d", s.ID, s.DeviceID, s.Connected, s.Created.Format("15:04:05.000"), s.BytesIn, s.BytesOut)
			}
			t.Fatalf("gateway holds %d sessions, want %d", sessionsNow(g), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRunCountsFailures: each failure lands in its category, byte-exact.
func TestRunCountsFailures(t *testing.T) {
	g := gwtest.Start(t, nil)
	// corrupt echoes its input with one byte changed at offset 1000.
	corrupt := serveTarget(t, serveEach(func(c net.Conn) {
		b, _ := io.ReadAll(io.LimitReader(c, 4000))
		if len(b) > 1000 {
			b[1000] ^= 0xff
		}
		_, _ = c.Write(b)
	}))
	// short reads all 4000 bytes but echoes only the first 3000, then
	// closes (a FIN: nothing is left unread, so no reset).
	short := serveTarget(t, serveEach(func(c net.Conn) {
		b := make([]byte, 4000)
		_, _ = io.ReadFull(c, b)
		_, _ = c.Write(b[:3000])
	}))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := gwtest.Corp(netip.MustParseAddrPort(l.Addr().String())).String()
	l.Close() // nothing listens: the gateway resets the flows

	for _, tc := range []struct {
		name   string
		mod    func(*Config)
		want   Errors
		flows  int
		setups int
	}{
		{"wrong password", func(c *Config) { c.Password = "wrong" }, Errors{SignInRefused: 3}, 0, 0},
		{"wrong password, tls", func(c *Config) { c.Mode, c.Password = ModeTLS, "wrong" }, Errors{SignInRefused: 3}, 0, 0},
		{"wrong pin", func(c *Config) { c.PinSHA256 = "pin-sha256:" + strings.Repeat("A", 43) + "=" }, Errors{ConnectFailed: 3}, 0, 0},
		{"differs", func(c *Config) { c.Mode, c.Target = ModeTLS, corrupt }, Errors{FlowFailed: 6, BytesLost: 6 * 3000}, 0, 3},
		{"short", func(c *Config) { c.Mode, c.Target = ModeTLS, short }, Errors{FlowFailed: 6, BytesLost: 6 * 1000}, 0, 3},
		{"refused", func(c *Config) { c.Mode, c.Target = ModeTLS, closed }, Errors{FlowReset: 6}, 0, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig(g)
			cfg.Sessions, cfg.FlowBytes, cfg.SetupTimeout = 3, 4000, 10*time.Second
			tc.mod(&cfg)
			if cfg.Target != "" {
				cfg.Flows = 2
			}
			res, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if res.Errors != tc.want {
				t.Errorf("errors %+v, want %+v", res.Errors, tc.want)
			}
			if res.Sessions != tc.setups || res.Flows != tc.flows {
				t.Errorf("sessions %d, flows %d; want %d, %d", res.Sessions, res.Flows, tc.setups, tc.flows)
			}
			waitSessions(t, g, 0)
		})
	}
}

// serveEach serves each connection with handle, closing it after.
func serveEach(handle func(net.Conn)) func(context.Context, net.Listener) error {
	return func(ctx context.Context, l net.Listener) error {
		testenvServe(ctx, l, handle)
		return nil
	}
}

// testenvServe accepts until ctx ends.
func testenvServe(ctx context.Context, l net.Listener, handle func(net.Conn)) {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(testTimeout))
			handle(c)
		}()
	}
}

// TestSessionDropped: a session the gateway ends during the hold is
// counted as dropped.
func TestSessionDropped(t *testing.T) {
	g := gwtest.Start(t, nil)
	cfg := baseConfig(g)
	cfg.Sessions, cfg.Hold = 4, 2*time.Second
	cfg.Gateway = &hookProbe{Probe: cfg.Gateway, at: 3, fn: func() {
		ss := g.Sessions()
		if len(ss) == 0 {
			t.Error("no sessions to disconnect")
			return
		}
		if err := g.Disconnect(ss[0].ID); err != nil {
			t.Error(err)
		}
	}}
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Errors{SessionDropped: 1}); res.Errors != want {
		t.Errorf("errors %+v, want %+v", res.Errors, want)
	}
}

// TestConfigErrors: a Config that cannot run is refused, naming its field.
func TestConfigErrors(t *testing.T) {
	ok := Config{Server: "127.0.0.1:1", Username: "u"}
	for _, tc := range []struct {
		field string
		mod   func(*Config)
	}{
		{"Server", func(c *Config) { c.Server = "" }},
		{"Server", func(c *Config) { c.Server = "ftp://x" }},
		{"Username", func(c *Config) { c.Username = "" }},
		{"Token", func(c *Config) { c.Token = "x.y.z" }}, // with Username
		{"Mode", func(c *Config) { c.Mode = "udp" }},
		{"Sessions", func(c *Config) { c.Sessions = -1 }},
		{"Rate", func(c *Config) { c.Rate = -1 }},
		{"Flows", func(c *Config) { c.Flows, c.Target = 1, "x:1" }}, // light mode
		{"Target", func(c *Config) { c.Mode, c.Flows = ModeTLS, 1 }},
		{"BulkBytes", func(c *Config) { c.Mode, c.BulkFlows, c.Target = ModeTLS, 1, "x:1" }},
		{"PinSHA256", func(c *Config) { c.PinSHA256 = "pin-sha256:abc" }},
		{"Reconnect", func(c *Config) { c.Mode, c.Reconnect = ModeQUIC, true }},
		{"Failover", func(c *Config) { c.Mode, c.Failover = ModeTLS, true }},
	} {
		cfg := ok
		tc.mod(&cfg)
		_, err := Run(context.Background(), cfg)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field {
			t.Errorf("%s: err %v, want a ConfigError on %s", tc.field, err, tc.field)
		}
	}
}

// TestEcho: the echo check passes on an exact echo and measures the loss
// of a short one, from the first byte missing.
func TestEcho(t *testing.T) {
	for _, tc := range []struct {
		n, echoed int64
		lost      int64
	}{{100_000, 100_000, 0}, {100_000, 70_000, 30_000}, {10, 0, 10}} {
		a, b := net.Pipe()
		go func() {
			buf := make([]byte, tc.n)
			_, _ = io.ReadFull(b, buf)
			_, _ = b.Write(buf[:tc.echoed])
			b.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		got, err := echo(ctx, a, 5, tc.n)
		cancel()
		a.Close()
		var le *lostError
		switch {
		case tc.lost == 0 && (err != nil || got != tc.n):
			t.Errorf("n=%d: echo = %d, %v", tc.n, got, err)
		case tc.lost > 0 && (!errors.As(err, &le) || le.lost != tc.lost || got != tc.echoed):
			t.Errorf("n=%d echoed=%d: echo = %d, %v; want %d lost", tc.n, tc.echoed, got, err, tc.lost)
		}
	}
}

// TestLightAnswersDPD: light sessions stay up past the gateway's
// dead-peer time because they answer its DPD requests (they send nothing
// else).
func TestLightAnswersDPD(t *testing.T) {
	g := gwtest.Start(t, func(c *tunnel.Config) { c.DPD = time.Second }) // the least; dead after 2.5 s of silence
	cfg := baseConfig(g)
	cfg.Sessions, cfg.Hold = 4, 4*time.Second
	held := make(chan int, 1)
	res, err := runWatching(t, cfg, g, held)
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != (Errors{}) || res.Sessions != 4 {
		t.Errorf("sessions %d, errors %+v", res.Sessions, res.Errors)
	}
	<-held
	noneConnected(t, g)
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestEchoOneDescriptorPerConnection: a held echo connection costs the
// server one descriptor (io.Copy between sockets would splice through a
// pipe: three), so the echo server holds as many flows as its limit.
func TestEchoOneDescriptorPerConnection(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeEcho(ctx, l, nil) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	const n = 50
	before := openFDs(t)
	for i := range n {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := echo(ctx, c, i, 3000); err != nil { // the server's copy loop is running
			t.Fatal(err)
		}
	}
	// Each connection: the client's descriptor and the server's.
	if got := openFDs(t) - before; got > 2*n+4 { // +4: the runtime may open a few of its own
		t.Errorf("%d connections opened %d descriptors, want about %d", n, got, 2*n)
	}
}

// TestEchoSurvivesEMFILE: when accept fails for lack of descriptors the
// echo server logs, waits and serves again once descriptors are free.
func TestEchoSurvivesEMFILE(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs testenv.LogBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeEcho(ctx, l, slog.New(slog.NewTextHandler(&logs, nil))) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	restore := func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) }
	defer restore()
	// The client's socket takes the last descriptor; the server's accept
	// then has none.
	low := lim
	low.Cur = uint64(openFDs(t)) // the count includes ReadDir's own descriptor, closed since: room for one more
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		restore()
		t.Fatalf("dial under the low limit: %v", err)
	}
	defer c.Close()
	deadline := time.Now().Add(5 * time.Second) // the first retry comes after 5 ms
	for !strings.Contains(logs.String(), "too many open files") {
		if time.Now().After(deadline) {
			restore()
			t.Fatalf("no accept failure logged: %q", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	restore()
	ectx, ecancel := context.WithTimeout(ctx, 10*time.Second) // the backoff is at most 1 s
	defer ecancel()
	if _, err := echo(ectx, c, 1, 1000); err != nil {
		t.Errorf("echo after the limit was raised: %v", err)
	}
}

// TestRunToken: sessions of both kinds sign in with a bearer token (one
// XML request, no form), and a token the gateway does not accept is
// counted as a refused sign-in.
func TestRunToken(t *testing.T) {
	idp, o := oidctest.Start(t, "underpass")
	g := gwtest.Start(t, func(c *tunnel.Config) { c.Authenticator = o })
	for _, tc := range []struct {
		mode     Mode
		audience string
		want     Errors
		sessions int
	}{
		{ModeLight, "underpass", Errors{}, 4},
		{ModeTLS, "underpass", Errors{}, 4},
		{ModeLight, "another-app", Errors{SignInRefused: 4}, 0},
		{ModeTLS, "another-app", Errors{SignInRefused: 4}, 0},
	} {
		cfg := baseConfig(g)
		cfg.Username, cfg.Password = "", ""
		cfg.Mode, cfg.Sessions, cfg.Token = tc.mode, 4, idp.Token(t, "alice", tc.audience)
		res, err := Run(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if res.Errors != tc.want || res.Sessions != tc.sessions {
			t.Errorf("%s, audience %s: %d sessions, errors %+v; want %d, %+v", tc.mode, tc.audience, res.Sessions, res.Errors, tc.sessions, tc.want)
		}
	}
	for _, s := range g.Sessions() {
		if s.Method != "token" || s.User != "alice" {
			t.Errorf("session %s: method %q user %q, want a token sign-in of alice", s.ID, s.Method, s.User)
		}
	}
	noneConnected(t, g)
}

// TestMetricsProbe: the /metrics probe reads the process collector's
// figures (this process's, as /proc gives them), and a page without them
// is an error, not zeros.
func TestMetricsProbe(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	full := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer full.Close()
	empty := httptest.NewServer(promhttp.HandlerFor(prometheus.NewRegistry(), promhttp.HandlerOpts{}))
	defer empty.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Use some CPU first: the figures count clock ticks (10 ms), and a
	// fresh test process may not have used one yet.
	for start := time.Now(); time.Since(start) < 100*time.Millisecond; {
		_ = sha256.Sum256(pattern)
	}
	rss, cpu, err := MetricsProbe{URL: full.URL}.Sample(ctx)
	if err != nil {
		t.Fatal(err)
	}
	prss, pcpu, err := ProcProbe{PID: os.Getpid()}.Sample(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Both read /proc/self, a moment apart: RSS within 50 %, CPU time
	// within a second.
	if rss == 0 || rss < prss/2 || rss > prss*3/2 || cpu <= 0 || (pcpu-cpu).Abs() > time.Second {
		t.Errorf("metrics: rss %d cpu %v; /proc: rss %d cpu %v", rss, cpu, prss, pcpu)
	}
	if _, _, err := (MetricsProbe{URL: empty.URL}).Sample(ctx); err == nil || !strings.Contains(err.Error(), "process_resident_memory_bytes") {
		t.Errorf("a page without the process metrics: err %v", err)
	}
	if _, _, err := (MetricsProbe{URL: empty.URL + "/nothing"}).Sample(ctx); err == nil {
		t.Error("a 404 page: no error")
	}
}

// cutter forwards TCP to a gateway and can cut every connection at once,
// as a server that dies does (a reset, no DISCONNECT).
type cutter struct {
	l  net.Listener
	mu sync.Mutex
	cs []net.Conn
	wg sync.WaitGroup
}

func startCutter(t *testing.T, to string) *cutter {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{l: l}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", to)
			if err != nil {
				in.Close()
				continue
			}
			c.mu.Lock()
			c.cs = append(c.cs, in, out)
			c.mu.Unlock()
			c.wg.Add(2)
			go func() { defer c.wg.Done(); _, _ = io.Copy(out, in); out.Close() }()
			go func() { defer c.wg.Done(); _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		c.cut()
		c.wg.Wait()
	})
	return c
}

// cut resets every connection so far.
func (c *cutter) cut() int {
	c.mu.Lock()
	cs := c.cs
	c.cs = nil
	c.mu.Unlock()
	for _, x := range cs {
		if tc, ok := x.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset, as from a killed process's peer
		}
		x.Close()
	}
	return len(cs) / 2
}

// TestFailover: with Failover, light sessions whose connections are cut
// during the hold come back with their cookies and addresses (the
// gateway still holds exactly them) and the result times it; without
// it, each cut session is a drop.
func TestFailover(t *testing.T) {
	for _, tc := range []struct {
		failover bool
		want     Errors
		back     int
	}{
		{true, Errors{}, 5},
		{false, Errors{SessionDropped: 5}, 0},
	} {
		t.Run(fmt.Sprint("failover=", tc.failover), func(t *testing.T) {
			// Its own gateway: cut sessions that do not come back stay
			// there for its reconnect grace.
			g := gwtest.Start(t, nil)
			fw := startCutter(t, g.Addr)
			cfg := baseConfig(g)
			cfg.Server, cfg.Sessions, cfg.Hold, cfg.Failover = fw.l.Addr().String(), 5, 3*time.Second, tc.failover
			cfg.Gateway = &hookProbe{Probe: cfg.Gateway, at: 3, fn: func() {
				if n := fw.cut(); n != 5 {
					t.Errorf("cut %d connections, want 5", n)
				}
			}}
			res, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			var sb strings.Builder
			WriteSummary(&sb, res)
			t.Log("\n" + sb.String())
			if res.Errors != tc.want || res.Interrupted != nil {
				t.Errorf("errors %+v (interrupted %v), want %+v", res.Errors, res.Interrupted, tc.want)
			}
			wantLost := 0
			if tc.failover {
				wantLost = 5
			}
			if res.Lost != wantLost || res.Recovered != tc.back {
				t.Errorf("lost %d, recovered %d; want %d, %d", res.Lost, res.Recovered, wantLost, tc.back)
			}
			if tc.failover && (res.FailoverTime <= 0 || res.FailoverMax > res.FailoverTime || res.FailoverMedian > res.FailoverP99 ||
				!strings.Contains(sb.String(), "failover: 5 of 5 lost sessions back in")) {
				t.Errorf("failover times: %v, median %v, p99 %v, max %v", res.FailoverTime, res.FailoverMedian, res.FailoverP99, res.FailoverMax)
			}
			if tc.failover {
				waitSessions(t, g, 0) // every session back, then logged off
			}
		})
	}
}
