package tunnel_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// The IPv6 kernel-routed client's link to gw (ULA).
var (
	kClient6 = netip.MustParseAddr("fd00:ce::1")
	kRouter6 = netip.MustParseAddr("fd00:ce::2")
)

// addCorp6 gives the gw ⇄ corp link its IPv6 addresses (gwCorp6,
// corp6), without duplicate address detection so they work at once.
func addCorp6(t *testing.T, tp *testenv.Topo) {
	t.Helper()
	tp.GW.Run(t, "ip", "-6", "addr", "add", netip.PrefixFrom(gwCorp6, 64).String(), "dev", tp.GWCorpIf, "nodad")
	tp.Corp.Run(t, "ip", "-6", "addr", "add", netip.PrefixFrom(corp6, 64).String(), "dev", tp.CorpIf, "nodad")
}

// kernelRoutedClient6 adds a client namespace that gw routes to corp's
// IPv6 network as a plain Linux router: IPv6 forwarding and a NAT66
// MASQUERADE out of the corp-side interface, so that the corporate side
// sees gw's address on both paths (Underpass re-originates every flow from
// it). The standard client's link stays unforwarded for IPv6 too.
func kernelRoutedClient6(t *testing.T, tp *testenv.Topo) *testenv.Netns {
	kc := testenv.NewNetns(t, "kclient6")
	kcIf, gwIf := testenv.Link(t, kc, tp.GW, netip.Prefix{}, netip.Prefix{})
	kc.Run(t, "ip", "-6", "addr", "add", netip.PrefixFrom(kClient6, 64).String(), "dev", kcIf, "nodad")
	tp.GW.Run(t, "ip", "-6", "addr", "add", netip.PrefixFrom(kRouter6, 64).String(), "dev", gwIf, "nodad")
	kc.Run(t, "ip", "-6", "route", "add", corpNet6.String(), "via", kRouter6.String())
	tp.GW.Run(t, "ip6tables", "-w", "-A", "FORWARD", "-i", tp.GWClientIf, "-j", "DROP")
	tp.GW.Run(t, "ip6tables", "-w", "-A", "FORWARD", "-o", tp.GWClientIf, "-j", "DROP")
	tp.GW.Run(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	tp.GW.Run(t, "ip6tables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", netip.PrefixFrom(kClient6, 64).Masked().String(), "-o", tp.GWCorpIf, "-j", "MASQUERADE")
	return kc
}

// TestRouterParityIPv6 is TestRouterParity over IPv6: the same probes to
// an IPv6-only corporate address, from a client behind a kernel IPv6
// router (forwarding plus NAT66 MASQUERADE) and from the stock openconnect
// (kernel tun) on a dual-stack Underpass session, over TLS and then DTLS.
// Not run here: the UDP silences (90 s and 150 s), which exercise the
// same mapping code as over IPv4. The UDP sizes are IPv6's: 1232 and 1452
// fill a 1280- and a 1500-byte packet, one byte more fragments, and 65527
// is the largest UDP payload an IPv6 packet without a jumbogram carries.
func TestRouterParityIPv6(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "openconnect", "iptables", "ip6tables", "ping")
	tp := testenv.Topology(t)
	addCorp6(t, tp)
	kc := kernelRoutedClient6(t, tp)
	srv := startParityServers(t, tp.Corp, corp6)

	cert := testenv.NewCert(t, testenv.GWAddr.String())
	var logs testenv.LogBuffer
	gw, listen := udpGateway(t, tp, cert, 443, &logs, func(c *tunnel.Config) {
		c.Pool6 = pool6
		c.SplitInclude = []netip.Prefix{testenv.CorpNet, corpNet6}
		c.Pinger = nsPinger{tp.GW}
	})
	ocOpts := testenv.OCOptions{Server: listen, ServerCertPin: cert.Pin, User: "alice", Password: "secret", Mode: testenv.ModeTun}
	oc := testenv.Openconnect(t, tp.Client, ocOpts) // TLS (CSTP) only first

	corp := func(port int) string { return net.JoinHostPort(corp6.String(), strconv.Itoa(port)) }
	type probe struct {
		name string
		run  func(ctx context.Context, ns *testenv.Netns) string
	}
	probes := []probe{
		{"the source address corp sees", func(ctx context.Context, ns *testenv.Netns) string {
			c, err := ns.Dial(ctx, "tcp6", corp(portWhoami))
			if err != nil {
				return "dial: " + errClass(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			b, err := io.ReadAll(c)
			return fmt.Sprintf("%s, %s", b, errClass(err)) // gw's corp-side address on both paths (NAT66)
		}},
		{"client resets", func(ctx context.Context, ns *testenv.Netns) string {
			c, err := ns.Dial(ctx, "tcp6", corp(portResetObserver))
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
			c, err := ns.Dial(ctx, "tcp6", corp(portResetter))
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
			c, err := ns.Dial(ctx, "tcp6", corp(portHalfClient))
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
			c, err := ns.Dial(ctx, "tcp6", corp(portHalfServer))
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
			c, err := ns.Dial(ctx, "tcp6", corp(portBulk))
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
			c, err := ns.Dial(ctx, "udp6", corp(portUDPEcho))
			if err != nil {
				return "dial: " + errClass(err)
			}
			defer c.Close()
			var out []string
			buf := make([]byte, 1<<16)
			for _, n := range []int{1, 1232, 1233, 1452, 1453, 8000, 65527} {
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
		{"ping sizes", func(ctx context.Context, ns *testenv.Netns) string {
			var out []string
			for _, n := range []string{"56", "1452", "8000", "65000"} {
				out = append(out, n+": "+pingResult(ctx, ns, "-6", "-s", n, corp6.String()))
			}
			return strings.Join(out, " ")
		}},
		{"traceroute's first hop", func(ctx context.Context, ns *testenv.Netns) string {
			return pingResult(ctx, ns, "-6", "-t", "1", corp6.String())
		}},
		{"host does not answer", func(ctx context.Context, ns *testenv.Netns) string {
			_, err := ns.Dial(ctx, "tcp6", "[fd00:c0::77]:80") // corp's subnet, no such host: neighbour discovery fails
			return errClass(err)
		}},
		{"closed port", func(ctx context.Context, ns *testenv.Netns) string {
			_, err := ns.Dial(ctx, "tcp6", corp(9))
			return errClass(err)
		}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	run := func(pr probe, ns *testenv.Netns) string {
		pctx, pcancel := context.WithTimeout(ctx, 90*time.Second)
		defer pcancel()
		return pr.run(pctx, ns)
	}
	kernel := make([]string, len(probes))
	for i, pr := range probes {
		kernel[i] = run(pr, kc)
		if got := run(pr, tp.Client); got != kernel[i] {
			t.Errorf("%s: kernel router %q, underpass over TLS %q", pr.name, kernel[i], got)
		} else {
			t.Logf("%s: both %q", pr.name, got)
		}
	}

	if err := oc.Close(); err != nil {
		t.Fatal(err)
	}
	ocOpts.DTLS = true
	oc = testenv.Openconnect(t, tp.Client, ocOpts)
	waitFor(t, 15*time.Second, "openconnect's DTLS channel", func() bool { return strings.Contains(oc.Log(), "Established DTLS") })
	dtlsBefore := gw.Stats().DTLSPacketsIn
	for i, pr := range probes {
		if got := run(pr, tp.Client); got != kernel[i] {
			t.Errorf("%s: kernel router %q, underpass over DTLS %q", pr.name, kernel[i], got)
		} else {
			t.Logf("%s (DTLS): %q", pr.name, got)
		}
	}
	if n := gw.Stats().DTLSPacketsIn - dtlsBefore; n < 1000 {
		t.Errorf("only %d packets came over DTLS during the DTLS pass", n)
	}
	// A ping to a host that does not exist is never answered by the
	// gateway itself, even in fragments (over DTLS, 8000 bytes are: gVisor
	// used to reassemble them and reply for any address). Not a parity
	// probe: a kernel router reports "address unreachable" once neighbour
	// discovery gives up (about 3 s, racing ping's wait), while Underpass
	// forwards pings through the gateway host's ping sockets, which relay
	// replies only.
	for _, n := range []string{"56", "8000"} {
		pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
		if got := pingResult(pctx, tp.Client, "-6", "-s", n, "fd00:c0::77"); got == "reply" {
			t.Errorf("ping -s %s to a host that does not exist: %s", n, got)
		}
		pcancel()
	}
	if t.Failed() {
		t.Logf("gateway log (tail):\n%s", tailLines(logs.String(), 60))
		t.Logf("openconnect log (tail):\n%s", tailLines(oc.Log(), 40))
	}
}
