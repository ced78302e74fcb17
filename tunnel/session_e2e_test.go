package tunnel_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/udpmux"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// corpEcho serves TCP and UDP echo on the corp host and remembers, per
// TCP connection, when it ended: the corporate server's view of a flow.
type corpEcho struct {
	tcp, udp netip.AddrPort
	mu       sync.Mutex
	ended    map[string]error // client addr:port -> how the connection ended
	udpPeers map[string]int   // source addr:port the UDP echo saw -> datagrams
}

func startCorpEcho(t testing.TB, corp *testenv.Netns, port int) *corpEcho {
	t.Helper()
	e := &corpEcho{ended: map[string]error{}, udpPeers: map[string]int{}}
	addr := netip.AddrPortFrom(testenv.CorpAddr, uint16(port))
	l, err := corp.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	pc, err := corp.ListenPacket("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	e.tcp, e.udp = addr, addr
	testenv.ServeListener(t, l, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(2 * time.Minute)) // the longest scenario, with room
		_, err := io.Copy(c, c)
		if err == nil {
			err = io.EOF
		}
		e.mu.Lock()
		e.ended[c.RemoteAddr().String()] = err
		e.mu.Unlock()
	})
	var wg sync.WaitGroup
	t.Cleanup(func() { pc.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			e.mu.Lock()
			e.udpPeers[from.String()]++
			e.mu.Unlock()
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	return e
}

func (e *corpEcho) endedCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.ended)
}

func (e *corpEcho) udpSources() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for k := range e.udpPeers {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// flows is one TCP stream and one UDP socket from the client namespace to
// the corp echo through the tunnel, checked byte for byte.
type flows struct {
	tcp  net.Conn
	udp  net.PacketConn
	dst  net.Addr
	seq  int
	echo *corpEcho
}

func openFlows(t *testing.T, ctx context.Context, tp *testenv.Topo, e *corpEcho) *flows {
	t.Helper()
	c, err := tp.Client.Dial(ctx, "tcp", e.tcp.String())
	if err != nil {
		t.Fatalf("TCP through the tunnel: %v", err)
	}
	pc, err := tp.Client.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); pc.Close() })
	return &flows{tcp: c, udp: pc, dst: net.UDPAddrFromAddrPort(e.udp), echo: e}
}

// exchange sends a distinct chunk on both flows and checks the echoes.
// The UDP exchange retries (a datagram may be lost while the tunnel
// moves); TCP must deliver every byte in order on the same connection.
func (f *flows) exchange(t *testing.T, within time.Duration) {
	t.Helper()
	f.seq++
	msg := bytes.Repeat([]byte(fmt.Sprintf("chunk %03d|", f.seq)), 300) // 3000 bytes: several segments
	_ = f.tcp.SetDeadline(time.Now().Add(within))
	if _, err := f.tcp.Write(msg); err != nil {
		t.Fatalf("TCP write %d: %v", f.seq, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(f.tcp, got); err != nil {
		t.Fatalf("TCP read %d: %v", f.seq, err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("TCP echo %d differs", f.seq)
	}
	deadline := time.Now().Add(within)
	dgram := []byte(fmt.Sprintf("datagram %d", f.seq))
	buf := make([]byte, 256)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("no UDP echo for datagram %d within %v", f.seq, within)
		}
		if _, err := f.udp.WriteTo(dgram, f.dst); err != nil {
			t.Fatalf("UDP write: %v", err)
		}
		_ = f.udp.SetReadDeadline(time.Now().Add(time.Second))
		n, _, err := f.udp.ReadFrom(buf)
		if err == nil && bytes.Equal(buf[:n], dgram) {
			return
		}
	}
}

// sessionGateway serves a gateway on GWAddr:port in the gw namespace.
func sessionGateway(t testing.TB, tp *testenv.Topo, cert *testenv.Cert, port int, logs io.Writer, mod func(*tunnel.Config)) (*tunnel.Gateway, string) {
	t.Helper()
	cfg := tunnel.Config{
		Certificate:   mustLoad(t, cert),
		Authenticator: staticUser{"alice", "secret"},
		SplitInclude:  []netip.Prefix{testenv.CorpNet},
		Dialer:        nsDialer{tp.GW},
		Logger:        slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	gw, err := tunnel.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Close() })
	listen := fmt.Sprintf("%s:%d", testenv.GWAddr, port)
	l, err := tp.GW.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	go gw.Serve(l)
	return gw, listen
}

// staticUser signs in one user with a password.
type staticUser struct{ user, password string }

func (s staticUser) Authenticate(_ context.Context, c auth.Credentials) (*auth.Identity, error) {
	if c.Username == s.user && c.Password == s.password {
		return &auth.Identity{User: s.user, Method: "password"}, nil
	}
	return nil, auth.ErrInvalidCredentials
}

// TestSessionContinuity drives the stock openconnect (kernel tun) through
// the ways a phone loses its connection and checks that open TCP and UDP
// flows carry on byte for byte (R-P6): a client-side reconnect (SIGUSR2),
// a 10 s blackout of the client link (DPD declares the peer dead on both
// sides, openconnect reconnects), then the end of the reconnect grace
// resets them. A second client with the same cookie takes the session over
// and the first one exits, without a reconnect storm.
func TestSessionContinuity(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "openconnect", "ocproxy", "iptables")
	tp := testenv.Topology(t)
	cert := testenv.NewCert(t, testenv.GWAddr.String())
	echo := startCorpEcho(t, tp.Corp, 7)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute) // the whole scenario, generously
	defer cancel()

	var logs testenv.LogBuffer
	// DPD 2 s: openconnect declares the gateway dead after 2 DPD (4 s),
	// the gateway the client after 2.5 DPD (5 s); a 10 s blackout trips
	// both. Grace 60 s keeps the session through it.
	gw, listen := udpGateway(t, tp, cert, 443, &logs, func(c *tunnel.Config) {
		c.DPD = 2 * time.Second
		c.ReconnectGrace = time.Minute
	})
	opts := testenv.OCOptions{Server: listen, ServerCertPin: cert.Pin, User: "alice", Password: "secret", Mode: testenv.ModeTun}

	for _, dtls := range []bool{false, true} {
		t.Run(fmt.Sprintf("flows survive reconnects (DTLS %v)", dtls), func(t *testing.T) {
			o := opts
			o.DTLS = dtls
			flowsSurviveReconnects(t, ctx, tp, gw, echo, &logs, o)
		})
	}

	t.Run("flows reset when the grace ends", func(t *testing.T) {
		var glogs testenv.LogBuffer
		g2, listen2 := sessionGateway(t, tp, cert, 444, &glogs, func(c *tunnel.Config) {
			c.ReconnectGrace = 3 * time.Second
		})
		o := opts
		o.Server = listen2
		s := testenv.Openconnect(t, tp.Client, o)
		f := openFlows(t, ctx, tp, echo)
		f.exchange(t, 10*time.Second)
		before := echo.endedCount()
		// Leave without logging off: the session waits for a reconnect.
		if err := s.CloseKeepSession(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the connection to end", func() bool {
			ss := g2.Sessions()
			return len(ss) == 1 && !ss[0].Connected
		})
		if n := echo.endedCount(); n != before {
			t.Fatalf("the flow ended with the connection, before the grace")
		}
		waitFor(t, 15*time.Second, "the flow to be reset after the grace", func() bool { return echo.endedCount() > before })
		if len(g2.Sessions()) != 0 {
			t.Errorf("session outlived its grace: %+v", g2.Sessions())
		}
	})

	t.Run("takeover: the newer client wins, the older exits", func(t *testing.T) {
		o := opts
		o.Mode = testenv.ModeOcproxy
		cookie, err := testenv.Authenticate(t, tp.Client, o)
		if err != nil {
			t.Fatal(err)
		}
		o.Cookie = cookie
		before := strings.Count(logs.String(), "op=connect")
		start := time.Now()
		first := testenv.Openconnect(t, tp.Client, o)
		second := testenv.Openconnect(t, tp.Client, o)
		select {
		case <-first.Done():
		case <-time.After(20 * time.Second):
			t.Fatalf("the older client did not exit; log:\n%s", first.Proc.Tail(20))
		}
		if !strings.Contains(first.Log(), "taken over by another connection") {
			t.Errorf("the older client was not told why:\n%s", first.Proc.Tail(20))
		}
		time.Sleep(time.Until(start.Add(30 * time.Second))) // the window: a storm made 1,732 connections in it
		select {
		case <-second.Done():
			t.Fatalf("the newer client exited:\n%s", second.Proc.Tail(20))
		default:
		}
		if n := strings.Count(logs.String(), "op=connect") - before; n >= 5 {
			t.Errorf("%d connections for one cookie in 30 s, want fewer than 5", n)
		}
		_ = second.Close()
	})
}

func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// udpGateway serves a gateway in the gw namespace on GWAddr:port: TLS on
// TCP, and QUIC and DTLS together on the same UDP port (the sockets are
// made inside the namespace, so the library's ServeTCPAndUDP, which binds
// in the calling process's namespace, is not used here).
func udpGateway(t testing.TB, tp *testenv.Topo, cert *testenv.Cert, port int, logs io.Writer, mod func(*tunnel.Config)) (*tunnel.Gateway, string) {
	t.Helper()
	gw, listen := sessionGateway(t, tp, cert, port, logs, mod)
	var m *udpmux.Mux
	if err := tp.GW.Do(func() (err error) { m, err = udpmux.Listen(context.Background(), "udp", listen); return err }); err != nil {
		t.Fatal(err)
	}
	if !m.Kernel() {
		t.Errorf("udpmux fell back to userspace demultiplexing on Linux")
	}
	t.Cleanup(func() { m.Close() })
	go gw.ServeQUIC(m.QUIC())
	go gw.ServeDTLS(m.DTLS())
	waitFor(t, 5*time.Second, "the DTLS server", func() bool { return dtlsServed(gw) })
	return gw, listen
}

// dtlsServed reports whether gw has a DTLS socket (ServeDTLS started).
func dtlsServed(gw *tunnel.Gateway) bool { return tunnel.DTLSPortForTest(gw) != 0 }

// TestOpenconnectDTLS: the stock openconnect uses UDP against the gateway
// by default, in PSK-NEGOTIATE mode on TLS 1.3 and in legacy resumption
// when forced or on TLS 1.2; its MTU probe is answered; data moves over
// DTLS (the gateway's DTLS counters); with UDP blocked it stays on CSTP
// and works.
func TestOpenconnectDTLS(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "openconnect", "iptables")
	tp := testenv.Topology(t)
	cert := testenv.NewCert(t, testenv.GWAddr.String())
	echo := startCorpEcho(t, tp.Corp, 7)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var logs testenv.LogBuffer
	gw, listen := udpGateway(t, tp, cert, 443, &logs, nil)
	opts := testenv.OCOptions{Server: listen, ServerCertPin: cert.Pin, User: "alice", Password: "secret", Mode: testenv.ModeTun, DTLS: true}

	for _, tc := range []struct {
		name  string
		extra []string
		want  []string // in openconnect's log
	}{
		{"PSK-NEGOTIATE", nil, []string{"Established DTLS connection", "PSK"}},
		{"legacy resumption", []string{"--dtls-ciphers", "OC-DTLS1_2-AES128-GCM"}, []string{"Established DTLS connection", "AES-128-GCM"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := opts
			o.ExtraArgs = tc.extra
			before := gw.Stats()
			s := testenv.Openconnect(t, tp.Client, o)
			defer s.Close()
			waitFor(t, 15*time.Second, "DTLS to come up", func() bool { return gw.Stats().DTLSUp > before.DTLSUp })
			f := openFlows(t, ctx, tp, echo)
			for range 3 {
				f.exchange(t, 10*time.Second)
			}
			after := gw.Stats()
			if after.DTLSPacketsIn == before.DTLSPacketsIn || after.DTLSPacketsOut == before.DTLSPacketsOut {
				t.Errorf("no data over DTLS: in %d->%d, out %d->%d", before.DTLSPacketsIn, after.DTLSPacketsIn, before.DTLSPacketsOut, after.DTLSPacketsOut)
			}
			waitFor(t, 10*time.Second, "openconnect's MTU detection", func() bool { return strings.Contains(s.Log(), "MTU") })
			for _, w := range append(tc.want, "No change in MTU after detection") {
				if !strings.Contains(s.Log(), w) {
					t.Errorf("openconnect's log lacks %q:\n%s", w, s.Proc.Tail(40))
				}
			}
		})
	}

	t.Run("QUIC on the same port while DTLS moves data", func(t *testing.T) {
		s := testenv.Openconnect(t, tp.Client, opts)
		defer s.Close()
		f := openFlows(t, ctx, tp, echo)
		stop := make(chan struct{})
		errc := make(chan error, 1)
		go func() { // keep the DTLS session busy meanwhile
			defer close(errc)
			msg := bytes.Repeat([]byte("x"), 1200)
			buf := make([]byte, len(msg))
			for {
				select {
				case <-stop:
					return
				default:
				}
				_ = f.tcp.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := f.tcp.Write(msg); err != nil {
					errc <- err
					return
				}
				if _, err := io.ReadFull(f.tcp, buf); err != nil {
					errc <- err
					return
				}
			}
		}()
		before := gw.Stats().DTLSPacketsIn
		// The Go client over QUIC, from the client namespace, to the same
		// port: a session of its own, a TCP echo through it.
		var c *tunnel.Client
		err := tp.Client.Do(func() (err error) {
			c, err = tunnel.Dial(ctx, tunnel.ClientConfig{Server: listen, Username: "alice", Password: "secret",
				PinSHA256: cert.Pin, Transport: tunnel.TransportQUIC})
			return err
		})
		if err != nil {
			t.Fatalf("tunnel.Client over QUIC: %v", err)
		}
		defer c.Close()
		conn, err := c.DialContext(ctx, "tcp", echo.tcp.String())
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write([]byte("over quic")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 9)
		if _, err := io.ReadFull(conn, got); err != nil || string(got) != "over quic" {
			t.Fatalf("echo over QUIC: %q %v", got, err)
		}
		conn.Close()
		// connect-ip-go's own client on the same port.
		if err := tp.Client.Do(func() error { return connectIPGoClient(ctx, listen, "alice", "secret") }); err != nil {
			t.Fatalf("connect-ip-go client: %v", err)
		}
		close(stop)
		if err := <-errc; err != nil {
			t.Fatalf("the DTLS session's flow broke meanwhile: %v", err)
		}
		if gw.Stats().DTLSPacketsIn == before {
			t.Errorf("the openconnect session moved no data over DTLS meanwhile")
		}
	})

	t.Run("UDP blocked: CSTP only", func(t *testing.T) {
		block := []string{"-w", "-I", "OUTPUT", "-p", "udp", "-d", testenv.GWAddr.String(), "-j", "DROP"}
		tp.Client.Run(t, "iptables", block...)
		defer func() { block[1] = "-D"; tp.Client.Run(t, "iptables", block...) }()
		before := gw.Stats()
		s := testenv.Openconnect(t, tp.Client, opts)
		defer s.Close()
		f := openFlows(t, ctx, tp, echo)
		f.exchange(t, 10*time.Second)
		if after := gw.Stats(); after.DTLSUp != before.DTLSUp || after.DTLSPacketsIn != before.DTLSPacketsIn {
			t.Errorf("DTLS came up through a blocked UDP path: %+v", after)
		}
	})

	t.Run("TLS 1.2 gateway: legacy resumption", func(t *testing.T) {
		// The gateway hosted by an HTTPS server that stops at TLS 1.2:
		// no exporter for PSK-NEGOTIATE, so openconnect's X-DTLS12 offer
		// gets legacy resumption.
		var glogs testenv.LogBuffer
		g12, err := tunnel.New(tunnel.Config{
			Certificate: mustLoad(t, cert), Authenticator: staticUser{"alice", "secret"},
			SplitInclude: []netip.Prefix{testenv.CorpNet}, Dialer: nsDialer{tp.GW},
			Logger: slog.New(slog.NewTextHandler(&glogs, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer g12.Close()
		addr := testenv.GWAddr.String() + ":8443"
		l, err := tp.GW.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: g12.Mount(nil), TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{*mustLoad(t, cert)}, MaxVersion: tls.VersionTLS12,
			DynamicRecordSizingDisabled: true, NextProtos: []string{"http/1.1"},
		}}
		go srv.ServeTLS(l, "", "")
		defer srv.Close()
		pc, err := tp.GW.ListenPacket("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		go g12.ServeDTLS(pc)
		waitFor(t, 5*time.Second, "the DTLS server", func() bool { return dtlsServed(g12) })
		o := opts
		o.Server = addr
		s := testenv.Openconnect(t, tp.Client, o)
		defer s.Close()
		waitFor(t, 15*time.Second, "DTLS to come up", func() bool { return g12.Stats().DTLSUp > 0 })
		f := openFlows(t, ctx, tp, echo)
		f.exchange(t, 10*time.Second)
		if st := g12.Stats(); st.DTLSPacketsIn == 0 || st.DTLSPacketsOut == 0 {
			t.Errorf("no data over DTLS: %+v", st)
		}
		for _, w := range []string{"(TLS1.2)", "X-DTLS-Session-ID", "X-DTLS12-CipherSuite", "Established DTLS connection"} {
			if !strings.Contains(s.Log(), w) {
				t.Errorf("openconnect's log lacks %q:\n%s", w, s.Proc.Tail(40))
			}
		}
	})
}

// connectIPGoClient signs in with connect-ip-go's own client (Basic
// credentials) and waits for its address assignment.
func connectIPGoClient(ctx context.Context, addr, user, password string) error {
	req, err := connectip.NewRequest(ctx, uritemplate.MustNew("https://"+addr+tunnel.ConnectIPPath))
	if err != nil {
		return err
	}
	req.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+password)))
	tr := &connectip.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{http3.NextProtoH3}},
		QUICConfig:      &quic.Config{EnableDatagrams: true, InitialPacketSize: 1350},
	}
	conn, rsp, err := tr.Dial(req)
	if err != nil {
		return fmt.Errorf("dial: %w (response %v)", err, rsp)
	}
	defer conn.Close()
	as, err := conn.ReceiveAddressAssignment(ctx)
	if err != nil || len(as) != 1 {
		return fmt.Errorf("address assignment %v: %v", as, err)
	}
	return nil
}

// flowsSurviveReconnects: a TCP stream and a UDP exchange through the
// tunnel carry on byte for byte across openconnect's SIGUSR2 reconnect and
// a 10 s blackout of the client's link.
func flowsSurviveReconnects(t *testing.T, ctx context.Context, tp *testenv.Topo, gw *tunnel.Gateway, echo *corpEcho, logs *testenv.LogBuffer, opts testenv.OCOptions) {
	st0 := gw.Stats()
	s := testenv.Openconnect(t, tp.Client, opts)
	defer s.Close()

	f := openFlows(t, ctx, tp, echo)
	f.exchange(t, 10*time.Second)
	udpBefore := echo.udpSources()
	endedBefore := echo.endedCount()

	// openconnect's own reconnect: a new TLS connection, same cookie.
	if err := s.Reconnect(); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitScriptReason("reconnect", 1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	f.exchange(t, 20*time.Second)
	t.Logf("script runs after SIGUSR2: %v", s.ScriptReasons())

	// A 10 s blackout of the client's link: both sides declare the
	// other dead, and openconnect reconnects once the link is back.
	drop := []string{"-w", "-I", "OUTPUT", "-o", tp.ClientIf, "-j", "DROP"}
	tp.Client.Run(t, "iptables", drop...)
	time.Sleep(10 * time.Second)
	drop[1] = "-D"
	tp.Client.Run(t, "iptables", drop...)
	if err := s.WaitScriptReason("reconnect", 2, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("script runs: %v", s.ScriptReasons())
	f.exchange(t, 30*time.Second)

	if got := echo.udpSources(); !slices.Equal(got, udpBefore) {
		t.Errorf("the UDP flow was re-created: corp saw sources %v, before %v", got, udpBefore)
	}
	if n := echo.endedCount() - endedBefore; n != 0 {
		t.Errorf("%d TCP flows ended at the corp server, want 0", n)
	}
	// DTLS comes back with the SIGUSR2 reconnect. After the blackout
	// openconnect waits its DTLS attempt period (60 s) before trying
	// again, so the flows carry on over CSTP meanwhile.
	if st := gw.Stats(); opts.DTLS && (st.DTLSUp-st0.DTLSUp < 2 || st.DTLSPacketsIn == st0.DTLSPacketsIn) {
		t.Errorf("DTLS did not come back after the reconnect: %d handshakes, %d packets in; openconnect:\n%s", st.DTLSUp-st0.DTLSUp, st.DTLSPacketsIn-st0.DTLSPacketsIn, s.Log())
	}
	if out := logs.String(); !strings.Contains(out, "reason=\"dead peer\"") {
		t.Errorf("the gateway never declared the blacked-out client dead")
	}
	if len(gw.Sessions()) != 1 {
		t.Errorf("sessions: %+v", gw.Sessions())
	}
}
