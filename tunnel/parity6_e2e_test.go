package tunnel_test

import (
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
// router (forwarding plus NAT66 MASQUERADE), from the stock openconnect
// (kernel tun) on a dual-stack Underpass session, over TLS and then DTLS,
// and through tunnel.Client over TLS and over QUIC, with the UDP silences
// (90 s and 150 s) on every path alongside. The UDP sizes are IPv6's: 1232
// and 1452 fill a 1280- and a 1500-byte packet, one byte more fragments,
// and 65527 is the largest UDP payload an IPv6 packet without a jumbogram
// carries.
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

	paths := append([]*parityPath{
		{name: "kernel router", ns: kc, dial: kc.Dial},
		{name: "underpass", ns: tp.Client, dial: tp.Client.Dial},
	}, goClientPaths(t, tp, listen, cert.Pin)...)
	corp := func(port int) string { return net.JoinHostPort(corp6.String(), strconv.Itoa(port)) }
	probes := []probe{{name: "the source address corp sees", run: func(ctx context.Context, p *parityPath) string {
		c, err := p.dial(ctx, "tcp", corp(portWhoami))
		if err != nil {
			return "dial: " + errClass(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		return fmt.Sprintf("%s, %s", b, errClass(err)) // gw's corp-side address on both paths (NAT66)
	}}}
	probes = append(probes, transportProbes(srv, corp, []int{1, 1232, 1233, 1452, 1453, 8000}, 65527)...)
	probes = append(probes, pingProbes(corp6.String(), []string{"56", "1452", "8000", "65000"}, "-6")...)
	// corp's subnet, no such host: neighbour discovery fails.
	probes = append(probes, dialProbes("[fd00:c0::77]:80", corp(9))...)
	expectKernel(t, probes, map[string]string{
		"the source address corp sees":     gwCorp6.String() + ", ok",
		"client resets":                    "server saw connection reset by peer",
		"server resets":                    "client saw connection reset by peer",
		"client half-closes first":         `got "got 5", then ok`,
		"server half-closes first":         `got "hi", ok; server read 10 bytes after its FIN, then EOF`,
		"100 MB download":                  "104857600 bytes, intact true",
		"UDP sizes both ways":              "1: true 1232: true 1233: true 1452: true 1453: true 8000: true",
		"UDP's largest datagram both ways": "65527: true",
		"ping sizes":                       "56: reply of 64 bytes 1452: reply of 1460 bytes 8000: reply of 8008 bytes 65000: reply of 65008 bytes",
		"traceroute's first hop":           "time to live exceeded",
		"host does not answer":             "no route to host",
		"closed port":                      "connection refused",
	})
	ctx, cancel := context.WithTimeout(context.Background(), parityTimeout)
	defer cancel()
	silences := udpSilences(ctx, paths, corp(portUDPPush))

	kernel := compareProbes(t, ctx, probes, nil, paths[0], paths[1], "TLS")
	for _, p := range paths[2:] { // the Go client, both transports, while the silences run
		compareProbes(t, ctx, probes, kernel, nil, p, "")
	}
	silences(t) // before openconnect restarts for DTLS, which ends the underpass path's mapping
	oc = redialDTLS(t, gw, oc, ocOpts, func() { compareProbes(t, ctx, probes, kernel, nil, paths[1], "DTLS") })

	// A ping to a host that does not exist is never answered by the
	// gateway itself, even in fragments (over DTLS, 8000 bytes are: gVisor
	// used to reassemble them and reply for any address). Not a parity
	// probe: a kernel router reports "address unreachable" once neighbour
	// discovery gives up (about 3 s, racing ping's wait), while Underpass
	// forwards pings through the gateway host's ping sockets, which relay
	// replies only.
	for _, n := range []string{"56", "8000"} {
		pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
		if got := pingResult(pctx, tp.Client, "-6", "-s", n, "fd00:c0::77"); strings.HasPrefix(got, "reply") {
			t.Errorf("ping -s %s to a host that does not exist: %s", n, got)
		}
		pcancel()
	}
	if t.Failed() {
		t.Logf("gateway log (tail):\n%s", tailLines(logs.String(), 60))
		t.Logf("openconnect log (tail):\n%s", tailLines(oc.Log(), 40))
	}
}
