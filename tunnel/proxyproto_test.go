package tunnel

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/underpass/underpass/auth"
)

// The loopback stands in for the network: the trusted balancer dials from
// 127.0.0.2, an untrusted peer from 127.0.0.3 (Linux routes all of
// 127.0.0.0/8 to lo).
var (
	balancerIP  = netip.MustParseAddr("127.0.0.2")
	strangerIP  = netip.MustParseAddr("127.0.0.3")
	realClient4 = netip.MustParseAddrPort("198.51.100.7:40001")
	realClient6 = netip.MustParseAddrPort("[2001:db8::7]:40002")
)

// dialFrom opens TCP to addr from src and writes hdr (a PROXY protocol
// header; nil: none) before TLS.
func dialFrom(t *testing.T, src netip.Addr, addr string, hdr *proxyproto.Header) *tls.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if hdr != nil {
		if _, err := hdr.WriteTo(c); err != nil {
			t.Fatal(err)
		}
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { tc.Close() })
	return tc
}

func proxyHeader(version byte, client netip.AddrPort, gw string) *proxyproto.Header {
	dst, _ := net.ResolveTCPAddr("tcp", gw)
	if client.Addr().Is6() {
		dst = &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: dst.Port}
	}
	return proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(client), dst)
}

func localHeader() *proxyproto.Header {
	return &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
}

// signInOn runs the XML sign-in on c and returns the cookie ("" on
// failure) or the handshake's error.
func signInOn(t *testing.T, c *tls.Conn, user, pass string) (string, error) {
	t.Helper()
	if err := c.Handshake(); err != nil {
		return "", err
	}
	br := bufio.NewReader(c)
	post(t, c, br, "/", "", initXML)
	resp, _ := post(t, c, br, "/auth", "", replyXML(user, pass))
	for _, ck := range resp.Cookies() {
		if ck.Name == "webvpn" {
			return ck.Value, nil
		}
	}
	return "", nil
}

func TestProxyProtocol(t *testing.T) {
	bans := auth.NewBans(auth.BanConfig{Threshold: 3 * auth.FailurePoints, BanFor: time.Minute})
	var (
		evMu   sync.Mutex
		events []Event
	)
	// seen reports whether an event of kind k came from client a.
	seen := func(k EventKind, a netip.Addr) bool {
		evMu.Lock()
		defer evMu.Unlock()
		for _, e := range events {
			if e.Kind == k && e.ClientAddr == a {
				return true
			}
		}
		return false
	}
	g, addr := startGateway(t, func(c *Config) {
		c.Bans = bans
		c.ProxyProtocolFrom = []netip.Prefix{netip.PrefixFrom(balancerIP, 32)}
		c.Events = func(e Event) { evMu.Lock(); events = append(events, e); evMu.Unlock() }
	})

	t.Run("v1 and v2 headers from the balancer name the client", func(t *testing.T) {
		for _, tc := range []struct {
			version byte
			client  netip.AddrPort
		}{{1, realClient4}, {2, realClient4}, {1, realClient6}, {2, realClient6}} {
			c := dialFrom(t, balancerIP, addr, proxyHeader(tc.version, tc.client, addr))
			cookie, err := signInOn(t, c, "alice", "secret")
			if err != nil || cookie == "" {
				t.Fatalf("v%d %v: sign-in: %q, %v", tc.version, tc.client, cookie, err)
			}
			// The CONNECT on another proxied connection: the sessions view
			// shows the client, never the balancer.
			cc := dialFrom(t, balancerIP, addr, proxyHeader(tc.version, tc.client, addr))
			fmt.Fprintf(cc, "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: gw\r\nCookie: webvpn=%s\r\nX-CSTP-Version: 1\r\n\r\n", cookie)
			line, err := bufio.NewReader(cc).ReadString('\n')
			if err != nil || !strings.Contains(line, " 200 ") {
				t.Fatalf("v%d: CONNECT: %q %v", tc.version, line, err)
			}
			found := false
			for _, s := range g.Sessions() {
				if s.Connected && s.ClientAddr == tc.client {
					found = true
				}
			}
			if !found {
				t.Fatalf("v%d: no connected session from %v in %+v", tc.version, tc.client, g.Sessions())
			}
			// Telemetry (the connect record, logged just after the CONNECT
			// reply) and the sign-in name the client too.
			waitFor(t, func() bool { return seen(EventSignIn, tc.client.Addr()) && seen(EventConnect, tc.client.Addr()) },
				fmt.Sprintf("v%d: sign-in and connect events from %v", tc.version, tc.client.Addr()))
			cc.Close()
		}
	})

	t.Run("wrong passwords ban the client, not the balancer", func(t *testing.T) {
		victim := netip.MustParseAddrPort("198.51.100.66:5000")
		for range 3 {
			c := dialFrom(t, balancerIP, addr, proxyHeader(2, victim, addr))
			if cookie, err := signInOn(t, c, "alice", "wrong"); err != nil || cookie != "" {
				t.Fatalf("wrong password: %q %v", cookie, err)
			}
		}
		if !seen(EventSignInFailed, victim.Addr()) || !seen(EventBanned, victim.Addr()) {
			t.Fatalf("failed sign-in and ban events do not name the client %v", victim.Addr())
		}
		if !bans.Banned(victim.Addr()) {
			t.Fatalf("client not banned: %+v", bans.List())
		}
		if bans.Points(balancerIP) != 0 {
			t.Fatalf("the balancer earned %d points", bans.Points(balancerIP))
		}
		// The banned client is refused before TLS through the balancer ...
		if _, err := signInOn(t, dialFrom(t, balancerIP, addr, proxyHeader(2, victim, addr)), "alice", "secret"); err == nil {
			t.Fatal("banned client completed a TLS handshake through the balancer")
		}
		// ... while the balancer keeps serving everybody else.
		if cookie, err := signInOn(t, dialFrom(t, balancerIP, addr, proxyHeader(2, realClient4, addr)), "alice", "secret"); err != nil || cookie == "" {
			t.Fatalf("another client after the ban: %q %v", cookie, err)
		}
	})

	t.Run("health checks never earn ban points", func(t *testing.T) {
		for range 5 {
			c := dialFrom(t, balancerIP, addr, localHeader())
			if cookie, err := signInOn(t, c, "alice", "wrong"); err != nil || cookie != "" {
				t.Fatalf("LOCAL connection: %q %v", cookie, err)
			}
		}
		if p := bans.Points(balancerIP); p != 0 || bans.Banned(balancerIP) {
			t.Fatalf("the balancer's LOCAL connections earned %d points", p)
		}
	})

	t.Run("a header from an untrusted address is refused", func(t *testing.T) {
		c := dialFrom(t, strangerIP, addr, proxyHeader(2, realClient4, addr))
		if _, err := signInOn(t, c, "alice", "secret"); err == nil {
			t.Fatal("PROXY header from an untrusted peer accepted")
		}
		c = dialFrom(t, strangerIP, addr, proxyHeader(1, realClient4, addr))
		if _, err := signInOn(t, c, "alice", "secret"); err == nil {
			t.Fatal("v1 PROXY header from an untrusted peer accepted")
		}
		// Without a header the stranger is an ordinary client.
		if cookie, err := signInOn(t, dialFrom(t, strangerIP, addr, nil), "alice", "secret"); err != nil || cookie == "" {
			t.Fatalf("direct client: %q %v", cookie, err)
		}
	})

	t.Run("the balancer without a header is refused", func(t *testing.T) {
		if _, err := signInOn(t, dialFrom(t, balancerIP, addr, nil), "alice", "secret"); err == nil {
			t.Fatal("trusted balancer's connection without a header accepted")
		}
	})
}

// TestBanExempt: failed sign-ins from an exempt network earn no points;
// from elsewhere they do.
func TestBanExempt(t *testing.T) {
	bans := auth.NewBans(auth.BanConfig{Threshold: 3 * auth.FailurePoints, BanFor: time.Minute})
	_, addr := startGateway(t, func(c *Config) {
		c.Bans = bans
		c.BanExempt = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
	})
	for range 4 {
		if cookie, err := signInOn(t, dialFrom(t, balancerIP, addr, nil), "alice", "wrong"); err != nil || cookie != "" {
			t.Fatalf("exempt: %q %v", cookie, err)
		}
	}
	if p := bans.Points(balancerIP); p != 0 {
		t.Fatalf("exempt address earned %d points", p)
	}
	if cookie, err := signInOn(t, dialFrom(t, strangerIP, addr, nil), "alice", "wrong"); err != nil || cookie != "" {
		t.Fatalf("other: %q %v", cookie, err)
	}
	if p := bans.Points(strangerIP); p != auth.FailurePoints {
		t.Fatalf("a non-exempt address earned %d points, want %d", p, auth.FailurePoints)
	}
}

// FuzzFrontDoor feeds arbitrary bytes to the front door of a trusted
// balancer's connection: it must refuse or settle a client address, never
// panic or hang past the header timeout.
func FuzzFrontDoor(f *testing.F) {
	f.Add([]byte("PROXY TCP4 198.51.100.7 127.0.0.1 5555 443\r\n\x16\x03\x01"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc6\x33\x64\x07\x7f\x00\x00\x01\x15\xb3\x01\xbb"))
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"))
	f.Add([]byte("\x16\x03\x01\x00\x05hello"))
	f.Fuzz(func(t *testing.T, b []byte) {
		srv, cli := net.Pipe()
		defer cli.Close()
		go func() { _, _ = cli.Write(b); cli.Close() }()
		pc := proxyproto.NewConn(srv, proxyproto.WithPolicy(proxyproto.REQUIRE), proxyproto.SetReadHeaderTimeout(time.Second))
		c := &peerConn{Conn: pc, pc: pc, cfg: &Config{}, log: slog.New(slog.DiscardHandler)}
		ra := c.RemoteAddr()
		if c.err == nil {
			if ra == nil {
				t.Fatal("settled without an address")
			}
			if h := pc.ProxyHeader(); h == nil {
				t.Fatalf("accepted without a header: %q", b)
			}
		}
		c.Close()
	})
}
