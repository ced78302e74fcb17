package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/internal/core/cstp"
	"github.com/underpass/underpass/internal/testinfra/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// http.Server's idle-connection goroutines of the test clients'
		// transports close asynchronously.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// passwords is a test authenticator: user -> password.
type passwords map[string]string

func (p passwords) Authenticate(_ context.Context, c auth.Credentials) (*auth.Identity, error) {
	if c.Username == "" {
		return nil, auth.ErrNotApplicable
	}
	if pw, ok := p[c.Username]; !ok || pw != c.Password {
		return nil, auth.ErrInvalidCredentials
	}
	return &auth.Identity{User: c.Username, Method: "static"}, nil
}

var testCert = func() *tls.Certificate {
	c, k, err := certutil.SelfSigned([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		panic(err)
	}
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		panic(err)
	}
	return &pair
}()

func TestConfigValidate(t *testing.T) {
	base := Config{Authenticator: passwords{}}
	tests := []struct {
		name string
		mod  func(*Config)
		want []string // the FieldErrors' fields, [index] where one is named, in order
	}{
		{"zero value is valid", func(*Config) {}, nil},
		{"no authenticator", func(c *Config) { c.Authenticator = nil }, []string{"Authenticator"}},
		{"mtu too small", func(c *Config) { c.MTU = 500 }, []string{"MTU"}},
		{"mtu too big", func(c *Config) { c.MTU = 20000 }, []string{"MTU"}},
		{"pool v6", func(c *Config) { c.Pool = netip.MustParsePrefix("fd00::/64") }, []string{"Pool"}},
		{"pool too small", func(c *Config) { c.Pool = netip.MustParsePrefix("10.9.9.8/31") }, []string{"Pool"}},
		{"pool6 ULA /64", func(c *Config) { c.Pool6 = netip.MustParsePrefix("fd7a:5c3e:11::/64") }, nil},
		{"pool6 /126", func(c *Config) { c.Pool6 = netip.MustParsePrefix("2001:db8::/126") }, nil},
		{"pool6 IPv4", func(c *Config) { c.Pool6 = netip.MustParsePrefix("10.1.0.0/16") }, []string{"Pool6"}},
		{"pool6 IPv4-mapped", func(c *Config) { c.Pool6 = netip.MustParsePrefix("::ffff:10.1.0.0/112") }, []string{"Pool6"}},
		{"pool6 host bits", func(c *Config) { c.Pool6 = netip.MustParsePrefix("fd7a::1/64") }, []string{"Pool6"}},
		{"pool6 too small", func(c *Config) { c.Pool6 = netip.MustParsePrefix("fd7a::/127") }, []string{"Pool6"}},
		{"pool6 link-local", func(c *Config) { c.Pool6 = netip.MustParsePrefix("fe80::/64") }, []string{"Pool6"}},
		{"pool6 multicast", func(c *Config) { c.Pool6 = netip.MustParsePrefix("ff05::/64") }, []string{"Pool6"}},
		{"pool6 covering loopback and IPv4-mapped", func(c *Config) { c.Pool6 = netip.MustParsePrefix("::/64") }, []string{"Pool6", "Pool6"}},
		{"pool6 overlaps include", func(c *Config) {
			c.Pool6 = netip.MustParsePrefix("fd7a::/64")
			c.SplitInclude = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
		}, []string{"Pool6"}},
		{"pool6 smaller than the site's sessions", func(c *Config) {
			c.Pool6 = netip.MustParsePrefix("fd7a::/120") // 254 clients
			c.MaxSessions = 200
			c.Site = Site{Servers: 2, ServerIndex: 1}
		}, []string{"Pool6"}},
		{"bad domain", func(c *Config) { c.SearchDomains = []string{"ok.example", "bad_domain"} }, []string{"SearchDomains[1]"}},
		{"zero network include", func(c *Config) { c.SplitInclude = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/1")} }, []string{"SplitInclude[0]"}},
		{"loopback include", func(c *Config) {
			c.SplitInclude = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.0/8")}
		}, []string{"SplitInclude[1]"}},
		{"v6 loopback include", func(c *Config) { c.SplitInclude = []netip.Prefix{netip.MustParsePrefix("::1/128")} }, []string{"SplitInclude[0]"}},
		{"loopback exclude is fine", func(c *Config) { c.SplitExclude = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")} }, nil},
		{"pool overlaps include", func(c *Config) { c.SplitInclude = []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16")} }, []string{"Pool"}},
		{"dtls port", func(c *Config) { c.DTLSPort = 70000 }, []string{"DTLSPort"}},
		{"udp idle timeout", func(c *Config) { c.UDPIdleTimeout = 10 * time.Millisecond }, []string{"UDPIdleTimeout"}},
		{"proxy exclusion", func(c *Config) {
			c.Proxy = ProxySettings{Server: "proxy.corp.example:8080", Exclude: []string{"ok.example", "con*oso.com"}}
		}, []string{"Proxy.Exclude[1]"}},
		{"many at once", func(c *Config) {
			c.Authenticator = nil
			c.MTU = 1
			c.DPD = time.Millisecond
			c.Banner = "two\nlines"
		}, []string{"Authenticator", "MTU", "DPD", "Banner"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			tt.mod(&c)
			err := c.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("want *ConfigError, got %v", err)
			}
			var got []string
			for _, e := range ce.Errs {
				var fe *FieldError
				if !errors.As(e, &fe) {
					t.Fatalf("problem %q is not a *FieldError", e)
				}
				checkConfigField(t, reflect.TypeFor[Config](), fe.Field)
				if fe.Index >= 0 {
					got = append(got, fmt.Sprintf("%s[%d]", fe.Field, fe.Index))
				} else {
					got = append(got, fe.Field)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("fields %v, want %v (%v)", got, tt.want, err)
			}
		})
	}
	t.Run("501 rules", func(t *testing.T) {
		c := base
		for i := 0; i < 501; i++ {
			c.SplitInclude = append(c.SplitInclude, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24))
		}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "500") {
			t.Errorf("want a 500-rule error, got %v", err)
		}
	})
}

// checkConfigField fails t unless field (dotted into nested structs) is
// an exported field of typ: tunnel names Go fields, never a config file's
// keys.
func checkConfigField(t *testing.T, typ reflect.Type, field string) {
	t.Helper()
	for _, name := range strings.Split(field, ".") {
		f, ok := typ.FieldByName(name)
		if !ok || !f.IsExported() {
			t.Errorf("%q does not name a field of %v", field, typ)
			return
		}
		typ = f.Type
	}
}

// TestReloadNamesAreFields: every setting ReloadResult can name is a
// Config field.
func TestReloadNamesAreFields(t *testing.T) {
	for _, f := range liveFields {
		checkConfigField(t, reflect.TypeFor[Config](), f.name)
	}
	for _, f := range restartFields {
		checkConfigField(t, reflect.TypeFor[Config](), f.name)
	}
}

func TestSignInAndConnect(t *testing.T) {
	g, addr := startGateway(t, nil)

	if cookie, body := signIn(t, addr, "alice", "wrong"); cookie != "" || !strings.Contains(body, "Login failed") {
		t.Fatalf("wrong password: cookie %q body %s", cookie, body)
	}
	if n := len(g.Sessions()); n != 0 {
		t.Fatalf("wrong password left %d sessions", n)
	}
	if tc, st := connectTunnel(t, addr, "not-a-cookie"); tc != nil || st != 401 {
		t.Fatalf("bad cookie: status %d", st)
	}

	cookie, body := signIn(t, addr, "alice", "secret")
	if cookie == "" || !strings.Contains(body, `type="complete"`) {
		t.Fatalf("sign-in: %s", body)
	}
	if len(cookie) < 22 || strings.ContainsAny(cookie, ";, ") {
		t.Fatalf("cookie %q: too short or not cookie-safe", cookie)
	}
	tc, st := connectTunnel(t, addr, cookie)
	if tc == nil {
		t.Fatalf("CONNECT: %d", st)
	}
	h := tc.hdr
	checks := map[string]string{
		"X-CSTP-Netmask":        "255.255.0.0",
		"X-CSTP-MTU":            "16000",
		"X-CSTP-DPD":            "2",
		"X-CSTP-Default-Domain": "corp.example example.net",
		"X-CSTP-Rekey-Method":   "none",
		"X-CSTP-DNS":            "10.0.0.53",
	}
	for k, v := range checks {
		if got := h.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if inc := strings.Join(h.Values("X-CSTP-Split-Include"), ","); !strings.Contains(inc, "198.18.0.0/255.255.0.0") ||
		!strings.Contains(inc, "10.0.0.53/255.255.255.255") {
		t.Errorf("split include %q (want the route and the DNS server)", inc)
	}
	if exc := strings.Join(h.Values("X-CSTP-Split-Exclude"), ","); exc != "198.18.200.0/255.255.255.0" {
		t.Errorf("split exclude %q", exc)
	}
	if sd := strings.Join(h.Values("X-CSTP-Split-DNS"), ","); sd != "corp.example,example.net" {
		t.Errorf("split DNS %q, want the search domains", sd)
	}
	if h.Get("X-CSTP-Content-Encoding") != "" {
		t.Error("compression must not be offered")
	}
	first := tc.tunAddr
	if !DefaultPool.Contains(first) || first == g.Addr() {
		t.Fatalf("address %v not a client address in the pool", first)
	}
	if s, ok := g.WhoIs(first); !ok || s.User != "alice" || !s.Connected {
		t.Fatalf("WhoIs(%v) = %+v, %v", first, s, ok)
	}

	// DPD request answered with the same payload.
	if err := tc.writeFrame(cstp.DPDReq, []byte("ping!")); err != nil {
		t.Fatal(err)
	}
	typ, p, err := tc.readFrame(5 * time.Second)
	if err != nil || typ != cstp.DPDResp || string(p) != "ping!" {
		t.Fatalf("DPD: %v %v %q", typ, err, p)
	}

	// Reconnect with the cookie (old connection lost): same address.
	tc.Close()
	tc2, st := connectTunnel(t, addr, cookie)
	if tc2 == nil {
		t.Fatalf("reconnect: %d", st)
	}
	if tc2.tunAddr != first {
		t.Fatalf("reconnect got %v, want %v", tc2.tunAddr, first)
	}
	// A second user gets another address.
	tb := dial(t, addr, "bob", "hunter2")
	if tb.tunAddr == first {
		t.Fatal("two sessions share an address")
	}

	// User disconnect (0xB0) ends the session: the cookie stops working.
	if err := tc2.writeFrame(cstp.Disconnect, []byte{0xb0}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, ok := g.WhoIs(first); return !ok }, "session end after DISCONNECT")
	if tc, st := connectTunnel(t, addr, cookie); tc != nil || st != 401 {
		t.Fatalf("cookie after logoff: status %d", st)
	}
}

func TestOtherPathsLookLikeAWebServer(t *testing.T) {
	_, addr := startGateway(t, nil)
	c := tlsDial(t, addr)
	defer c.Close()
	_, _ = io.WriteString(c, "GET /admin HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
	b, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(b), "HTTP/1.1 404") {
		t.Fatalf("GET: %q", b)
	}
}

func TestTLSVersions(t *testing.T) {
	_, addr := startGateway(t, nil)
	for _, v := range []struct {
		ver uint16
		ok  bool
	}{{tls.VersionTLS13, true}, {tls.VersionTLS12, true}, {tls.VersionTLS11, false}, {tls.VersionTLS10, false}} {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: v.ver, MaxVersion: v.ver})
		if (err == nil) != v.ok {
			t.Errorf("TLS %x: err=%v, want ok=%v", v.ver, err, v.ok)
		}
		if c != nil {
			c.Close()
		}
	}
}

func TestSessionTimeoutSendsDisconnect(t *testing.T) {
	_, addr := startGateway(t, func(c *Config) { c.SessionTimeout = 2 * time.Second })
	tc := dial(t, addr, "alice", "secret")
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		typ, _, err := tc.readFrame(5 * time.Second)
		if err != nil {
			t.Fatalf("no DISCONNECT before the connection ended: %v", err)
		}
		if typ == cstp.Disconnect {
			return
		}
	}
	t.Fatal("no DISCONNECT")
}

// TestMalformedInput: garbage, truncated frames, oversized lengths and
// half-done handshakes never crash or wedge the gateway; other sessions keep
// working.
func TestMalformedInput(t *testing.T) {
	g, addr := startGateway(t, nil)
	good := dial(t, addr, "alice", "secret")

	// Raw garbage instead of a TLS handshake, and a connection that stops
	// mid-handshake and just sits there.
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = raw.Write([]byte("\x16\x03\x01\x00\x05hello garbage"))
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	defer raw.Close()

	cases := map[string][]byte{
		"bad magic":       []byte("XXXX\x00\x04\x00\x00abcd"),
		"oversize length": []byte("STF\x01\xff\xff\x00\x00"),
		"truncated frame": []byte("STF\x01\x00\x40\x00\x00abc"),
		"not ip":          cstp.AppendFrame(nil, cstp.Data, []byte("this is not an IP packet")),
		"compressed":      cstp.AppendFrame(nil, cstp.Compressed, []byte{1, 2, 3}),
	}
	for name, b := range cases {
		tc := dial(t, addr, "bob", "hunter2")
		if _, err := tc.conn.Write(b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if name == "not ip" {
			// A bad packet is dropped, the connection lives on.
			if err := tc.writeFrame(cstp.DPDReq, []byte("x")); err != nil {
				t.Fatal(err)
			}
			if typ, _, err := tc.readFrame(5 * time.Second); err != nil || typ != cstp.DPDResp {
				t.Fatalf("%s: connection died: %v %v", name, typ, err)
			}
		} else if name != "truncated frame" {
			// The gateway drops the connection.
			_ = tc.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, tc.conn); err != nil && !isClosedErr(err) {
				t.Fatalf("%s: connection not closed: %v", name, err)
			}
		}
		tc.Close()
	}
	// The good session still answers.
	if err := good.writeFrame(cstp.DPDReq, []byte("alive")); err != nil {
		t.Fatal(err)
	}
	if typ, p, err := good.readFrame(5 * time.Second); err != nil || typ != cstp.DPDResp || string(p) != "alive" {
		t.Fatalf("good session: %v %q %v", typ, p, err)
	}
	_ = g
}

func isClosedErr(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || (errors.As(err, &ne) && !ne.Timeout()) ||
		strings.Contains(err.Error(), "reset")
}

func TestShutdownAndCloseIdempotent(t *testing.T) {
	g, addr := startGateway(t, nil)
	tc := dial(t, addr, "alice", "secret")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	// The drained client is cut off without DISCONNECT (so it reconnects).
	for {
		typ, _, err := tc.readFrame(5 * time.Second)
		if err != nil {
			break
		}
		if typ == cstp.Disconnect {
			t.Fatal("drain must not log the client off")
		}
	}
	if err := g.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("still accepting after Shutdown")
	}
}

func waitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var _ atomic.Bool

// TestIdleTimeoutSendsDisconnect: a session that moves no data for the
// idle timeout is ended with DISCONNECT, and its cookie stops working.
func TestIdleTimeoutSendsDisconnect(t *testing.T) {
	g, addr := startGateway(t, func(c *Config) { c.IdleTimeout = 2 * time.Second })
	tc := dial(t, addr, "alice", "secret")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatal("no DISCONNECT")
		}
		typ, _, err := tc.readFrame(10 * time.Second)
		if err != nil {
			t.Fatalf("no DISCONNECT before the connection ended: %v", err)
		}
		if typ == cstp.Disconnect {
			break
		}
	}
	waitFor(t, func() bool { return len(g.Sessions()) == 0 }, "idle session to end")
}

func TestIdleWatch(t *testing.T) {
	s := &session{}
	w := newIdleWatch(s)
	t0 := w.from
	for _, tc := range []struct {
		after time.Duration
		moved uint64
		limit time.Duration
		want  bool
	}{
		{time.Second, 0, 0, false},                  // no limit: never idle
		{time.Second, 0, 2 * time.Second, false},    // quiet, but not long enough
		{3 * time.Second, 0, 2 * time.Second, true}, // quiet past the limit
		{4 * time.Second, 10, 2 * time.Second, false},
		{5 * time.Second, 0, 2 * time.Second, false}, // traffic at 4 s restarted the clock
		{7 * time.Second, 0, 2 * time.Second, true},
	} {
		s.bytesIn.Add(tc.moved)
		if got := w.expired(t0.Add(tc.after), tc.limit); got != tc.want {
			t.Errorf("after %v (moved %d, limit %v): %v, want %v", tc.after, tc.moved, tc.limit, got, tc.want)
		}
	}
}

// TestLogoffWhileGatewaySends: a client that logs off (DISCONNECT, then an
// abrupt close) while the gateway is busy sending to it ends its session as
// a logoff: the cookie is refused at once. The gateway's write fails on the
// closed connection first, and used to win: the session was taken for a
// lost connection and kept for ReconnectGrace.
func TestLogoffWhileGatewaySends(t *testing.T) {
	// A host service that floods whoever writes to it, for at most 10 s
	// or until the gateway's socket is gone.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var floods sync.WaitGroup
	t.Cleanup(floods.Wait) // after ServePacket's cleanup closes pc: cleanups run last-in first-out
	testenv.ServePacket(t, pc, func(_ []byte, from net.Addr) {
		floods.Add(1)
		go func() {
			defer floods.Done()
			junk := make([]byte, 1200)
			for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
				if _, err := pc.WriteTo(junk, from); err != nil {
					return
				}
			}
		}()
	})
	flood := netip.AddrPortFrom(netip.MustParseAddr("198.18.1.1"), uint16(pc.LocalAddr().(*net.UDPAddr).Port))

	g, addr := startGateway(t, nil)
	const rounds = 8 // the race is the scheduler's: several tries make it likely
	for i := range rounds {
		tc := dial(t, addr, "alice", "secret")
		src := netip.AddrPortFrom(tc.tunAddr, uint16(40000+i))
		if err := tc.writeFrame(cstp.Data, udpPacket(src, flood, []byte("go"))); err != nil {
			t.Fatal(err)
		}
		// The client stops reading: the gateway's writes fill the
		// connection and block until it closes.
		waitFor(t, func() bool { return g.Stats().BytesOut > 0 }, "the flood to reach the tunnel")
		time.Sleep(50 * time.Millisecond)
		if err := tc.writeFrame(cstp.Disconnect, []byte{0xb0}); err != nil {
			t.Fatal(err)
		}
		tc.conn.NetConn().(*net.TCPConn).SetLinger(0)
		tc.conn.NetConn().Close() // unread data: the gateway gets a reset
		waitFor(t, func() bool { info, ok := g.WhoIs(tc.tunAddr); return !ok || !info.Connected }, "the gateway to see the connection end")
		if c, st := connectTunnel(t, addr, tc.cookie); c != nil || st != 401 {
			t.Fatalf("round %d: the cookie still works after a logoff (status %d): taken for a lost connection", i, st)
		}
	}
}
