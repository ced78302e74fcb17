package tunnel_test

import (
	"bufio"
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
	"github.com/underpass/underpass/internal/daemon/sitestore"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// The site fixture (issue 12): testenv.SiteTopology's namespaces client,
// lb, gw1..gw3 and corp. HAProxy runs in lb on the site's public address
// (443: PROXY v2, leastconn, each server's /readyz checked; 4443: PROXY v1
// to server 2 alone). Each server is one in-process gateway listening in
// its own namespace on vpnPort and readyPort (its /readyz, the daemon's
// metrics handler); all share one session key and one etcd-backed site
// store (one etcd member, one client per server as separate processes
// have), and trust PROXY headers from lb's site address alone.
const (
	siteServers = 3
	vpnPort     = 443
	readyPort   = 8443
	v1Port      = 4443
)

// siteLB is the one peer the servers trust PROXY headers from.
var siteLB = netip.PrefixFrom(testenv.SiteLBAddr, 32)

// serverAddr is server n's VPN address on the site network.
func serverAddr(n int) string { return fmt.Sprintf("%s:%d", testenv.SiteServerAddr(n), vpnPort) }

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
    # A new client goes to the server with the fewest connections; then
    # every connection of that client address goes to the same server
    # while it is up, so a client's sign-in, tunnel and wrong passwords
    # meet one server (ban points are counted per server; a ban, once
    # earned, is site-wide). A server that is down is skipped.
    balance leastconn
    stick-table type ip size 1k expire 1h
    stick on src
    option httpchk GET /readyz
    # The servers trust PROXY headers from this address alone.
    source %[3]s
    default-server inter 300ms fall 2 rise 2 send-proxy-v2
`, testenv.SiteFrontAddr, v1Port, testenv.SiteLBAddr)
	for i := 1; i <= siteServers; i++ {
		fmt.Fprintf(&b, "    server s%d %s check port %d\n", i, serverAddr(i), readyPort)
	}
	fmt.Fprintf(&b, "backend v1\n    source %s\n    server s2 %s send-proxy\n", testenv.SiteLBAddr, serverAddr(2))
	// Health checks on the VPN port itself, through the PROXY protocol
	// (v2 LOCAL) and TLS: what a balancer without /readyz access does.
	fmt.Fprintf(&b, "backend probe\n    source %s\n    server s1 %s check check-send-proxy check-ssl verify none inter 300ms fall 1 rise 1 send-proxy-v2\n",
		testenv.SiteLBAddr, serverAddr(1))
	return b.String()
}

// siteServer is one gateway of the site, killable like a crashed process.
type siteServer struct {
	n     int
	gw    *tunnel.Gateway
	bans  *auth.Bans
	store *sitestore.Store
	logs  *testenv.LogBuffer
	conns *connSet
	ready *http.Server
	ln    net.Listener
	once  sync.Once // kill
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
	tp      *testenv.SiteTopo
	etcd    []*testenv.Etcd // the store's members
	hap     *testenv.HAProxyProc
	echo    *corpEcho
	web     string // corp's HTTP server, base URL (curl through openconnect's tun)
	front   string // HAProxy's VPN frontend, host:port
	cert    *testenv.Cert
	key     []byte
	signIns atomic.Int64
	servers [siteServers + 1]*siteServer // by number, 1-based
	// drainDelay is each server's Config.DrainDelay.
	drainDelay time.Duration
}

// start (re)starts server n in its namespace, with a new store client, and
// waits until it has reached the store.
func (s *site) start(t *testing.T, n int) *siteServer {
	t.Helper()
	sealer, err := auth.NewSealer(nil, s.key)
	if err != nil {
		t.Fatal(err)
	}
	var endpoints []string
	for _, m := range s.etcd {
		endpoints = append(endpoints, m.Endpoint)
	}
	st, err := sitestore.New(sitestore.Config{Endpoints: endpoints, Prefix: "/t/" + s.owner.Name()})
	if err != nil {
		t.Fatal(err)
	}
	ns := s.tp.GWs[n-1]
	srv := &siteServer{n: n, logs: &testenv.LogBuffer{}, conns: &connSet{m: map[net.Conn]struct{}{}}, store: st,
		bans: auth.NewBans(auth.BanConfig{Threshold: 3 * auth.FailurePoints, BanFor: 10 * time.Minute})}
	gw, err := tunnel.New(tunnel.Config{
		Certificate:       mustLoad(t, s.cert),
		Authenticator:     countingAuth{staticUser{"alice", "secret"}, &s.signIns},
		Sealer:            sealer,
		Bans:              srv.bans,
		ProxyProtocolFrom: []netip.Prefix{siteLB},
		Site:              tunnel.Site{Servers: siteServers, ServerIndex: n, ServerName: fmt.Sprintf("s%d", n), Store: st},
		SplitInclude:      []netip.Prefix{testenv.CorpNet},
		Dialer:            nsDialer{ns},
		DPD:               2 * time.Second,
		DrainDelay:        s.drainDelay,
		Logger:            slog.New(slog.NewTextHandler(srv.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	srv.gw = gw
	l, err := ns.Listen("tcp", fmt.Sprintf(":%d", vpnPort))
	if err != nil {
		t.Fatal(err)
	}
	srv.ln = l
	go func() { _ = gw.Serve(trackingListener{l, srv.conns}) }()
	rl, err := ns.Listen("tcp", fmt.Sprintf(":%d", readyPort))
	if err != nil {
		t.Fatal(err)
	}
	srv.ready = &http.Server{Handler: metrics.Handler(gw, gw.Ready), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.ready.Serve(rl) }()
	s.owner.Cleanup(func() { srv.kill() })
	s.servers[n] = srv
	waitFor(t, 20*time.Second, fmt.Sprintf("server %d to reach the store", n), func() bool { return gw.Stats().SiteStore.Up })
	return srv
}

// kill stops the server as a crash would: the listeners close and every
// connection is reset, without a goodbye to any client; then the gateway
// is torn down and its store client closed. Safe to call twice.
func (srv *siteServer) kill() { srv.once.Do(srv.crash) }

func (srv *siteServer) crash() {
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
	srv.store.Close()
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
// up to a minute) through HAProxy, checks an echo to corp through it, and
// returns its address and the server holding its session.
func (s *site) openconnect(ctx context.Context, t *testing.T, o testenv.OCOptions) (oc *testenv.OCSession, addr netip.Addr, holder *siteServer) {
	t.Helper()
	o.Server, o.ServerCertPin, o.Mode = s.front, s.cert.Pin, testenv.ModeTun
	o.ExtraArgs = append(o.ExtraArgs, "--reconnect-timeout", "60")
	oc = testenv.Openconnect(t, s.tp.Client, o)
	addr, err := netip.ParseAddr(oc.Env()["INTERNAL_IP4_ADDRESS"])
	if err != nil {
		t.Fatalf("no address: %v", oc.Env())
	}
	if err := echoThrough(ctx, s.tp.Client.Dial, s.echo.tcp.String(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	holder = s.holder(addr)
	if holder == nil {
		t.Fatalf("no server holds %v", addr)
	}
	return oc, addr, holder
}

// signIn signs alice in with openconnect --authenticate through the
// frontend front (host:port), and returns the cookie and its session id.
func (s *site) signIn(t *testing.T, front string) (cookie, id string) {
	t.Helper()
	cookie, err := testenv.Authenticate(t, s.tp.Client, testenv.OCOptions{Server: front, ServerCertPin: s.cert.Pin,
		User: "alice", Password: "secret"})
	if err != nil {
		t.Fatalf("sign-in through %s: %v", front, err)
	}
	sealer, _ := auth.NewSealer(nil, s.key)
	sc, err := sealer.Open(webvpnCookie(cookie))
	if err != nil {
		t.Fatalf("cookie %.20q...: %v", cookie, err)
	}
	return cookie, sc.ID
}

// failedOver waits until openconnect, whose session at addr was on dead,
// has reconnected through HAProxy with that address, checks that another
// server holds it and that an echo to corp and curl of corp's page (the
// real curl through openconnect's tun) work again, and returns that
// server.
func (s *site) failedOver(ctx context.Context, t *testing.T, oc *testenv.OCSession, addr netip.Addr, dead *siteServer) *siteServer {
	t.Helper()
	if err := oc.WaitScriptReason("reconnect", 1, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := oc.ScriptEnv("reconnect")["INTERNAL_IP4_ADDRESS"]; got != addr.String() {
		t.Fatalf("reconnected with %q, had %v", got, addr)
	}
	now := s.holder(addr)
	if now == nil || now == dead {
		t.Fatalf("no other server holds %v after server %d left", addr, dead.n)
	}
	if err := echoThrough(ctx, s.tp.Client.Dial, s.echo.tcp.String(), 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if body, err := testenv.Curl(ctx, s.tp.Client, s.web+"/"); err != nil || body != testenv.CorpPage {
		t.Fatalf("curl through openconnect after the failover: %q, %v", body, err)
	}
	return now
}

// proxiedDialer dials server n directly from lb's trusted address and
// speaks for client with a PROXY v2 header: how the test reaches one
// server of its choice as a given client, without HAProxy's choice.
type proxiedDialer struct {
	ns     *testenv.Netns
	server string
	client netip.AddrPort
}

func (d proxiedDialer) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	c, err := testenv.DialFrom(ctx, d.ns, testenv.SiteLBAddr, network, d.server)
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

// direct is a proxiedDialer to server n for client.
func (s *site) direct(n int, client netip.AddrPort) proxiedDialer {
	return proxiedDialer{s.tp.LB, serverAddr(n), client}
}

// srcDialer dials from the client namespace with source address src: a
// client host other than testenv.ClientAddr, as HAProxy sees it.
type srcDialer struct {
	ns  *testenv.Netns
	src netip.Addr
}

func (d srcDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return testenv.DialFrom(ctx, d.ns, d.src, network, addr)
}

// warm signs n Go clients in at server srv directly, so its pool's next
// address differs from an unwarmed server's.
func (s *site) warm(t *testing.T, ctx context.Context, srv int, n int) {
	t.Helper()
	for i := range n {
		c, err := tunnel.Dial(ctx, tunnel.ClientConfig{
			Server: serverAddr(srv), Transport: tunnel.TransportTLS,
			Username: "alice", Password: "secret", PinSHA256: s.cert.Pin,
			Dialer: s.direct(srv, netip.MustParseAddrPort(fmt.Sprintf("198.18.99.%d:1000", 10*srv+i))),
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
			err = echoOnce(c)
			c.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("no echo within %v: %v", d, last)
}

// echoOnce sends a message over an echo connection and reads it back.
func echoOnce(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second)) // corp is a veth away
	defer c.SetDeadline(time.Time{})
	msg := []byte("through the site")
	got := make([]byte, len(msg))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echo %q, sent %q", got, msg)
	}
	return nil
}

// startSite builds the site topology, starts etcd (members members: 1, or
// 3 for the quorum case), the servers (each with drainDelay), HAProxy in
// front of them and the corp echo server, and waits until HAProxy sees
// every server up.
func startSite(t *testing.T, drainDelay time.Duration, members int) *site {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "openconnect", "haproxy", "iptables", "etcd", "curl")
	tp := testenv.SiteTopology(t, siteServers)
	s := &site{owner: t, tp: tp, etcd: testenv.StartEtcdCluster(t, members), cert: testenv.NewCert(t, testenv.SiteFrontAddr.String()),
		key: make([]byte, auth.SealerKeySize), drainDelay: drainDelay}
	_, _ = rand.Read(s.key)
	s.echo = startCorpEcho(t, tp.Corp, 7)
	s.web = tp.ServeHTTP(t, 80)
	for n := 1; n <= siteServers; n++ {
		s.start(t, n)
	}
	s.front = fmt.Sprintf("%s:%d", testenv.SiteFrontAddr, vpnPort)
	s.hap = testenv.HAProxy(t, tp.LB, haproxyConfig(), s.front)
	s.waitReady(t)
	return s
}

// waitReady waits until HAProxy's checks see every server up.
func (s *site) waitReady(t *testing.T) {
	t.Helper()
	waitFor(t, 20*time.Second, "HAProxy to see every server up", func() bool {
		up, err := s.hap.ServersUp("site")
		if err != nil {
			t.Fatal(err)
		}
		return len(up) == siteServers && !slices.Contains(slices.Collect(maps.Values(up)), false)
	})
}

// bystander is a tunnel.Client signed in through HAProxy from its own
// client address, with a flow to corp open through it.
type bystander struct {
	c    *tunnel.Client
	flow net.Conn
}

// bystanders signs a Go client in through HAProxy from each of
// testenv.SiteClientAddrs and opens one echo flow through each. HAProxy's
// stickiness is forgotten first, so leastconn spreads them over the
// servers (a client stuck to a server before a failover stays where it
// moved to, and a restarted server would have none).
func (s *site) bystanders(ctx context.Context, t *testing.T) []bystander {
	t.Helper()
	if out, err := s.hap.Command("clear table site"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("HAProxy: clear table: %q, %v", out, err)
	}
	var out []bystander
	for _, src := range testenv.SiteClientAddrs {
		c, err := tunnel.Dial(ctx, tunnel.ClientConfig{Server: s.front, Transport: tunnel.TransportTLS,
			Username: "alice", Password: "secret", PinSHA256: s.cert.Pin, Dialer: srcDialer{s.tp.Client, src},
			ReconnectTimeout: time.Minute})
		if err != nil {
			t.Fatalf("bystander from %v: %v", src, err)
		}
		t.Cleanup(func() { c.Close() })
		f, err := c.DialContext(ctx, "tcp", s.echo.tcp.String())
		if err != nil {
			t.Fatalf("bystander from %v: %v", src, err)
		}
		t.Cleanup(func() { f.Close() })
		if err := echoOnce(f); err != nil {
			t.Fatalf("bystander from %v: %v", src, err)
		}
		out = append(out, bystander{c, f})
	}
	return out
}

// unaffected checks that the bystanders on servers other than the dead
// one were not touched by its death: same server, same session, no
// reconnect, and their open flows still echo. It fails unless at least one
// bystander is on each server that stays up.
func (s *site) unaffected(t *testing.T, by []bystander, dead *siteServer, before map[*tunnel.Client]*siteServer) {
	t.Helper()
	seen := map[*siteServer]bool{}
	for _, b := range by {
		was := before[b.c]
		if was == dead {
			continue
		}
		seen[was] = true
		if now := s.holder(b.c.Addr()); now != was {
			t.Errorf("a bystander on server %d (%v) moved when server %d died", was.n, b.c.Addr(), dead.n)
		}
		if n := b.c.Reconnects(); n != 0 {
			t.Errorf("a bystander on server %d reconnected %d times when server %d died", was.n, n, dead.n)
		}
		if err := echoOnce(b.flow); err != nil {
			t.Errorf("a bystander's flow on server %d broke when server %d died: %v", was.n, dead.n, err)
		}
	}
	for _, srv := range s.servers[1:] {
		if srv != dead && !seen[srv] {
			t.Errorf("no bystander on server %d, which stayed up: the check proves nothing there", srv.n)
		}
	}
}

// placed maps each bystander to the server holding it now.
func (s *site) placed(t *testing.T, by []bystander) map[*tunnel.Client]*siteServer {
	t.Helper()
	m := map[*tunnel.Client]*siteServer{}
	for _, b := range by {
		srv := s.holder(b.c.Addr())
		if srv == nil {
			t.Fatalf("no server holds the bystander %v", b.c.Addr())
		}
		m[b.c] = srv
		t.Logf("a bystander has %v on server %d", b.c.Addr(), srv.n)
	}
	return m
}

// TestSite runs a three-server site behind HAProxy with a real etcd store
// (issue 12): failover keeps the address for openconnect and tunnel.Client
// and leaves the other servers' sessions alone; the PROXY protocol carries
// the client's address; a draining server is taken out by HAProxy first;
// a disconnect on one server ends a session on another and its cookie is
// refused everywhere; a ban earned through HAProxy hits the client on
// every server, never HAProxy, and is lifted everywhere at once; with
// etcd stopped the site carries on and reconciles when it is back.
func TestSite(t *testing.T) {
	t.Parallel()
	s := startSite(t, siteDrainDelay, 1)
	tp := s.tp
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute) // the whole scenario, generously
	defer cancel()
	// Uneven warm-up: every server hands its first client the first
	// address of its stride; after this each one's next is different.
	s.warm(t, ctx, 1, 2)
	s.warm(t, ctx, 2, 3)
	s.warm(t, ctx, 3, 1)

	t.Run("openconnect keeps its address when its server dies", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		by := s.bystanders(ctx, t)
		oc, addr, old := s.openconnect(ctx, t, testenv.OCOptions{User: "alice", Password: "secret"})
		before := s.placed(t, by)
		signIns := s.signIns.Load()
		t.Logf("openconnect has %v on server %d; killing it", addr, old.n)
		old.kill()
		defer s.start(t, old.n) // the server comes back, empty
		now := s.failedOver(ctx, t, oc, addr, old)
		if info, _ := now.gw.WhoIs(addr); info.ClientAddr.Addr() != testenv.ClientAddr {
			t.Fatalf("server %d: the session's client is %v, want %v", now.n, info.ClientAddr, testenv.ClientAddr)
		}
		if n := s.signIns.Load() - signIns; n != 0 {
			t.Fatalf("%d new sign-ins during the failover, want none", n)
		}
		select {
		case <-oc.Done():
			t.Fatalf("openconnect exited:\n%s", oc.Proc.Tail(20))
		default:
		}
		s.unaffected(t, by, old, before)
		_ = oc.Close()
	})

	t.Run("tunnel.Client keeps its address when its server dies", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		s.waitReady(t)
		by := s.bystanders(ctx, t)
		c, err := tunnel.Dial(ctx, tunnel.ClientConfig{Server: s.front, Transport: tunnel.TransportTLS,
			Username: "alice", Password: "secret", PinSHA256: s.cert.Pin, Dialer: nsDialer{tp.Client},
			ReconnectTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		addr := c.Addr()
		if err := echoThrough(ctx, c.DialContext, s.echo.tcp.String(), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		old := s.holder(addr)
		if old == nil {
			t.Fatalf("no server holds %v", addr)
		}
		before := s.placed(t, by)
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
		if err := echoThrough(ctx, c.DialContext, s.echo.tcp.String(), 20*time.Second); err != nil {
			t.Fatal(err)
		}
		if n := s.signIns.Load() - signIns; n != 0 {
			t.Fatalf("%d new sign-ins during the failover, want none", n)
		}
		s.unaffected(t, by, old, before)
	})

	t.Run("the balancer's health checks pass and earn no ban points", func(t *testing.T) {
		s.waitReady(t)
		srv := s.servers[1]
		waitFor(t, 20*time.Second, "HAProxy's LOCAL health checks on the VPN port", func() bool {
			up, err := s.hap.ServersUp("probe")
			return err == nil && up["s1"] && strings.Count(srv.logs.String(), "balancer health check") >= 3
		})
		if p := srv.bans.Points(testenv.SiteLBAddr); p != 0 {
			t.Fatalf("HAProxy's health checks earned %d ban points", p)
		}
	})

	t.Run("PROXY v1 and v2 carry the client address", func(t *testing.T) {
		s.waitReady(t)
		for _, port := range []int{vpnPort, v1Port} {
			// The session exists from sign-in on: find it by its cookie's id.
			_, id := s.signIn(t, fmt.Sprintf("%s:%d", testenv.SiteFrontAddr, port))
			found := false
			for _, srv := range s.servers[1:] {
				for _, si := range srv.gw.Sessions() {
					if si.ID == id {
						found = true
						if si.ClientAddr.Addr() != testenv.ClientAddr {
							t.Fatalf("port %d: session's client %v, want %v", port, si.ClientAddr, testenv.ClientAddr)
						}
					}
				}
			}
			if !found {
				t.Fatalf("port %d: session %s on no server", port, id)
			}
		}
	})

	t.Run("a PROXY header from an untrusted peer is refused", func(t *testing.T) {
		// A peer on the site network that is not the balancer reaches
		// server 1 directly: as itself it is served ...
		untrusted := srcDialer{tp.LB, testenv.SiteUntrustedAddr}
		c, err := tunnel.Dial(ctx, tunnel.ClientConfig{Server: serverAddr(1), Transport: tunnel.TransportTLS,
			Username: "alice", Password: "secret", PinSHA256: s.cert.Pin, Dialer: untrusted})
		if err != nil {
			t.Fatalf("untrusted peer as itself: %v", err)
		}
		info, ok := s.servers[1].gw.WhoIs(c.Addr())
		c.Close()
		if !ok || info.ClientAddr.Addr() != testenv.SiteUntrustedAddr {
			t.Fatalf("the untrusted peer's session: %+v, %v; want its client address %v", info, ok, testenv.SiteUntrustedAddr)
		}
		// ... but a header claiming another address is refused.
		raw, err := untrusted.DialContext(ctx, "tcp", serverAddr(1))
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		hdr := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(203, 0, 113, 5), Port: 1}, &net.TCPAddr{IP: testenv.SiteServerAddr(1).AsSlice(), Port: vpnPort})
		if _, err := hdr.WriteTo(raw); err != nil {
			t.Fatal(err)
		}
		if err := tlsHandshake(raw); err == nil {
			t.Fatal("TLS served behind an untrusted PROXY header")
		}
		if !strings.Contains(s.servers[1].logs.String(), "not in Config.ProxyProtocolFrom") {
			t.Errorf("refusal not logged clearly:\n%s", s.servers[1].logs.String())
		}
	})

	t.Run("a trusted peer without a header is refused", func(t *testing.T) {
		c, err := testenv.DialFrom(ctx, tp.LB, testenv.SiteLBAddr, "tcp", serverAddr(1))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := tlsHandshake(c); err == nil {
			t.Fatal("TLS served to the trusted balancer's address without a PROXY header")
		}
	})

	t.Run("disconnect on one server ends the session on another and its cookie is refused everywhere", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		s.waitReady(t)
		cookie, _ := s.signIn(t, s.front)
		oc, addr, b := s.openconnect(ctx, t, testenv.OCOptions{Cookie: cookie})
		info, _ := b.gw.WhoIs(addr)
		var a, c *siteServer // the servers not running it
		for _, srv := range s.servers[1:] {
			switch {
			case srv == b:
			case a == nil:
				a = srv
			default:
				c = srv
			}
		}
		t.Logf("session %s runs on server %d; disconnecting it on server %d", info.ID, b.n, a.n)
		if err := a.gw.Disconnect(info.ID); err != nil {
			t.Fatalf("Disconnect on server %d of a session on server %d: %v", a.n, b.n, err)
		}
		select {
		case <-oc.Done():
		case <-time.After(15 * time.Second): // etcd on loopback carries a revocation in milliseconds
			t.Fatalf("openconnect still runs after the disconnect:\n%s", oc.Proc.Tail(20))
		}
		waitFor(t, 10*time.Second, fmt.Sprintf("server %d to end the session", b.n), func() bool {
			_, ok := b.gw.WhoIs(addr)
			return !ok
		})
		// C learns it from the store as B did; wait for that rather than
		// race its watch with the resume below.
		waitFor(t, 10*time.Second, fmt.Sprintf("server %d to learn the revocation", c.n), func() bool {
			return tunnel.IsRevokedForTest(c.gw, info.ID)
		})
		for _, srv := range []*siteServer{c, a, b} {
			st, err := resumeStatus(ctx, s.direct(srv.n, netip.AddrPortFrom(testenv.ClientAddr, 40000)), webvpnCookie(cookie))
			if err != nil {
				t.Fatalf("server %d: %v", srv.n, err)
			}
			if st == http.StatusOK {
				t.Fatalf("server %d resumed the revoked cookie", srv.n)
			}
		}
		// And openconnect itself, through HAProxy.
		if _, err := testenv.TryOpenconnect(t, tp.Client, testenv.OCOptions{Server: s.front, ServerCertPin: s.cert.Pin,
			Cookie: cookie, Timeout: 20 * time.Second}); err == nil {
			t.Fatal("openconnect resumed the revoked cookie through HAProxy")
		}
	})

	t.Run("drain: HAProxy takes the server out first, then its clients move with their addresses", func(t *testing.T) {
		testSiteDrain(ctx, t, s)
	})

	t.Run("store outage: sessions, sign-ins and failover go on; revocations and bans are reconciled", func(t *testing.T) {
		testSiteOutage(ctx, t, s)
	})

	// Last: the client's address is banned until the lift at its end.
	t.Run("wrong passwords through HAProxy ban the client on every server, never HAProxy", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		s.waitReady(t)
		o := testenv.OCOptions{Server: s.front, ServerCertPin: s.cert.Pin, User: "alice", Password: "wrong"}
		for i := range 3 {
			if _, err := testenv.Authenticate(t, tp.Client, o); err == nil {
				t.Fatalf("attempt %d: wrong password accepted", i)
			}
		}
		haproxyClean := func() {
			t.Helper()
			for _, srv := range s.servers[1:] {
				if p := srv.bans.Points(testenv.SiteLBAddr); p != 0 || srv.bans.Banned(testenv.SiteLBAddr) {
					t.Fatalf("server %d: HAProxy's address has %d ban points (banned: %v)", srv.n, p, srv.bans.Banned(testenv.SiteLBAddr))
				}
			}
		}
		haproxyClean()
		for _, srv := range s.servers[1:] {
			waitFor(t, 10*time.Second, fmt.Sprintf("server %d to ban %v", srv.n, testenv.ClientAddr), func() bool {
				return srv.bans.Banned(testenv.ClientAddr)
			})
		}
		haproxyClean()
		for _, srv := range s.servers[1:] {
			for _, b := range srv.bans.List() {
				if b.Addr != testenv.ClientAddr {
					t.Fatalf("server %d bans %v too: %+v", srv.n, b.Addr, srv.bans.List())
				}
			}
			// Refused before TLS as the client, served as anybody else
			// through the same balancer address.
			if c, err := s.direct(srv.n, netip.AddrPortFrom(testenv.ClientAddr, 40001)).DialContext(ctx, "tcp", ""); err == nil {
				err = tlsHandshake(c)
				c.Close()
				if err == nil {
					t.Fatalf("server %d served the banned client", srv.n)
				}
			}
			c, err := s.direct(srv.n, netip.MustParseAddrPort("198.18.77.1:1")).DialContext(ctx, "tcp", "")
			if err != nil {
				t.Fatal(err)
			}
			err = tlsHandshake(c)
			c.Close()
			if err != nil {
				t.Fatalf("server %d refused another client after the ban: %v", srv.n, err)
			}
		}
		o.Password = "secret"
		if _, err := testenv.Authenticate(t, tp.Client, o); err == nil {
			t.Fatal("banned client signed in through HAProxy")
		}
		// Lifted on one server, lifted everywhere.
		if !s.servers[2].gw.LiftBan(testenv.ClientAddr) {
			t.Fatal("LiftBan on server 2: no active ban")
		}
		for _, srv := range s.servers[1:] {
			waitFor(t, 10*time.Second, fmt.Sprintf("server %d to lift the ban", srv.n), func() bool {
				return !srv.bans.Banned(testenv.ClientAddr)
			})
		}
		if _, err := testenv.Authenticate(t, tp.Client, o); err != nil {
			t.Fatalf("after the lift: %v", err)
		}
	})
}

// resumeStatus sends a CSTP CONNECT with cookie over a TLS connection made
// with d and returns the HTTP status (200: the session resumed).
func resumeStatus(ctx context.Context, d proxiedDialer, cookie string) (int, error) {
	raw, err := d.DialContext(ctx, "tcp", "")
	if err != nil {
		return 0, err
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second)) // one round trip on a veth
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	fmt.Fprintf(c, "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: site\r\nCookie: webvpn=%s\r\nX-CSTP-Version: 1\r\nX-CSTP-MTU: 1400\r\n\r\n", cookie)
	req, _ := http.NewRequest(http.MethodConnect, "https://site/CSCOSSLC/tunnel", nil)
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return 0, err
	}
	return resp.StatusCode, nil
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

// metric returns the value line of metric (e.g. "underpass_site_store_up")
// on server n's /metrics, fetched from lb as a monitoring system would.
func (s *site) metric(ctx context.Context, n int, metric string) (string, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: s.tp.LB.Dial}, Timeout: 5 * time.Second}
	resp, err := hc.Get(fmt.Sprintf("http://%s:%d/metrics", testenv.SiteServerAddr(n), readyPort))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, metric+" "); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("server %d: no %s in /metrics", n, metric)
}
