package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	utls "github.com/refraction-networking/utls"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/dnsproxy"
	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// udpEcho echoes UDP datagrams of any size on loopback until the test
// ends.
func udpEcho(t testing.TB) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.ServePacket(t, pc, func(b []byte, from net.Addr) { _, _ = pc.WriteTo(b, from) })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// startGateway serves a gateway for the package's tests: TCP (AnyConnect)
// and, unless disabled, UDP (QUIC, DTLS) on one loopback port; users alice
// and bob; testenv's loopback corporate network routed; a DNS proxy that
// asks a corporate DNS server on loopback. mod adjusts the config.
func startGateway(t testing.TB, mod func(*Config)) (*Gateway, string) {
	t.Helper()
	up := testenv.LoopCorpDNS(t)
	g, err := New(func() Config {
		c := Config{
			Certificate:   testCert,
			Authenticator: passwords{"alice": "secret", "bob": "hunter2"},
			SplitInclude:  []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")},
			SplitExclude:  []netip.Prefix{netip.MustParsePrefix("198.18.200.0/24")},
			HostAddrs:     []netip.Addr{netip.MustParseAddr("198.18.1.7")}, // stands in for the gateway host
			Dialer:        testenv.LoopCorpDialer{},
			DNS:           []netip.Addr{netip.MustParseAddr("10.0.0.53")},
			SearchDomains: []string{"corp.example", "example.net"},
			DNSProxy:      dnsproxyUpstream(up),
			DPD:           2 * time.Second,
		}
		if mod != nil {
			mod(&c)
		}
		return c
	}())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.ServeTCPAndUDP(l) }()
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Errorf("serve returned %v, want ErrClosed", err)
		}
	})
	return g, l.Addr().String()
}

func testPin(t testing.TB) string {
	pin, err := certutil.Pin(testCert)
	if err != nil {
		t.Fatal(err)
	}
	return pin
}

func dialClient(t testing.TB, addr string, mod func(*ClientConfig)) *Client {
	t.Helper()
	cfg := ClientConfig{Server: addr, Username: "alice", Password: "secret", PinSHA256: testPin(t)}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// echoTCP sends msg over a TCP connection through c and checks the echo.
func echoTCP(ctx context.Context, c *Client, address string, msg []byte) error {
	conn, err := c.DialContext(ctx, "tcp", address)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	go func() { _, _ = conn.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return errors.New("echo mismatch")
	}
	return nil
}

func TestClientOverQUICAndTLS(t *testing.T) {
	echo := testenv.EchoServer(t)
	uecho := udpEcho(t)
	for _, mode := range []TransportMode{TransportQUIC, TransportTLS, TransportAuto} {
		t.Run(mode.String(), func(t *testing.T) {
			g, addr := startGateway(t, nil)
			c := dialClient(t, addr, func(cc *ClientConfig) { cc.Transport = mode })
			want := map[TransportMode]string{TransportQUIC: "quic", TransportTLS: "tls", TransportAuto: "quic"}[mode]
			if c.Transport() != want {
				t.Errorf("transport %q, want %q", c.Transport(), want)
			}
			if !DefaultPool.Contains(c.Addr()) {
				t.Errorf("address %v", c.Addr())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			// TCP by name: the single label resolves through the pushed
			// DNS server and search list (gateway proxy -> corporate DNS).
			msg := make([]byte, 300_000)
			if err := echoTCP(ctx, c, net.JoinHostPort("echo", itoa(echo.Port())), msg); err != nil {
				t.Fatalf("TCP echo by name: %v", err)
			}
			// UDP.
			uc, err := c.DialContext(ctx, "udp", net.JoinHostPort("198.18.1.1", itoa(uecho.Port())))
			if err != nil {
				t.Fatal(err)
			}
			_ = uc.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := uc.Write([]byte("hello udp")); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 64)
			n, err := uc.Read(b)
			if err != nil || string(b[:n]) != "hello udp" {
				t.Fatalf("UDP echo: %q %v", b[:n], err)
			}
			uc.Close()
			// Ping the gateway.
			if _, err := c.Ping(ctx, g.Addr()); err != nil {
				t.Errorf("ping gateway: %v", err)
			}
			// Routes: outside the pushed routes is refused by the client...
			if _, err := c.DialContext(ctx, "tcp", "203.0.113.9:80"); !errors.Is(err, ErrNotRouted) {
				t.Errorf("outside routes: %v, want ErrNotRouted", err)
			}
			// ...and inside them the gateway host is refused by the gateway
			// at once (RST), not after a timeout.
			start := time.Now()
			if _, err := c.DialContext(ctx, "tcp", net.JoinHostPort("198.18.1.7", itoa(echo.Port()))); err == nil {
				t.Error("gateway host reachable")
			} else if time.Since(start) > 5*time.Second {
				t.Errorf("refusal took %v", time.Since(start))
			}
			ss := g.Sessions()
			if len(ss) != 1 || ss[0].User != "alice" || ss[0].Address != c.Addr() {
				t.Fatalf("sessions %+v", ss)
			}

			// Reconnect keeps the address: the gateway drops the
			// connection (as a failing server would), the client resumes.
			// A TCP flow open across the reconnect carries on (R-P6).
			addr0 := c.Addr()
			kept, err := c.DialContext(ctx, "tcp", net.JoinHostPort("198.18.1.1", itoa(echo.Port())))
			if err != nil {
				t.Fatal(err)
			}
			defer kept.Close()
			roundTrip := func(msg string) {
				t.Helper()
				_ = kept.SetDeadline(time.Now().Add(15 * time.Second))
				if _, err := kept.Write([]byte(msg)); err != nil {
					t.Fatalf("kept flow write: %v", err)
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(kept, got); err != nil || string(got) != msg {
					t.Fatalf("kept flow echo: %q, %v", got, err)
				}
			}
			roundTrip("before the reconnect")
			for _, l := range g.liveLinks() {
				l.abort()
			}
			waitFor(t, func() bool { return c.Reconnects() == 1 && len(g.liveLinks()) == 1 }, "reconnect")
			if c.Addr() != addr0 {
				t.Errorf("address changed on reconnect: %v -> %v", addr0, c.Addr())
			}
			roundTrip("after the reconnect, same connection")
			if err := echoTCP(ctx, c, net.JoinHostPort("198.18.1.1", itoa(echo.Port())), []byte("after reconnect")); err != nil {
				t.Fatalf("after reconnect: %v", err)
			}
			if n := len(g.Sessions()); n != 1 {
				t.Errorf("%d sessions after reconnect, want 1", n)
			}
			// Close logs off: the session ends on the gateway at once.
			_ = c.Close()
			waitFor(t, func() bool { return len(g.Sessions()) == 0 }, "session to end after Close")
		})
	}
}

// TestClientEnforcedWhenRoutesIgnored: a client that sends outside its
// routes still cannot reach excluded networks (the TLS path: the QUIC
// library itself drops such packets on the client).
func TestClientEnforcedWhenRoutesIgnored(t *testing.T) {
	echo := testenv.EchoServer(t)
	_, addr := startGateway(t, nil)
	c := dialClient(t, addr, func(cc *ClientConfig) { cc.Transport = TransportTLS; cc.ignoreRoutes = true })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, dst := range []string{"198.18.200.1", "203.0.113.9"} { // excluded; outside include
		start := time.Now()
		if _, err := c.DialContext(ctx, "tcp", net.JoinHostPort(dst, itoa(echo.Port()))); err == nil {
			t.Errorf("%s reachable", dst)
		} else if time.Since(start) > 5*time.Second {
			t.Errorf("%s: refusal took %v", dst, time.Since(start))
		}
	}
}

func TestClientDisableUDPForcesTLS(t *testing.T) {
	_, addr := startGateway(t, func(c *Config) { c.DisableUDP = true })
	c := dialClient(t, addr, func(cc *ClientConfig) { cc.QUICFallback = time.Second })
	if c.Transport() != "tls" {
		t.Errorf("transport %q, want tls", c.Transport())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := Dial(ctx, ClientConfig{Server: addr, Username: "alice", Password: "secret", PinSHA256: testPin(t), Transport: TransportQUIC}); err == nil {
		t.Error("QUIC-only client connected to a TCP-only gateway")
	}
}

// TestClientRevokedCredentialEndsSession: once the user's credential is
// revoked, ending the session stops the client for good (a new sign-in is
// refused), on both transports.
func TestClientRevokedCredentialEndsSession(t *testing.T) {
	for _, mode := range []TransportMode{TransportQUIC, TransportTLS} {
		t.Run(mode.String(), func(t *testing.T) {
			var base Config
			g, addr := startGateway(t, func(c *Config) { base = *c })
			c := dialClient(t, addr, func(cc *ClientConfig) { cc.Transport = mode })
			next := base
			next.Authenticator = passwords{"bob": "hunter2"} // alice revoked
			if _, err := g.Reload(next); err != nil {
				t.Fatal(err)
			}
			if err := g.Disconnect(g.Sessions()[0].ID); err != nil {
				t.Fatal(err)
			}
			select {
			case <-c.Done():
			case <-time.After(15 * time.Second):
				t.Fatal("client still running after its session was revoked")
			}
			var ae *AuthError
			if !errors.Is(c.Err(), ErrSessionEnded) || !errors.As(c.Err(), &ae) {
				t.Errorf("Err() = %v, want ErrSessionEnded with an AuthError", c.Err())
			}
			if _, err := c.DialContext(context.Background(), "tcp", "198.18.1.1:1"); err == nil {
				t.Error("DialContext works after the session ended")
			}
		})
	}
}

func TestClientWrongPassword(t *testing.T) {
	_, addr := startGateway(t, nil)
	for _, mode := range []TransportMode{TransportQUIC, TransportTLS} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := Dial(ctx, ClientConfig{Server: addr, Username: "alice", Password: "nope", PinSHA256: testPin(t), Transport: mode})
		cancel()
		var ae *AuthError
		if !errors.As(err, &ae) {
			t.Errorf("%v: err = %v, want *AuthError", mode, err)
		}
	}
}

func TestClientConfigErrors(t *testing.T) {
	_, err := Dial(context.Background(), ClientConfig{Server: "ftp://x", Fingerprint: "netscape", PinSHA256: "pin-sha256:short"})
	var ce *ConfigError
	if !errors.As(err, &ce) || len(ce.Errs) != 4 {
		t.Fatalf("want 4 problems (server, credentials, fingerprint, pin), got %v", err)
	}
	for _, e := range ce.Errs {
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("problem %q is not a *FieldError", e)
		}
		checkConfigField(t, reflect.TypeFor[ClientConfig](), fe.Field)
	}
}

// TestFingerprints: every ClientHello fingerprint completes a handshake and
// a session, with the gateway's TLS 1.3 and with a TLS 1.2-only server
// hosting the gateway's Handler; a TLS 1.1-only client is refused.
func TestFingerprints(t *testing.T) {
	echo := testenv.EchoServer(t)
	g, addr := startGateway(t, nil)
	// A TLS 1.2-only HTTPS server hosting the gateway (embedding).
	l12, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv12 := newEmbeddedServer(g, &tls.Config{Certificates: []tls.Certificate{*testCert}, MaxVersion: tls.VersionTLS12})
	go func() { _ = srv12.ServeTLS(l12, "", "") }()
	t.Cleanup(func() { _ = srv12.Close() })

	for _, fp := range []string{FingerprintGo, FingerprintChrome, FingerprintFirefox, FingerprintIOS, FingerprintAndroid} {
		for _, tc := range []struct {
			name string
			addr string
			ver  uint16
		}{{"tls13", addr, tls.VersionTLS13}, {"tls12", l12.Addr().String(), tls.VersionTLS12}} {
			t.Run(fp+"/"+tc.name, func(t *testing.T) {
				cl, err := newClient(ClientConfig{Server: tc.addr, Username: "alice", Password: "secret", PinSHA256: testPin(t), Fingerprint: fp})
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				conn, _, err := cl.dialTLS(ctx)
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				want := tc.ver
				if fp == FingerprintAndroid {
					want = tls.VersionTLS12 // OkHttp on Android 11 offers TLS 1.2 only
				}
				if v := negotiatedVersion(conn); v != want {
					t.Errorf("negotiated %x, want %x", v, want)
				}
				conn.Close()
				cl.cancel()
				c := dialClient(t, tc.addr, func(cc *ClientConfig) { cc.Transport = TransportTLS; cc.Fingerprint = fp })
				if err := echoTCP(ctx, c, net.JoinHostPort("198.18.1.1", itoa(echo.Port())), []byte(fp)); err != nil {
					t.Errorf("echo: %v", err)
				}
			})
		}
	}
	c11, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11})
	if err == nil {
		c11.Close()
		t.Error("a TLS 1.1-only client completed a handshake")
	}
}

func dnsproxyUpstream(up string) dnsproxy.Config { return dnsproxy.Config{Upstreams: []string{up}} }

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

func negotiatedVersion(c net.Conn) uint16 {
	switch c := c.(type) {
	case *tls.Conn:
		return c.ConnectionState().Version
	case *utls.UConn:
		return c.ConnectionState().Version
	}
	return 0
}

// newEmbeddedServer hosts g's Handler in an ordinary net/http HTTPS server.
func newEmbeddedServer(g *Gateway, tc *tls.Config) *http.Server {
	tc.DynamicRecordSizingDisabled = true // one CSTP frame per TLS record
	tc.NextProtos = []string{"http/1.1"}  // CONNECT needs HTTP/1.1 hijacking
	return &http.Server{Handler: g.Mount(nil), TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second}
}

// TestUDPIdleTimeout: Config.UDPIdleTimeout reaches the stack's UDP
// forwarder. With 1 s, a flow's mapping is gone within the 10 s wait;
// with the 2-minute default it would still be there.
func TestUDPIdleTimeout(t *testing.T) {
	uecho := udpEcho(t)
	g, addr := startGateway(t, func(c *Config) { c.UDPIdleTimeout = time.Second })
	c := dialClient(t, addr, func(cc *ClientConfig) { cc.Transport = TransportTLS })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	uc, err := c.DialContext(ctx, "udp", net.JoinHostPort("198.18.1.1", itoa(uecho.Port())))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	_ = uc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := uc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := uc.Read(make([]byte, 16)); err != nil {
		t.Fatal(err)
	}
	if n := g.Stats().Stack.UDPActive; n != 1 {
		t.Fatalf("%d UDP flows active after an exchange, want 1", n)
	}
	waitFor(t, func() bool { return g.Stats().Stack.UDPActive == 0 }, "the idle UDP flow to end")
}

// TestBigDatagrams sends UDP datagrams around the 1280-byte CONNECT-IP MTU
// both ways through tunnel.Client over QUIC and over TLS (issue 11: from
// 1253 bytes up none arrived over QUIC). Over QUIC the gateway fragments
// what the corporate side sends to the client's MTU.
func TestBigDatagrams(t *testing.T) {
	echo := udpEcho(t)
	for _, mode := range []TransportMode{TransportQUIC, TransportTLS} {
		t.Run(mode.String(), func(t *testing.T) {
			g, addr := startGateway(t, nil)
			c := dialClient(t, addr, func(cc *ClientConfig) { cc.Transport = mode })
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			uc, err := c.DialContext(ctx, "udp", net.JoinHostPort("198.18.1.1", itoa(echo.Port())))
			if err != nil {
				t.Fatal(err)
			}
			defer uc.Close()
			buf := make([]byte, 1<<16)
			// 1252: the largest UDP payload a 1280-byte packet carries;
			// 32000: 26 fragments over QUIC; 41000: 33, one more than
			// quic-go's HTTP/3 layer queued per stream (quic-go issue
			// 5799) before the gateway and client read datagrams
			// themselves (internal/core/masque); 65507, the IPv4 maximum:
			// 52 fragments in one burst.
			sizes := []int{0, 1252, 1253, 1400, 2000, 8000, 16000, 32000, 41000, 65507}
			for _, size := range sizes {
				msg := make([]byte, size)
				for i := range msg {
					msg[i] = byte(i * 13)
				}
				_ = uc.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := uc.Write(msg); err != nil {
					t.Fatalf("%d bytes: write: %v", size, err)
				}
				n, err := uc.Read(buf)
				if err != nil || !bytes.Equal(buf[:n], msg) {
					t.Fatalf("%d bytes: got %d bytes, %v (gateway %+v)", size, n, err, g.Stats().Stack)
				}
			}
			if f := g.Stats().Stack.Fragmented; (mode == TransportQUIC) != (f > 0) {
				t.Errorf("%s: gateway fragmented %d packets", mode, f)
			}
		})
	}
}

// restartConfig is a gateway's configuration for the restart cases: a
// site key (so a successor derives the same stateless reset key and opens
// the same cookies) and DPD 10 s, so QUIC's idle timeout (25 s) is far
// past any wait of theirs: only a stateless reset ends a connection early.
func restartConfig(t testing.TB) Config {
	sealer, err := auth.NewSealer(nil, make([]byte, auth.SealerKeySize))
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Certificate:   testCert,
		Authenticator: passwords{"alice": "secret"},
		SplitInclude:  []netip.Prefix{netip.MustParsePrefix("198.18.0.0/16")},
		Dialer:        testenv.LoopCorpDialer{},
		Sealer:        sealer,
		DPD:           10 * time.Second,
	}
}

// serveUntilKilled serves cfg's gateway on addr, TCP and UDP on one port,
// and returns the address and a kill that closes both sockets without a
// word (no CONNECTION_CLOSE), as a crashed process's would be. The
// gateway itself is closed at the end of the test.
func serveUntilKilled(t testing.TB, cfg Config, addr string) (bound string, kill func()) {
	t.Helper()
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	go g.ServeQUIC(pc)
	return l.Addr().String(), func() {
		pc.Close()
		l.Close()
	}
}

// TestQUICStatelessResetAfterRestart: a gateway dies without a word (its
// sockets closed, no CONNECTION_CLOSE) and another one sharing the site key
// takes its address; the first packet a QUIC client sends there is
// answered with a stateless reset (RFC 9000 10.3) from the key both derive
// from the site key, so the client learns at once that its connection is
// gone (without the key it waits out the idle timeout), reconnects and
// resumes its session with its address.
func TestQUICStatelessResetAfterRestart(t *testing.T) {
	cfg := restartConfig(t)
	addr, kill := serveUntilKilled(t, cfg, "127.0.0.1:0")
	c := dialClient(t, addr, func(cc *ClientConfig) { cc.Transport = TransportQUIC })
	addr0 := c.Addr()
	c.mu.Lock()
	qt, _ := c.cur.(*quicTransport)
	c.mu.Unlock()
	if qt == nil {
		t.Fatal("not on QUIC")
	}

	// The first gateway dies; the second takes its address.
	kill()
	serveUntilKilled(t, cfg, addr)

	echo := udpEcho(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var reset *quic.StatelessResetError
	waitFor(t, func() bool {
		if uc, err := c.DialContext(ctx, "udp", net.JoinHostPort("198.18.1.1", itoa(echo.Port()))); err == nil {
			uc.Write([]byte("anyone?")) // a packet for the new gateway to answer
			uc.Close()
		}
		return errors.As(context.Cause(qt.qc.Context()), &reset)
	}, "a stateless reset of the old connection")
	// The client reconnects and resumes: same address, traffic flows.
	waitFor(t, func() bool {
		uc, err := c.DialContext(ctx, "udp", net.JoinHostPort("198.18.1.1", itoa(echo.Port())))
		if err != nil {
			return false
		}
		defer uc.Close()
		uc.SetDeadline(time.Now().Add(500 * time.Millisecond))
		uc.Write([]byte("back"))
		n, err := uc.Read(make([]byte, 8))
		return err == nil && n == 4
	}, "traffic after the reconnect")
	if c.Addr() != addr0 {
		t.Errorf("address %v after the reconnect, want %v", c.Addr(), addr0)
	}
}

// TestReconnectResumesTLS: tunnel.Client's reconnect over TLS resumes the
// TLS session instead of a full handshake (issue 14: a reconnect storm
// costs the gateway fewer handshakes).
func TestReconnectResumesTLS(t *testing.T) {
	g, addr := startGateway(t, nil)
	c := dialClient(t, addr, func(cc *ClientConfig) { cc.Transport = TransportTLS })
	for _, l := range g.liveLinks() {
		l.abort()
	}
	waitFor(t, func() bool { return c.Reconnects() == 1 && len(g.liveLinks()) == 1 }, "reconnect")
	c.mu.Lock()
	tt, _ := c.cur.(*tlsTransport)
	c.mu.Unlock()
	if tt == nil {
		t.Fatal("not on TLS after the reconnect")
	}
	tc, ok := tt.conn.(*tls.Conn)
	if !ok {
		t.Fatalf("transport conn %T", tt.conn)
	}
	if !tc.ConnectionState().DidResume {
		t.Error("the reconnect did a full TLS handshake")
	}
}
