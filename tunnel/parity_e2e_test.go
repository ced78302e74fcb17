package tunnel_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/netstack"
	"github.com/underpass/underpass/tunnel"
	"golang.org/x/sys/unix"
)

// The router parity suite (issue 11): the same probes run from two client
// namespaces, one behind a plain Linux router (gw with ip_forward and
// MASQUERADE) and one behind Underpass (the stock openconnect, kernel tun,
// to a gateway in the same gw namespace, first over TLS only, then with its
// DTLS channel), against the same corporate servers, and through
// tunnel.Client over TLS and over QUIC for the probes a Go program can make;
// each probe's observation must be the same on every path. A probe that
// cannot run on a path (or not yet) says why in the test log.
//
// The probes and paths are shared with TestRouterParityIPv6
// (transportProbes, pingProbes, dialProbes, goClientPaths, udpSilences,
// compared by compareProbes, the kernel's results fixed by expectKernel).
// Every deliberate difference is listed in the netstack package doc.
//
// Deliberate differences, not compared: the source address of ICMP errors
// and of traceroute's first hop (the router's interface address vs the
// gateway's tunnel address); hops beyond the first (Underpass re-originates
// each flow from the gateway host, so the corporate side's routers never
// see the client's TTL); and a UDP mapping that saw one exchange only, which
// Linux conntrack drops after 30 s and Underpass keeps for its idle timeout
// (2 min, RFC 4787 REQ-5).

var (
	kClientAddr = netip.MustParseAddr("198.18.0.5") // the kernel-routed client
	kRouterAddr = netip.MustParseAddr("198.18.0.6") // gw's address towards it
)

// Corporate test servers (ports on testenv.CorpAddr).
const (
	portResetObserver = 7001 // reports how the client's close arrived (EOF or reset)
	portResetter      = 7002 // resets after one byte
	portHalfClient    = 7003 // reads to EOF, answers "got N", closes
	portHalfServer    = 7004 // sends "hi" and FIN first, then counts what follows
	portBulk          = 7005 // sends bulkSize bytes of testenv.Pattern
	portUDPEcho       = 7006 // echoes any datagram
	portUDPPush       = 7007 // "wait N": acks, then pushes "push" after N seconds
	portWhoami        = 7008 // writes the client address it sees, closes
	portTOSUDP        = 7009 // IPv4: answers "saw T" (the datagram's TOS), marked tosMark
	portTOSTCP        = 7010 // IPv4: answers "saw T" (the TOS of the connection's SYN)
)

// tosMark is DSCP EF (46, RFC 3246) with ECT(0) (RFC 3168), as a voice
// application marks its packets. A TCP socket sends only the DSCP part
// (0xb8): the kernel owns TCP's ECN bits.
const tosMark = 0xba

const bulkSize = 100 << 20 // the 100 MB byte-exact transfer

// parityTimeout bounds a parity suite's probes: four paths and the DTLS
// pass, next to 150 s of UDP silence, on a loaded CI machine.
const parityTimeout = 10 * time.Minute

func TestRouterParity(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "openconnect", "iptables", "ping")
	tp := testenv.Topology(t)
	kc := kernelRoutedClient(t, tp)
	srv := startParityServers(t, tp.Corp, testenv.CorpAddr)

	cert := testenv.NewCert(t, testenv.GWAddr.String())
	var logs testenv.LogBuffer
	gw, listen := udpGateway(t, tp, cert, 443, &logs, func(c *tunnel.Config) {
		c.Pinger = nsPinger{tp.GW}
		// corp is also the pushed DNS server, so the DNS proxy listens on
		// its address inside the stack and the ping probes below are the
		// issue's "echo to the DNS address": only port 53 is the proxy's,
		// and an echo must reach the real host as through a router.
		c.DNS = []netip.Addr{testenv.CorpAddr}
	})
	ocOpts := testenv.OCOptions{Server: listen, ServerCertPin: cert.Pin, User: "alice", Password: "secret", Mode: testenv.ModeTun}
	oc := testenv.Openconnect(t, tp.Client, ocOpts) // TLS (CSTP) only first

	paths := append([]*parityPath{
		{name: "kernel router", ns: kc, dial: kc.Dial},
		{name: "underpass", ns: tp.Client, dial: tp.Client.Dial},
	}, goClientPaths(t, tp, listen, cert.Pin)...)
	corp := func(port int) string { return net.JoinHostPort(testenv.CorpAddr.String(), strconv.Itoa(port)) }
	// 1252/1253: the CONNECT-IP MTU's edge; 1472/1473: a 1500 MTU's; 8000
	// and 32000 fragment on every path; 65507: the IPv4 maximum.
	probes := transportProbes(srv, corp, []int{1, 1252, 1253, 1472, 1473, 8000, 32000}, 65507)
	probes = append(probes, pingProbes(testenv.CorpAddr.String(), []string{"56", "1472", "8000", "65000"})...)
	probes = append(probes, dialProbes("198.19.0.77:80", corp(9))...) // corp's subnet, no such host: ARP fails
	probes = append(probes, probe{name: "DSCP and ECN", run: func(ctx context.Context, p *parityPath) string {
		return tosProbe(ctx, p.ns, corp(portTOSUDP), corp(portTOSTCP))
	},
		// A router keeps the marks; Underpass re-originates every flow
		// and clears them both ways (TOS 0 on both legs).
		kernel:     "UDP: server saw 0xba, client saw 0xba; TCP: server saw 0xb8",
		underpass:  "UDP: server saw 0x00, client saw 0x00; TCP: server saw 0x00",
		kernelOnly: "IP_TOS: gonet sockets have no TOS option"})
	// What the kernel router's path shows, so that a broken probe or test
	// server cannot pass on every path alike (the probes the same for
	// both families carry their own).
	expectKernel(t, probes, map[string]string{
		"UDP sizes both ways":              "1: true 1252: true 1253: true 1472: true 1473: true 8000: true 32000: true",
		"UDP's largest datagram both ways": "65507: true",
		"ping sizes":                       "56: reply of 64 bytes 1472: reply of 1480 bytes 8000: reply of 8008 bytes 65000: reply of 65008 bytes",
	})
	ctx, cancel := context.WithTimeout(context.Background(), parityTimeout)
	defer cancel()
	oc = runParity(t, ctx, gw, oc, ocOpts, paths, probes, corp(portUDPPush))
	if t.Failed() {
		t.Logf("gateway log (tail):\n%s", tailLines(logs.String(), 60))
		t.Logf("openconnect log (tail):\n%s", tailLines(oc.Log(), 40))
	}
}

// kernelRoutedClient adds a client namespace linked to gw, which routes it
// to corp as a plain Linux router: ip_forward and MASQUERADE out of the
// corp-side interface (as ocserv's host does for its clients).
func kernelRoutedClient(t *testing.T, tp *testenv.Topo) *testenv.Netns {
	kc := testenv.NewNetns(t, "kclient")
	testenv.Link(t, kc, tp.GW, netip.PrefixFrom(kClientAddr, 30), netip.PrefixFrom(kRouterAddr, 30))
	kc.Run(t, "ip", "route", "add", testenv.CorpNet.String(), "via", kRouterAddr.String())
	tp.GW.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	tp.GW.Run(t, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", netip.PrefixFrom(kClientAddr, 30).Masked().String(), "-o", tp.GWCorpIf, "-j", "MASQUERADE")
	return kc
}

// runParity runs the probes on every path and compares them: the kernel
// router's (paths[0]) and openconnect's (paths[1]) over TLS, then the Go
// clients' (paths[2:]), with the UDP silences (udpSilences, the server's
// push at pushAddr) on every path alongside; then openconnect again with
// its default UDP channel (DTLS: the packets that fit the DTLS MTU go
// over UDP, the rest over CSTP). It returns openconnect's new session.
func runParity(t *testing.T, ctx context.Context, gw *tunnel.Gateway, oc *testenv.OCSession, ocOpts testenv.OCOptions,
	paths []*parityPath, probes []probe, pushAddr string) *testenv.OCSession {
	t.Helper()
	silences := udpSilences(ctx, paths, pushAddr)
	kernel := compareProbes(t, ctx, probes, nil, paths[0], paths[1], "TLS")
	for _, p := range paths[2:] { // the Go client, both transports, while the silences run
		compareProbes(t, ctx, probes, kernel, nil, p, "")
	}
	silences(t) // before openconnect restarts for DTLS, which ends the underpass path's mapping
	return redialDTLS(t, gw, oc, ocOpts, func() { compareProbes(t, ctx, probes, kernel, nil, paths[1], "DTLS") })
}

// goClientPaths are tunnel.Client over TLS and over QUIC, signed in from
// tp's client namespace: their connections are their own stacks', so only
// the probes a Go program can make (dial, read, write, half-close) run
// through them.
func goClientPaths(t *testing.T, tp *testenv.Topo, listen, pin string) []*parityPath {
	t.Helper()
	goClient := func(tr tunnel.TransportMode) *tunnel.Client {
		var c *tunnel.Client
		err := tp.Client.Do(func() (err error) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err = tunnel.Dial(ctx, tunnel.ClientConfig{Server: listen, Username: "alice", Password: "secret",
				PinSHA256: pin, Transport: tr})
			return err
		})
		if err != nil {
			t.Fatalf("tunnel.Client over %v: %v", tr, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	overTLS, overQUIC := goClient(tunnel.TransportTLS), goClient(tunnel.TransportQUIC)
	return []*parityPath{
		{name: "tunnel.Client over TLS", dial: overTLS.DialContext},
		{name: "tunnel.Client over QUIC", dial: overQUIC.DialContext},
	}
}

// udpSilences starts UDP mappings across silences on every path at once,
// so that they run alongside the other probes: a server push 90 s after
// the last exchange must arrive and one after 150 s must be lost, as on
// the kernel router's path, paths[0] (RFC 4787 REQ-5 asks for at least
// 2 minutes; Linux conntrack's stream timeout is 120 s). addr is the
// server at portUDPPush. The returned check waits for them and fails t
// where a path differs from the kernel router's or the kernel router's
// from the expected result.
func udpSilences(ctx context.Context, paths []*parityPath, addr string) (check func(t *testing.T)) {
	type silence struct {
		secs int
		want string   // what the kernel router's path sees
		got  []string // per path
	}
	silences := []*silence{{secs: 90, want: "push arrived"}, {secs: 150, want: "push lost"}}
	var wg sync.WaitGroup
	for _, s := range silences {
		s.got = make([]string, len(paths))
		for i, p := range paths {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.got[i] = udpPushAfter(ctx, p, addr, s.secs)
			}()
		}
	}
	return func(t *testing.T) {
		t.Helper()
		wg.Wait()
		for _, s := range silences {
			if s.got[0] != s.want {
				t.Errorf("UDP push after %d s of silence: the kernel router's path saw %q, want %q", s.secs, s.got[0], s.want)
			}
			for i, p := range paths[1:] {
				if got := s.got[i+1]; got != s.got[0] {
					t.Errorf("UDP push after %d s of silence: kernel router %q, %s %q", s.secs, s.got[0], p.name, got)
				} else {
					t.Logf("UDP push after %d s of silence: %s as the kernel router, %q", s.secs, p.name, got)
				}
			}
		}
	}
}

// probe is one observation, made the same way on every path.
type probe struct {
	name string
	run  func(ctx context.Context, p *parityPath) string
	// kernel is what the kernel router's path must show (set by the
	// probe when the same for both families, else by expectKernel), so
	// that a broken probe or test server cannot pass on every path
	// alike; underpass, if set, is a deliberate difference (netstack's
	// package doc): what Underpass's paths show instead.
	kernel, underpass string
	// kernelOnly says why the probe needs the client's kernel (its socket
	// options or tools) and skips tunnel.Client.
	kernelOnly string
}

// expectKernel sets each named probe's kernel result; every probe must be
// named (or have its own).
func expectKernel(t *testing.T, probes []probe, want map[string]string) {
	t.Helper()
	for i := range probes {
		if w, ok := want[probes[i].name]; ok {
			probes[i].kernel = w
		}
		if probes[i].kernel == "" {
			t.Fatalf("probe %q has no expected kernel result", probes[i].name)
		}
	}
}

// compareProbes runs each probe on the kernel path (unless the kernel's
// results are given, from an earlier pass; then kernelPath is nil) and on
// p, and fails t where p differs: from the kernel's result, or from the
// probe's deliberate difference. Probes p cannot make are skipped and
// logged. over names p's transport in messages ("" for p's own name). It
// returns the kernel's results.
func compareProbes(t *testing.T, ctx context.Context, probes []probe, kernel []string, kernelPath, p *parityPath, over string) []string {
	t.Helper()
	run := func(pr probe, p *parityPath) string {
		pctx, pcancel := context.WithTimeout(ctx, 90*time.Second)
		defer pcancel()
		return pr.run(pctx, p)
	}
	if kernel == nil {
		kernel = make([]string, len(probes))
		for i, pr := range probes {
			kernel[i] = run(pr, kernelPath)
			if pr.kernel != "" && kernel[i] != pr.kernel {
				t.Errorf("%s: the kernel router's path saw %q, want %q: the probe or its server is broken", pr.name, kernel[i], pr.kernel)
			}
		}
	}
	name := p.name
	if over != "" {
		name += " over " + over
	}
	for i, pr := range probes {
		switch {
		case p.ns == nil && pr.kernelOnly != "":
			t.Logf("%s: not probed over %s (%s)", pr.name, name, pr.kernelOnly)
			continue
		}
		want, what := kernel[i], "the kernel router's"
		if pr.underpass != "" {
			want, what = pr.underpass, "a deliberate difference"
		}
		if got := run(pr, p); got != want {
			t.Errorf("%s: %s %q, want %q (%s)", pr.name, name, got, want, what)
		} else {
			t.Logf("%s (%s): %q", pr.name, name, got)
		}
	}
	return kernel
}

// redialDTLS restarts openconnect with its DTLS channel, waits for it,
// runs pass and checks that DTLS carried the traffic; it returns the new
// session.
func redialDTLS(t *testing.T, gw *tunnel.Gateway, oc *testenv.OCSession, opts testenv.OCOptions, pass func()) *testenv.OCSession {
	t.Helper()
	if err := oc.Close(); err != nil {
		t.Fatal(err)
	}
	opts.DTLS = true
	oc = testenv.Openconnect(t, oc.NS, opts)
	waitFor(t, 15*time.Second, "openconnect's DTLS channel", func() bool { return strings.Contains(oc.Log(), "Established DTLS") })
	before := gw.Stats().DTLSPacketsIn
	pass()
	if n := gw.Stats().DTLSPacketsIn - before; n < 1000 {
		t.Errorf("only %d packets came over DTLS during the DTLS pass", n)
	}
	return oc
}

// transportProbes are the TCP and UDP probes against srv, whose ports
// corp names: resets and half-closes both ways, a byte-exact download,
// UDP datagrams of the given sizes both ways, and the family's largest.
func transportProbes(srv *parityServers, corp func(port int) string, udpSizeList []int, largest int) []probe {
	return []probe{
		{name: "client resets", run: func(ctx context.Context, p *parityPath) string {
			c, err := p.dial(ctx, "tcp", corp(portResetObserver))
			if err != nil {
				return "dial: " + errClass(err)
			}
			c.Write([]byte("x"))
			time.Sleep(50 * time.Millisecond)
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			return "server saw " + srv.next(ctx)
		}, kernel: "server saw connection reset by peer", kernelOnly: "SO_LINGER: a gonet connection cannot be closed with a reset"},
		{name: "server resets", run: func(ctx context.Context, p *parityPath) string {
			c, err := p.dial(ctx, "tcp", corp(portResetter))
			if err != nil {
				return "dial: " + errClass(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("x"))
			_, err = io.ReadAll(c)
			return "client saw " + errClass(err)
		}, kernel: "client saw connection reset by peer"},
		{name: "client half-closes first", run: func(ctx context.Context, p *parityPath) string {
			c, err := p.dial(ctx, "tcp", corp(portHalfClient))
			if err != nil {
				return "dial: " + errClass(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("hello"))
			c.(interface{ CloseWrite() error }).CloseWrite()
			b, err := io.ReadAll(c)
			return fmt.Sprintf("got %q, then %s", b, errClass(err))
		}, kernel: `got "got 5", then ok`},
		{name: "server half-closes first", run: func(ctx context.Context, p *parityPath) string {
			c, err := p.dial(ctx, "tcp", corp(portHalfServer))
			if err != nil {
				return "dial: " + errClass(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			b, err := io.ReadAll(c)
			c.Write([]byte("0123456789"))
			c.(interface{ CloseWrite() error }).CloseWrite()
			return fmt.Sprintf("got %q, %s; server %s", b, errClass(err), srv.next(ctx))
		}, kernel: `got "hi", ok; server read 10 bytes after its FIN, then EOF`},
		{name: "100 MB download", run: func(ctx context.Context, p *parityPath) string {
			c, err := p.dial(ctx, "tcp", corp(portBulk))
			if err != nil {
				return "dial: " + errClass(err)
			}
			defer c.Close()
			return bulkRead(c, testenv.Pattern(bulkSize))
		}, kernel: "104857600 bytes, intact true"},
		{name: "UDP sizes both ways", run: func(ctx context.Context, p *parityPath) string {
			return udpSizes(ctx, p, corp(portUDPEcho), udpSizeList...)
		}},
		{name: "UDP's largest datagram both ways", run: func(ctx context.Context, p *parityPath) string {
			return udpSizes(ctx, p, corp(portUDPEcho), largest) // 45 to 52 fragments
		}},
	}
}

// bulkRead reads c to EOF and reports how many bytes came and whether
// they were want. A read that waits bulkStall for data fails: a stall,
// not a rate (both suites and the Go clients' transports share two cores,
// under -race, with other tests).
func bulkRead(c net.Conn, want []byte) string {
	buf := make([]byte, 256<<10)
	n, intact := 0, true
	for {
		c.SetReadDeadline(time.Now().Add(bulkStall))
		m, err := c.Read(buf)
		intact = intact && n+m <= len(want) && bytes.Equal(buf[:m], want[n:n+m])
		n += m
		switch {
		case err == io.EOF:
			return fmt.Sprintf("%d bytes, intact %v", n, intact && n == len(want))
		case err != nil:
			return fmt.Sprintf("read: %s after %d bytes", errClass(err), n)
		}
	}
}

// bulkStall is how long bulkRead waits for the next bytes.
const bulkStall = 30 * time.Second

// pingProbes ping dst with each size, then with TTL (hop limit) 1 for
// traceroute's first hop; flags go before the other arguments ("-6").
func pingProbes(dst string, sizes []string, flags ...string) []probe {
	return []probe{
		{name: "ping sizes", run: func(ctx context.Context, p *parityPath) string {
			var out []string
			for _, n := range sizes {
				out = append(out, n+": "+pingResult(ctx, p.ns, append(slices.Clone(flags), "-s", n, dst)...))
			}
			return strings.Join(out, " ")
		}, kernelOnly: "ping's sizes: tunnel.Client.Ping sends one fixed size"},
		{name: "traceroute's first hop", run: func(ctx context.Context, p *parityPath) string {
			return pingResult(ctx, p.ns, append(slices.Clone(flags), "-t", "1", dst)...)
		}, kernel: "time to live exceeded", kernelOnly: "a TTL: tunnel.Client.Ping sends the stack's default"},
	}
}

// dialProbes connect to a host that does not answer and to a closed port.
func dialProbes(deadHost, closedPort string) []probe {
	return []probe{
		{name: "host does not answer", run: func(ctx context.Context, p *parityPath) string {
			_, err := p.dial(ctx, "tcp", deadHost)
			return errClass(err)
		}, kernel: "no route to host"},
		{name: "closed port", run: func(ctx context.Context, p *parityPath) string {
			_, err := p.dial(ctx, "tcp", closedPort)
			return errClass(err)
		}, kernel: "connection refused"},
	}
}

// parityPath is one way from a client to the corporate servers.
type parityPath struct {
	name string
	// ns is the client's namespace when the client is a kernel (behind the
	// kernel router, or openconnect's tun): its sockets and tools run
	// there. nil for tunnel.Client, whose connections are its own stack's.
	ns   *testenv.Netns
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// parityServers are the corporate end of the probes. Observations made on
// the server side arrive on obs, in probe order.
type parityServers struct{ obs chan string }

func (s *parityServers) next(ctx context.Context) string {
	select {
	case o := <-s.obs:
		return o
	case <-ctx.Done():
		return "nothing (timeout)"
	}
}

func startParityServers(t *testing.T, corp *testenv.Netns, addr netip.Addr) *parityServers {
	s := &parityServers{obs: make(chan string, 16)}
	tcp := func(port int, handle func(c *net.TCPConn)) {
		l, err := corp.Listen("tcp", net.JoinHostPort(addr.String(), strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		testenv.ServeListener(t, l, func(c net.Conn) {
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			handle(c.(*net.TCPConn))
		})
	}
	tcp(portResetObserver, func(c *net.TCPConn) {
		_, err := io.Copy(io.Discard, c)
		s.obs <- closeKind(err)
	})
	tcp(portResetter, func(c *net.TCPConn) {
		c.Read(make([]byte, 1))
		c.SetLinger(0)
		c.Close()
	})
	tcp(portHalfClient, func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "got %d", n)
		c.Close()
	})
	tcp(portHalfServer, func(c *net.TCPConn) {
		c.Write([]byte("hi"))
		c.CloseWrite()
		n, err := io.Copy(io.Discard, c)
		s.obs <- fmt.Sprintf("read %d bytes after its FIN, then %s", n, closeKind(err))
		c.Close()
	})
	tcp(portWhoami, func(c *net.TCPConn) {
		io.WriteString(c, netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().String())
		c.Close()
	})
	tcp(portBulk, func(c *net.TCPConn) {
		c.Write(testenv.Pattern(bulkSize))
		c.Close()
	})
	udp := func(port int, handle func(pc net.PacketConn, b []byte, from net.Addr)) {
		pc, err := corp.ListenPacket("udp", net.JoinHostPort(addr.String(), strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		testenv.ServePacket(t, pc, func(b []byte, from net.Addr) { handle(pc, b, from) })
	}
	udp(portUDPEcho, func(pc net.PacketConn, b []byte, from net.Addr) { pc.WriteTo(b, from) })
	if addr.Is4() { // the TOS probe's servers read IPv4's TOS
		tcp(portTOSTCP, func(c *net.TCPConn) {
			fmt.Fprintf(c, "saw %s", synTOS(c))
			c.Close()
		})
		serveTOSUDP(t, corp, net.JoinHostPort(addr.String(), strconv.Itoa(portTOSUDP)))
	}
	udp(portUDPPush, func(pc net.PacketConn, b []byte, from net.Addr) {
		if string(b) == "hello" {
			pc.WriteTo([]byte("ack"), from)
			return
		}
		if secs, err := strconv.Atoi(strings.TrimPrefix(string(b), "go ")); err == nil {
			time.AfterFunc(time.Duration(secs)*time.Second, func() { pc.WriteTo([]byte("push"), from) })
		}
	})
	return s
}

// udpSizes sends one datagram of each size to an echo server at addr and
// reports, per size, whether the same bytes came back.
func udpSizes(ctx context.Context, p *parityPath, addr string, sizes ...int) string {
	c, err := p.dial(ctx, "udp", addr)
	if err != nil {
		return "dial: " + errClass(err)
	}
	defer c.Close()
	var out []string
	buf := make([]byte, 1<<16)
	for _, n := range sizes {
		msg := testenv.Pattern(n)
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write(msg); err != nil {
			out = append(out, fmt.Sprintf("%d: write %s", n, errClass(err)))
			continue
		}
		m, err := c.Read(buf)
		out = append(out, fmt.Sprintf("%d: %v", n, err == nil && bytes.Equal(buf[:m], msg)))
	}
	return strings.Join(out, " ")
}

// udpPushAfter opens a UDP mapping that a router treats as a stream
// (traffic both ways, and a packet more than 2 s after the first: Linux
// conntrack then applies its 120 s stream timeout instead of the 30 s for
// a single exchange), stays silent for secs, and reports whether the
// server's push after that reached the client.
func udpPushAfter(ctx context.Context, p *parityPath, addr string, secs int) string {
	c, err := p.dial(ctx, "udp", addr)
	if err != nil {
		return "dial: " + errClass(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("hello"))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ack" {
		return "no ack: " + errClass(err)
	}
	time.Sleep(3 * time.Second)
	c.Write([]byte("go " + strconv.Itoa(secs)))
	c.SetDeadline(time.Now().Add(time.Duration(secs+10) * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "push" {
		return "push lost"
	}
	return "push arrived"
}

// setTOS marks a socket's packets with tos and asks for the TOS of the
// packets it receives (IP_RECVTOS).
func setTOS(rc syscall.RawConn, tos int) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = errors.Join(unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, tos),
			unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVTOS, 1))
	})
	return errors.Join(err, serr)
}

// tosIn is the TOS found in a received packet's control messages.
func tosIn(oob []byte) string {
	msgs, _ := unix.ParseSocketControlMessage(oob)
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TOS && len(m.Data) > 0 {
			return fmt.Sprintf("0x%02x", m.Data[0])
		}
	}
	return "no TOS"
}

// synTOS is the TOS of the SYN that opened an accepted connection: Linux
// keeps it (rcv_tos) and reports it through IP_PKTOPTIONS once IP_RECVTOS
// is set, which Go's syscall packages do not wrap.
func synTOS(c *net.TCPConn) string {
	rc, err := c.SyscallConn()
	if err != nil {
		return errClass(err)
	}
	if err := setTOS(rc, 0); err != nil {
		return errClass(err)
	}
	oob := make([]byte, 64)
	n := uint32(len(oob))
	var errno syscall.Errno
	rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.IPPROTO_IP, unix.IP_PKTOPTIONS,
			uintptr(unsafe.Pointer(&oob[0])), uintptr(unsafe.Pointer(&n)), 0)
	})
	if errno != 0 {
		return errClass(errno)
	}
	return tosIn(oob[:n])
}

// serveTOSUDP answers each datagram with "saw T", T its TOS, in a datagram
// marked tosMark.
func serveTOSUDP(t *testing.T, ns *testenv.Netns, addr string) {
	pc, err := ns.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	uc := pc.(*net.UDPConn)
	rc, err := uc.SyscallConn()
	if err == nil {
		err = setTOS(rc, tosMark)
	}
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { uc.Close(); <-done })
	go func() {
		defer close(done)
		buf, oob := make([]byte, 64), make([]byte, 64)
		for {
			_, oobn, _, from, err := uc.ReadMsgUDP(buf, oob)
			if err != nil {
				return
			}
			uc.WriteToUDP([]byte("saw "+tosIn(oob[:oobn])), from)
		}
	}()
}

// tosProbe sends a datagram and opens a TCP connection, both marked
// tosMark, and reports the TOS each side saw.
func tosProbe(ctx context.Context, ns *testenv.Netns, udpAddr, tcpAddr string) string {
	dial := func(network, addr string) (c net.Conn, err error) {
		err = ns.Do(func() (err error) {
			d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error { return setTOS(rc, tosMark) }}
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	u, err := dial("udp", udpAddr)
	if err != nil {
		return "UDP dial: " + errClass(err)
	}
	defer u.Close()
	u.SetDeadline(time.Now().Add(3 * time.Second))
	u.Write([]byte("tos?"))
	buf, oob := make([]byte, 64), make([]byte, 64)
	n, oobn, _, _, err := u.(*net.UDPConn).ReadMsgUDP(buf, oob)
	if err != nil {
		return "UDP: " + errClass(err)
	}
	res := fmt.Sprintf("UDP: server %s, client saw %s", buf[:n], tosIn(oob[:oobn]))
	c, err := dial("tcp", tcpAddr)
	if err != nil {
		return res + "; TCP dial: " + errClass(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return res + "; TCP: " + errClass(err)
	}
	return res + "; TCP: server " + string(b)
}

// pingResult runs one ping from ns and reduces its output to what both
// paths share: a reply and its size (a reply cut short shows), "time to
// live exceeded" (from whichever router; ping's IPv6 "Time exceeded: Hop
// limit" too), "unreachable", or no answer.
func pingResult(ctx context.Context, ns *testenv.Netns, args ...string) string {
	out, _ := ns.Exec(ctx, "ping", append([]string{"-n", "-c", "1", "-W", "3"}, args...)...).CombinedOutput()
	o := strings.ToLower(string(out))
	switch {
	case strings.Contains(o, "1 received"):
		if m := replySize.FindStringSubmatch(o); m != nil {
			return "reply of " + m[1] + " bytes"
		}
		return "reply"
	case strings.Contains(o, "time to live exceeded"), strings.Contains(o, "time exceeded: hop limit"):
		return "time to live exceeded"
	case strings.Contains(o, "unreachable"):
		return "unreachable"
	}
	return "no answer"
}

var replySize = regexp.MustCompile(`(?m)^(\d+) bytes from`)

// errClass names an error the way an application would branch on it.
func errClass(err error) string {
	var errno syscall.Errno
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.As(err, &errno):
		return errno.Error()
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return "timeout"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "error"
}

// closeKind is how a server's read loop ended: io.Copy returns nil at EOF.
func closeKind(err error) string {
	if err == nil {
		return "EOF"
	}
	return errClass(err)
}

// nsPinger forwards clients' echo requests from the gw namespace, as the
// gateway host's own ping sockets would.
type nsPinger struct{ ns *testenv.Netns }

func (p nsPinger) Ping(ctx context.Context, dst netip.Addr, id, seq uint16, payload []byte) ([]byte, error) {
	var reply []byte
	err := p.ns.Do(func() (err error) {
		reply, err = netstack.HostPinger{}.Ping(ctx, dst, id, seq, payload)
		return err
	})
	return reply, err
}

func tailLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
