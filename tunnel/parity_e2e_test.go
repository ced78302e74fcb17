package tunnel_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/netstack"
	"github.com/underpass/underpass/tunnel"
)

// The router parity suite (issue 11): the same probes run from two client
// namespaces, one behind a plain Linux router (gw with ip_forward and
// MASQUERADE) and one behind Underpass (the stock openconnect, kernel tun,
// to a gateway in the same gw namespace, first over TLS only, then with its
// DTLS channel), against the same corporate servers; each probe's
// observation must be the same on every path.
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
)

const bulkSize = 100 << 20 // the 100 MB byte-exact transfer

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
	})
	ocOpts := testenv.OCOptions{Server: listen, ServerCertPin: cert.Pin, User: "alice", Password: "secret", Mode: testenv.ModeTun}
	oc := testenv.Openconnect(t, tp.Client, ocOpts) // TLS (CSTP) only first

	paths := []struct {
		name string
		ns   *testenv.Netns
	}{{"kernel router", kc}, {"underpass", tp.Client}}
	corp := func(port int) string { return net.JoinHostPort(testenv.CorpAddr.String(), strconv.Itoa(port)) }
	// 1252/1253: the CONNECT-IP MTU's edge; 1472/1473: a 1500 MTU's; 8000
	// fragments on every path; 65507: the IPv4 maximum.
	probes := transportProbes(srv, corp, []int{1, 1252, 1253, 1472, 1473, 8000, 65507})
	probes = append(probes, pingProbes(testenv.CorpAddr.String(), []string{"56", "1472", "8000", "65000"})...)
	probes = append(probes, dialProbes("198.19.0.77:80", corp(9))...) // corp's subnet, no such host: ARP fails
	// UDP mappings across silences (RFC 4787 REQ-5; Linux conntrack's
	// stream timeout is 120 s): run alongside the rest, both paths at once.
	type silence struct {
		secs int
		got  [2]string
	}
	silences := []*silence{{secs: 90}, {secs: 150}}
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, s := range silences {
		for i, p := range paths {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.got[i] = udpPushAfter(ctx, p.ns, corp(portUDPPush), s.secs)
			}()
		}
	}

	kernel := compareProbes(t, ctx, probes, nil, paths[0].ns, paths[1].ns, "TLS")
	wg.Wait()

	// The same probes with openconnect's default UDP channel (DTLS): the
	// packets that fit the DTLS MTU go over UDP, the rest over CSTP.
	oc = redialDTLS(t, gw, oc, ocOpts, func() { compareProbes(t, ctx, probes, kernel, nil, paths[1].ns, "DTLS") })
	for _, s := range silences {
		if s.got[0] != s.got[1] {
			t.Errorf("UDP push after %d s of silence: kernel router %q, underpass %q", s.secs, s.got[0], s.got[1])
		} else {
			t.Logf("UDP push after %d s of silence: both %q", s.secs, s.got[0])
		}
	}
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

// startParityServers serves the probes' corporate end on addr (IPv4 or
// IPv6) in corp.
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

// udpPushAfter opens a UDP mapping that a router treats as a stream
// (traffic both ways, and a packet more than 2 s after the first: Linux
// conntrack then applies its 120 s stream timeout instead of the 30 s for
// a single exchange), stays silent for secs, and reports whether the
// server's push after that reached the client.
func udpPushAfter(ctx context.Context, ns *testenv.Netns, addr string, secs int) string {
	c, err := ns.Dial(ctx, "udp", addr)
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

// pingResult runs one ping from ns and reduces its output to what both
// paths share: a reply, "time to live exceeded" (from whichever router;
// ping's IPv6 "Time exceeded: Hop limit" too), "unreachable", or no
// answer.
func pingResult(ctx context.Context, ns *testenv.Netns, args ...string) string {
	out, _ := ns.Exec(ctx, "ping", append([]string{"-n", "-c", "1", "-W", "3"}, args...)...).CombinedOutput()
	o := strings.ToLower(string(out))
	switch {
	case strings.Contains(o, "1 received"):
		return "reply"
	case strings.Contains(o, "time to live exceeded"), strings.Contains(o, "time exceeded: hop limit"):
		return "time to live exceeded"
	case strings.Contains(o, "unreachable"):
		return "unreachable"
	}
	return "no answer"
}

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

// probe is one observation, made the same way on every path.
type probe struct {
	name string
	run  func(ctx context.Context, ns *testenv.Netns) string
}

// compareProbes runs each probe on the kernel-routed client (unless the
// kernel's results are given, from an earlier pass) and on the Underpass
// client, and fails t where they differ; it returns the kernel's results.
// over names the Underpass transport in messages.
func compareProbes(t *testing.T, ctx context.Context, probes []probe, kernel []string, kernelNS, underpassNS *testenv.Netns, over string) []string {
	t.Helper()
	run := func(pr probe, ns *testenv.Netns) string {
		pctx, pcancel := context.WithTimeout(ctx, 90*time.Second)
		defer pcancel()
		return pr.run(pctx, ns)
	}
	if kernel == nil {
		kernel = make([]string, len(probes))
		for i, pr := range probes {
			kernel[i] = run(pr, kernelNS)
		}
	}
	for i, pr := range probes {
		if got := run(pr, underpassNS); got != kernel[i] {
			t.Errorf("%s: kernel router %q, underpass over %s %q", pr.name, kernel[i], over, got)
		} else {
			t.Logf("%s (%s): both %q", pr.name, over, got)
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
// corp names: resets and half-closes both ways, a byte-exact download
// and UDP datagrams of the given sizes both ways.
func transportProbes(srv *parityServers, corp func(port int) string, udpSizes []int) []probe {
	return []probe{
		{"client resets", func(ctx context.Context, ns *testenv.Netns) string {
			c, err := ns.Dial(ctx, "tcp", corp(portResetObserver))
			if err != nil {
				return "dial: " + errClass(err)
			}
			c.Write([]byte("x"))
			time.Sleep(50 * time.Millisecond)
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			return "server saw " + srv.next(ctx)
		}},
		{"server resets", func(ctx context.Context, ns *testenv.Netns) string {
			c, err := ns.Dial(ctx, "tcp", corp(portResetter))
			if err != nil {
				return "dial: " + errClass(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("x"))
			_, err = io.ReadAll(c)
			return "client saw " + errClass(err)
		}},
		{"client half-closes first", func(ctx context.Context, ns *testenv.Netns) string {
			c, err := ns.Dial(ctx, "tcp", corp(portHalfClient))
			if err != nil {
				return "dial: " + errClass(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("hello"))
			c.(*net.TCPConn).CloseWrite()
			b, err := io.ReadAll(c)
			return fmt.Sprintf("got %q, then %s", b, errClass(err))
		}},
		{"server half-closes first", func(ctx context.Context, ns *testenv.Netns) string {
			c, err := ns.Dial(ctx, "tcp", corp(portHalfServer))
			if err != nil {
				return "dial: " + errClass(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			b, err := io.ReadAll(c)
			c.Write([]byte("0123456789"))
			c.(*net.TCPConn).CloseWrite()
			return fmt.Sprintf("got %q, %s; server %s", b, errClass(err), srv.next(ctx))
		}},
		{"100 MB download", func(ctx context.Context, ns *testenv.Netns) string {
			c, err := ns.Dial(ctx, "tcp", corp(portBulk))
			if err != nil {
				return "dial: " + errClass(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			got, err := io.ReadAll(c)
			if err != nil {
				return "read: " + errClass(err)
			}
			return fmt.Sprintf("%d bytes, intact %v", len(got), bytes.Equal(got, testenv.Pattern(bulkSize)))
		}},
		{"UDP sizes both ways", func(ctx context.Context, ns *testenv.Netns) string {
			c, err := ns.Dial(ctx, "udp", corp(portUDPEcho))
			if err != nil {
				return "dial: " + errClass(err)
			}
			defer c.Close()
			var out []string
			buf := make([]byte, 1<<16)
			for _, n := range udpSizes {
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
		}},
	}
}

// pingProbes ping dst with each size, then with TTL (hop limit) 1 for
// traceroute's first hop; flags go before the other arguments ("-6").
func pingProbes(dst string, sizes []string, flags ...string) []probe {
	return []probe{
		{"ping sizes", func(ctx context.Context, ns *testenv.Netns) string {
			var out []string
			for _, n := range sizes {
				out = append(out, n+": "+pingResult(ctx, ns, append(slices.Clone(flags), "-s", n, dst)...))
			}
			return strings.Join(out, " ")
		}},
		{"traceroute's first hop", func(ctx context.Context, ns *testenv.Netns) string {
			return pingResult(ctx, ns, append(slices.Clone(flags), "-t", "1", dst)...)
		}},
	}
}

// dialProbes connect to a host that does not answer and to a closed port.
func dialProbes(deadHost, closedPort string) []probe {
	return []probe{
		{"host does not answer", func(ctx context.Context, ns *testenv.Netns) string {
			_, err := ns.Dial(ctx, "tcp", deadHost)
			return errClass(err)
		}},
		{"closed port", func(ctx context.Context, ns *testenv.Netns) string {
			_, err := ns.Dial(ctx, "tcp", closedPort)
			return errClass(err)
		}},
	}
}
