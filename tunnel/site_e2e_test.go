package tunnel_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/daemon/metrics"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// The site topology: the standard client ⇄ gw ⇄ corp namespaces; in gw,
// HAProxy listens on GWAddr (443: PROXY v2 to the servers, 4443: PROXY v1
// to server 2 alone) in front of two in-process gateways that share one
// session key. The servers listen on every address of gw (the client can
// also reach them directly, as an untrusted peer) and trust PROXY headers
// from 127.0.0.1, HAProxy's source towards them. Their /readyz (the
// daemon's metrics handler) is what HAProxy checks.
const (
	siteServers = 2
	vpnPort     = 4430 // + server number: 4431, 4432
	readyPort   = 8430 // + server number
	v1Port      = 4443
)

var haproxyLoopback = netip.MustParsePrefix("127.0.0.1/32")

func haproxyConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    maxconn 256
defaults
    mode tcp
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    # A dead server: retry, then another server (the failover path).
    retries 3
    option redispatch
frontend vpn
    bind %[1]s:443
    default_backend site
frontend vpn_v1
    bind %[1]s:%[2]d
    default_backend v1
backend site
    # By source address: every connection of one client to one server,
    # so a client's sign-in, tunnel and wrong passwords meet one server.
    balance source
    option httpchk GET /readyz
    default-server inter 300ms fall 2 rise 2 send-proxy-v2
`, testenv.GWAddr, v1Port)
	for i := 1; i <= siteServers; i++ {
		fmt.Fprintf(&b, "    server s%d 127.0.0.1:%d check port %d\n", i, vpnPort+i, readyPort+i)
	}
	fmt.Fprintf(&b, "backend v1\n    server s2 127.0.0.1:%d send-proxy\n", vpnPort+2)
	// Health checks on the VPN port itself, through the PROXY protocol
	// (v2 LOCAL) and TLS: what a balancer without /readyz access does.
	fmt.Fprintf(&b, "backend probe\n    server s1 127.0.0.1:%d check check-send-proxy check-ssl verify none inter 300ms fall 1 rise 1 send-proxy-v2\n", vpnPort+1)
	return b.String()
}

// siteServer is one gateway of the site, killable like a crashed process.
type siteServer struct {
	n     int
	gw    *tunnel.Gateway
	bans  *auth.Bans
	logs  *testenv.LogBuffer
	conns *connSet
	ready *http.Server
	ln    net.Listener
}

// connSet remembers accepted connections, so kill can cut them all.
type connSet struct {
	mu sync.Mutex
	m  map[net.Conn]struct{}
}

type trackingListener struct {
	net.Listener
	set *connSet
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.set.mu.Lock()
		l.set.m[c] = struct{}{}
		l.set.mu.Unlock()
	}
	return c, err
}

// countingAuth counts successful sign-ins across the site.
type countingAuth struct {
	staticUser
	n *atomic.Int64
}

func (a countingAuth) Authenticate(ctx context.Context, c auth.Credentials) (*auth.Identity, error) {
	id, err := a.staticUser.Authenticate(ctx, c)
	if err == nil {
		a.n.Add(1)
	}
	return id, err
}

type site struct {
	owner   *testing.T // the whole site's test: servers live until it ends
	tp      *testenv.Topo
	cert    *testenv.Cert
	key     []byte
	signIns atomic.Int64
	servers [siteServers + 1]*siteServer // by number, 1-based
	// drainDelay is each server's Config.DrainDelay.
	drainDelay time.Duration
}

// start (re)starts server n on its fixed ports.
func (s *site) start(t *testing.T, n int) *siteServer {
	t.Helper()
	sealer, err := auth.NewSealer(nil, s.key)
	if err != nil {
		t.Fatal(err)
	}
	srv := &siteServer{n: n, logs: &testenv.LogBuffer{}, conns: &connSet{m: map[net.Conn]struct{}{}},
		bans: auth.NewBans(auth.BanConfig{Threshold: 3 * auth.FailurePoints, BanFor: 10 * time.Minute})}
	gw, err := tunnel.New(tunnel.Config{
		Certificate:       mustLoad(t, s.cert),
		Authenticator:     countingAuth{staticUser{"alice", "secret"}, &s.signIns},
		Sealer:            sealer,
		Bans:              srv.bans,
		ProxyProtocolFrom: []netip.Prefix{haproxyLoopback},
		Site:              tunnel.Site{Servers: siteServers, ServerIndex: n},
		SplitInclude:      []netip.Prefix{testenv.CorpNet},
		Dialer:            nsDialer{s.tp.GW},
		DPD:               2 * time.Second,
		DrainDelay:        s.drainDelay,
		Logger:            slog.New(slog.NewTextHandler(srv.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.gw = gw
	l, err := s.tp.GW.Listen("tcp", fmt.Sprintf(":%d", vpnPort+n))
	if err != nil {
		t.Fatal(err)
	}
	srv.ln = l
	go func() { _ = gw.Serve(trackingListener{l, srv.conns}) }()
	rl, err := s.tp.GW.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", readyPort+n))
	if err != nil {
		t.Fatal(err)
	}
	srv.ready = &http.Server{Handler: metrics.Handler(gw, gw.Ready), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.ready.Serve(rl) }()
	s.owner.Cleanup(func() { srv.kill() })
	s.servers[n] = srv
	return srv
}

// kill stops the server as a crash would: the listeners close and every
// connection is reset, without a goodbye to any client; then the gateway
// is torn down.
func (srv *siteServer) kill() {
	srv.ln.Close()
	srv.ready.Close()
	srv.conns.mu.Lock()
	for c := range srv.conns.m {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, as the kernel does for a killed process
		}
		c.Close()
	}
	srv.conns.m = map[net.Conn]struct{}{}
	srv.conns.mu.Unlock()
	srv.gw.Close()
}

// holder returns the server with a connected session at a, if any.
func (s *site) holder(a netip.Addr) *siteServer {
	for _, srv := range s.servers[1:] {
		if srv == nil {
			continue
		}
		if info, ok := srv.gw.WhoIs(a); ok && info.Connected {
			return srv
		}
	}
	return nil
}

// openconnect connects the real openconnect (tun mode, reconnecting for
// up to a minute) through the balancer at front, checks an echo to corp
// through it, and returns its address, the server holding its session and
// the other server.
func (s *site) openconnect(ctx context.Context, t *testing.T, front string, echo *corpEcho) (oc *testenv.OCSession, addr netip.Addr, holder, other *siteServer) {
	t.Helper()
	oc = testenv.Openconnect(t, s.tp.Client, testenv.OCOptions{Server: front, ServerCertPin: s.cert.Pin,
		User: "alice", Password: "secret", Mode: testenv.ModeTun,
		ExtraArgs: []string{"--reconnect-timeout", "60"}})
	addr, err := netip.ParseAddr(oc.Env()["INTERNAL_IP4_ADDRESS"])
	if err != nil {
		t.Fatalf("no address: %v", oc.Env())
	}
	if err := echoThrough(ctx, s.tp.Client.Dial, echo.tcp.String(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	holder = s.holder(addr)
	if holder == nil {
		t.Fatalf("no server holds %v", addr)
	}
	for _, srv := range s.servers[1:] {
		if srv != holder {
			other = srv
		}
	}
	return oc, addr, holder, other
}

// proxiedDialer dials a server directly from gw's loopback (a trusted
// peer) and speaks for client with a PROXY v2 header: how the test warms
// one server's pool without going through the balancer.
type proxiedDialer struct {
	ns     *testenv.Netns
	server string
	client netip.AddrPort
}

func (d proxiedDialer) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	c, err := d.ns.Dial(ctx, network, d.server)
	if err != nil {
		return nil, err
	}
	dst, _ := net.ResolveTCPAddr("tcp", d.server)
	if _, err := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(d.client), dst).WriteTo(c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// warm signs n Go clients in at server srv directly, so its pool's next
// address differs from an unwarmed server's.
func (s *site) warm(t *testing.T, ctx context.Context, srv int, n int) {
	t.Helper()
	for i := range n {
		c, err := tunnel.Dial(ctx, tunnel.ClientConfig{
			Server: fmt.Sprintf("127.0.0.1:%d", vpnPort+srv), Transport: tunnel.TransportTLS,
			Username: "alice", Password: "secret", PinSHA256: s.cert.Pin,
			Dialer: proxiedDialer{s.tp.GW, fmt.Sprintf("127.0.0.1:%d", vpnPort+srv), netip.MustParseAddrPort(fmt.Sprintf("198.18.99.%d:1000", 10*srv+i))},
		})
		if err != nil {
			t.Fatalf("warming server %d: %v", srv, err)
		}
		t.Cleanup(func() { c.Close() })
	}
}

// echoThrough checks a TCP echo to corp through dial, within d.
func echoThrough(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error), dst string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		c, err := dial(ctx, "tcp", dst)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			msg := []byte("through the site")
			got := make([]byte, len(msg))
			if _, err = c.Write(msg); err == nil {
				_, err = io.ReadFull(c, got)
			}
			c.Close()
			if err == nil && string(got) == string(msg) {
				return nil
			}
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("no echo within %v: %v", d, last)
}

// startSite starts the site's servers (each with drainDelay), HAProxy in
// front of them on front, and the corp echo server.
func startSite(t *testing.T, drainDelay time.Duration) (s *site, echo *corpEcho, front string, hap *testenv.HAProxyProc) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "openconnect", "haproxy", "iptables")
	tp := testenv.Topology(t)
	s = &site{owner: t, tp: tp, cert: testenv.NewCert(t, testenv.GWAddr.String()), key: make([]byte, auth.SealerKeySize),
		drainDelay: drainDelay}
	_, _ = rand.Read(s.key)
	echo = startCorpEcho(t, tp, 7)
	for n := 1; n <= siteServers; n++ {
		s.start(t, n)
	}
	front = fmt.Sprintf("%s:443", testenv.GWAddr)
	return s, echo, front, testenv.HAProxy(t, tp.GW, haproxyConfig(), front)
}

// waitReady waits until HAProxy's checks see every server up.
func (s *site) waitReady(t *testing.T, hap *testenv.HAProxyProc) {
	t.Helper()
	waitFor(t, 20*time.Second, "HAProxy to see every server up", func() bool {
		up, err := hap.ServersUp("site")
		if err != nil {
			t.Fatal(err)
		}
		return len(up) == siteServers && !slices.Contains(slices.Collect(maps.Values(up)), false)
	})
}

// TestSite runs a two-server site behind HAProxy: failover keeps the
// address for openconnect and tunnel.Client, the PROXY protocol carries
// the client's address, and bans hit the client, never HAProxy.
func TestSite(t *testing.T) {
	t.Parallel()
	s, echo, front, hap := startSite(t, 0)
	tp := s.tp
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute) // the whole scenario, generously
	defer cancel()
	// waitReady waits until HAProxy's checks see every server up.
	waitReady := func(t *testing.T) { s.waitReady(t, hap) }
	waitReady(t)
	// Uneven warm-up: every server hands its first client the first
	// address of its stride; after this each one's next is different.
	s.warm(t, ctx, 1, 2)
	s.warm(t, ctx, 2, 3)

	t.Run("openconnect keeps its address when its server dies", func(t *testing.T) {
		oc, addr, old, other := s.openconnect(ctx, t, front, echo)
		if _, held := other.gw.WhoIs(addr); held {
			t.Fatalf("the other server holds %v already", addr)
		}
		signIns := s.signIns.Load()
		t.Logf("openconnect has %v on server %d; killing it", addr, old.n)
		old.kill()
		defer s.start(t, old.n) // the server comes back, empty
		if err := oc.WaitScriptReason("reconnect", 1, 60*time.Second); err != nil {
			t.Fatalf("%v\nserver %d log:\n%s", err, other.n, other.logs.String())
		}
		if got := oc.ScriptEnv("reconnect")["INTERNAL_IP4_ADDRESS"]; got != addr.String() {
			t.Fatalf("reconnected with %q, had %v", got, addr)
		}
		if info, ok := other.gw.WhoIs(addr); !ok || !info.Connected || info.ClientAddr.Addr() != testenv.ClientAddr {
			t.Fatalf("server %d: WhoIs(%v) = %+v, %v; want a connected session from %v", other.n, addr, info, ok, testenv.ClientAddr)
		}
		if err := echoThrough(ctx, tp.Client.Dial, echo.tcp.String(), 20*time.Second); err != nil {
			t.Fatal(err)
		}
		if n := s.signIns.Load() - signIns; n != 0 {
			t.Fatalf("%d new sign-ins during the failover, want none", n)
		}
		select {
		case <-oc.Done():
			t.Fatalf("openconnect exited:\n%s", oc.Proc.Tail(20))
		default:
		}
		_ = oc.Close()
	})

	t.Run("tunnel.Client keeps its address when its server dies", func(t *testing.T) {
		c, err := tunnel.Dial(ctx, tunnel.ClientConfig{Server: front, Transport: tunnel.TransportTLS,
			Username: "alice", Password: "secret", PinSHA256: s.cert.Pin, Dialer: nsDialer{tp.Client},
			ReconnectTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		addr := c.Addr()
		if err := echoThrough(ctx, c.DialContext, echo.tcp.String(), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		old := s.holder(addr)
		if old == nil {
			t.Fatalf("no server holds %v", addr)
		}
		signIns := s.signIns.Load()
		t.Logf("tunnel.Client has %v on server %d; killing it", addr, old.n)
		old.kill()
		defer s.start(t, old.n)
		waitFor(t, 60*time.Second, "the client on another server", func() bool {
			now := s.holder(addr)
			return now != nil && now != old || c.Addr() != addr
		})
		if c.Addr() != addr {
			t.Fatalf("the client's address changed: %v, was %v", c.Addr(), addr)
		}
		if err := echoThrough(ctx, c.DialContext, echo.tcp.String(), 20*time.Second); err != nil {
			t.Fatal(err)
		}
		if n := s.signIns.Load() - signIns; n != 0 {
			t.Fatalf("%d new sign-ins during the failover, want none", n)
		}
	})

	t.Run("the balancer's health checks pass and earn no ban points", func(t *testing.T) {
		waitReady(t)
		srv := s.servers[1]
		waitFor(t, 20*time.Second, "HAProxy's LOCAL health checks on the VPN port", func() bool {
			up, err := hap.ServersUp("probe")
			return err == nil && up["s1"] && strings.Count(srv.logs.String(), "balancer health check") >= 3
		})
		if p := srv.bans.Points(netip.MustParseAddr("127.0.0.1")); p != 0 {
			t.Fatalf("HAProxy's health checks earned %d ban points", p)
		}
	})

	t.Run("PROXY v1 and v2 carry the client address", func(t *testing.T) {
		waitReady(t)
		for _, port := range []int{443, v1Port} {
			o := testenv.OCOptions{Server: fmt.Sprintf("%s:%d", testenv.GWAddr, port), ServerCertPin: s.cert.Pin,
				User: "alice", Password: "secret"}
			cookie, err := testenv.Authenticate(t, tp.Client, o)
			if err != nil {
				t.Fatalf("port %d: %v", port, err)
			}
			// The session exists from sign-in on: find it by its cookie's id.
			sealer, _ := auth.NewSealer(nil, s.key)
			sc, err := sealer.Open(webvpnCookie(cookie))
			if err != nil {
				t.Fatalf("cookie %.20q...: %v", cookie, err)
			}
			found := false
			for _, srv := range s.servers[1:] {
				for _, si := range srv.gw.Sessions() {
					if si.ID == sc.ID {
						found = true
						if si.ClientAddr.Addr() != testenv.ClientAddr {
							t.Fatalf("port %d: session's client %v, want %v", port, si.ClientAddr, testenv.ClientAddr)
						}
					}
				}
			}
			if !found {
				t.Fatalf("port %d: session %s on no server", port, sc.ID)
			}
		}
	})

	t.Run("a PROXY header from an untrusted peer is refused", func(t *testing.T) {
		// The client reaches server 1 directly: as itself it is served ...
		direct := fmt.Sprintf("%s:%d", testenv.GWAddr, vpnPort+1)
		if _, err := testenv.Authenticate(t, tp.Client, testenv.OCOptions{Server: direct, ServerCertPin: s.cert.Pin,
			User: "alice", Password: "secret"}); err != nil {
			t.Fatalf("direct client: %v", err)
		}
		// ... but a header claiming another address is refused.
		c, err := tp.Client.Dial(ctx, "tcp", direct)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		hdr := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(203, 0, 113, 5), Port: 1}, &net.TCPAddr{IP: net.IPv4(198, 18, 0, 2), Port: 443})
		if _, err := hdr.WriteTo(c); err != nil {
			t.Fatal(err)
		}
		if err := tlsHandshake(c); err == nil {
			t.Fatal("TLS served behind an untrusted PROXY header")
		}
		if !strings.Contains(s.servers[1].logs.String(), "not in Config.ProxyProtocolFrom") {
			t.Errorf("refusal not logged clearly:\n%s", s.servers[1].logs.String())
		}
	})

	t.Run("a trusted peer without a header is refused", func(t *testing.T) {
		c, err := tp.GW.Dial(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", vpnPort+1))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := tlsHandshake(c); err == nil {
			t.Fatal("TLS served to the trusted balancer's address without a PROXY header")
		}
	})

	t.Run("wrong passwords through HAProxy ban the client, not HAProxy", func(t *testing.T) {
		waitReady(t)
		o := testenv.OCOptions{Server: front, ServerCertPin: s.cert.Pin, User: "alice", Password: "wrong"}
		for i := range 3 {
			if _, err := testenv.Authenticate(t, tp.Client, o); err == nil {
				t.Fatalf("attempt %d: wrong password accepted", i)
			}
		}
		var banner *siteServer
		for _, srv := range s.servers[1:] {
			if srv.bans.Banned(testenv.ClientAddr) {
				banner = srv
			}
			if p := srv.bans.Points(netip.MustParseAddr("127.0.0.1")); p != 0 {
				t.Fatalf("server %d: HAProxy's address has %d ban points", srv.n, p)
			}
		}
		if banner == nil {
			t.Fatalf("the client is banned nowhere: %+v / %+v", s.servers[1].bans.List(), s.servers[2].bans.List())
		}
		o.Password = "secret"
		if _, err := testenv.Authenticate(t, tp.Client, o); err == nil {
			t.Fatal("banned client signed in through HAProxy")
		}
		// HAProxy itself still serves everybody else on that server.
		c, err := tunnel.Dial(ctx, tunnel.ClientConfig{
			Server: fmt.Sprintf("127.0.0.1:%d", vpnPort+banner.n), Transport: tunnel.TransportTLS,
			Username: "alice", Password: "secret", PinSHA256: s.cert.Pin,
			Dialer: proxiedDialer{tp.GW, fmt.Sprintf("127.0.0.1:%d", vpnPort+banner.n), netip.MustParseAddrPort("198.18.77.1:1")},
		})
		if err != nil {
			t.Fatalf("another client after the ban: %v", err)
		}
		c.Close()
	})
}

// tlsHandshake tries a TLS handshake over c, bounded in time.
func tlsHandshake(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return tls.Client(c, &tls.Config{InsecureSkipVerify: true}).Handshake()
}

// webvpnCookie picks the webvpn value out of openconnect's COOKIE
// ("openconnect_strapkey=...; webvpn=...").
func webvpnCookie(c string) string {
	for _, part := range strings.Split(c, ";") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(part), "webvpn="); ok {
			return v
		}
	}
	return c
}
