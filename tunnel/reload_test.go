package tunnel

import (
	"context"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// TestReloadKeepsSessionsAndAppliesRoutes: a reload changes the routes and
// banner pushed to new connections and enforced for everyone, keeps the
// live session, and reports restart-only settings without applying them.
func TestReloadKeepsSessionsAndAppliesRoutes(t *testing.T) {
	echo := testenv.EchoServer(t)
	var base Config
	g, addr := startGateway(t, func(c *Config) { base = *c })
	tc := dial(t, addr, "alice", "secret")
	tc.startStack(16000)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	echoOK := func(c *testClient, dst netip.AddrPort) error {
		conn, err := c.dialTCP(ctx, dst)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write([]byte("ping")); err != nil {
			return err
		}
		b := make([]byte, 4)
		_, err = io.ReadFull(conn, b)
		return err
	}
	if err := echoOK(tc, testenv.LoopCorp(echo)); err != nil {
		t.Fatalf("before reload: %v", err)
	}

	next := base
	next.SplitInclude = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16"), netip.MustParsePrefix("198.19.0.0/16")}
	next.SplitExclude = []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")} // now covers the echo host
	next.Banner = "reloaded"
	next.Pool = netip.MustParsePrefix("169.254.0.0/17") // needs a restart
	reloads := make(chan Event, 1)
	next.Events = func(e Event) {
		if e.Kind == EventReload {
			reloads <- e
		}
	}
	res, err := g.Reload(next)
	if err != nil {
		t.Fatalf("Reload: %v", err)
	}
	select {
	case e := <-reloads:
		if !slices.Equal(e.Applied, res.Applied) || !slices.Equal(e.NeedRestart, res.NeedRestart) {
			t.Errorf("reload event %+v, want the ReloadResult %+v", e, res)
		}
	default:
		t.Error("no EventReload")
	}
	for _, f := range []string{"SplitInclude", "SplitExclude", "Banner"} {
		if !slices.Contains(res.Applied, f) {
			t.Errorf("Applied %v lacks %s", res.Applied, f)
		}
	}
	if !slices.Equal(res.NeedRestart, []string{"Pool"}) {
		t.Errorf("NeedRestart = %v, want [Pool]", res.NeedRestart)
	}
	if len(g.Sessions()) != 1 || !g.Sessions()[0].Connected {
		t.Fatalf("live session lost: %+v", g.Sessions())
	}
	// Enforcement binds the live session at once.
	if err := echoOK(tc, testenv.LoopCorp(echo)); err == nil {
		t.Error("excluded destination still reachable after reload")
	}
	other := netip.AddrPortFrom(netip.MustParseAddr("198.18.2.1"), echo.Port())
	if err := echoOK(tc, other); err != nil {
		t.Errorf("live session lost an included destination: %v", err)
	}
	// New connections are pushed the new routes and banner, from the old pool.
	tc2 := dial(t, addr, "bob", "hunter2")
	if got := tc2.hdr.Get("X-CSTP-Banner"); got != "reloaded" {
		t.Errorf("banner = %q", got)
	}
	inc := tc2.hdr.Values("X-CSTP-Split-Include")
	if !slices.Contains(inc, "198.19.0.0/255.255.0.0") {
		t.Errorf("new session routes %v lack 198.19.0.0/16", inc)
	}
	if !netip.MustParsePrefix("169.254.0.0/16").Contains(tc2.tunAddr) {
		t.Errorf("address %v", tc2.tunAddr)
	}

	bad := next
	bad.MTU = 1
	if _, err := g.Reload(bad); err == nil || !strings.Contains(err.Error(), "MTU") {
		t.Errorf("invalid reload: %v", err)
	}
	// A route the stack cannot serve is refused on reload as at start:
	// loopback (policy.Validate), and nothing of that reload is applied.
	loop := next
	loop.Banner = "loopback"
	loop.SplitInclude = append(slices.Clone(next.SplitInclude), netip.MustParsePrefix("127.0.0.0/8"))
	if _, err := g.Reload(loop); err == nil || !strings.Contains(err.Error(), "SplitInclude[2]") ||
		!strings.Contains(err.Error(), "loopback") {
		t.Errorf("reload with a loopback include: %v", err)
	}
	if slices.Contains(g.conf().SplitInclude, netip.MustParsePrefix("127.0.0.0/8")) {
		t.Errorf("loopback include accepted by reload: %v", g.conf().SplitInclude)
	}
	if g.conf().Banner != "reloaded" {
		t.Error("a failed reload changed the config")
	}
}

// TestStatsAndFlowLog: counters move with traffic, and each forwarded flow
// is logged with its user when it ends.
func TestStatsAndFlowLog(t *testing.T) {
	echo := testenv.EchoServer(t)
	var (
		mu   sync.Mutex
		recs []FlowRecord
	)
	g, addr := startGateway(t, func(c *Config) {
		c.FlowLog = func(r FlowRecord) { mu.Lock(); recs = append(recs, r); mu.Unlock() }
		c.Proxy = ProxySettings{PACURL: "http://wpad.corp.example/proxy.pac", Exclude: []string{"*.corp.example", "10.1.2.3"}}
	})
	if _, body := signIn(t, addr, "alice", "wrong"); !strings.Contains(body, "Login failed") {
		t.Fatalf("wrong password accepted: %s", body)
	}
	tc := dial(t, addr, "alice", "secret")
	if got := tc.hdr.Get("X-CSTP-MSIE-Proxy-PAC-URL"); got != "http://wpad.corp.example/proxy.pac" {
		t.Errorf("PAC header = %q", got)
	}
	if got := tc.hdr.Get("X-CSTP-MSIE-Proxy-Exceptions"); got != "*.corp.example;10.1.2.3" {
		t.Errorf("exceptions header = %q", got)
	}
	before := g.Stats()
	if before.Sessions != 1 || before.Connected != 1 || before.SignIns != 1 || before.SignInFailures != 1 {
		t.Errorf("stats before traffic: %+v", before)
	}
	tc.startStack(16000)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := tc.dialTCP(ctx, testenv.LoopCorp(echo))
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 100_000)
	go func() { _, _ = conn.Write(msg) }()
	if _, err := io.ReadFull(conn, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(recs) > 0 }, "flow record")
	after := g.Stats()
	if after.BytesIn < before.BytesIn+uint64(len(msg)) || after.BytesOut < before.BytesOut+uint64(len(msg)) {
		t.Errorf("byte counters did not move by the payload: before %+v after %+v", before, after)
	}
	if after.Stack.TCPFlows < 1 {
		t.Errorf("TCPFlows = %d", after.Stack.TCPFlows)
	}
	mu.Lock()
	r := recs[0]
	mu.Unlock()
	if r.User != "alice" || r.Proto != "tcp" || r.Dst != testenv.LoopCorp(echo) || r.Src.Addr() != tc.tunAddr ||
		r.BytesUp != uint64(len(msg)) || r.BytesDown < uint64(len(msg)) {
		t.Errorf("flow record %+v", r)
	}
}

func TestProxySettingsValidate(t *testing.T) {
	tests := []struct {
		p    ProxySettings
		want []string // substrings; nil = valid
	}{
		{ProxySettings{}, nil},
		{ProxySettings{PACURL: "https://wpad.example/p.pac", Exclude: []string{"sub.contoso.com", "*.contoso.com", "10.0.0.1", "fd00::1", "[fd00::2]"}}, nil},
		{ProxySettings{Server: "proxy.example:3128"}, nil},
		{ProxySettings{Server: "proxy.example"}, []string{"Proxy.Server"}},
		{ProxySettings{Server: "proxy.example:0"}, []string{"port"}},
		{ProxySettings{PACURL: "ftp://x/p.pac"}, []string{"http or https"}},
		{ProxySettings{PACURL: "https://a/p", Server: "b:1"}, []string{"not both"}},
		{ProxySettings{Exclude: []string{"a.example"}}, []string{"without PACURL or Server"}},
		{ProxySettings{Server: "p:1", Exclude: []string{"con*oso.com", "contos*.com", "contoso.*", "*.*.com", ""}},
			[]string{"Proxy.Exclude[0]", "Proxy.Exclude[1]", "Proxy.Exclude[2]", "Proxy.Exclude[3]", "Proxy.Exclude[4]", "inner or trailing"}},
	}
	for _, tt := range tests {
		errs := tt.p.validate()
		if tt.want == nil {
			if len(errs) != 0 {
				t.Errorf("%+v: unexpected %v", tt.p, errs)
			}
			continue
		}
		all := ""
		for _, e := range errs {
			all += e.Error() + "\n"
		}
		for _, w := range tt.want {
			if !strings.Contains(all, w) {
				t.Errorf("%+v: errors %q lack %q", tt.p, all, w)
			}
		}
	}
}

// TestMaxSessions: past the cap, sign-ins are refused with a reason on
// both transports; live sessions are not touched.
func TestMaxSessions(t *testing.T) {
	_, addr := startGateway(t, func(c *Config) { c.MaxSessions = 1 })
	dialClient(t, addr, nil)
	if _, body := signIn(t, addr, "bob", "hunter2"); !strings.Contains(body, "gateway is full") {
		t.Errorf("TLS sign-in past the cap: %s", body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Dial(ctx, ClientConfig{Server: addr, Username: "bob", Password: "hunter2", PinSHA256: testPin(t), Transport: TransportQUIC})
	if err == nil || !strings.Contains(err.Error(), "full") {
		t.Errorf("QUIC sign-in past the cap: %v", err)
	}
}
