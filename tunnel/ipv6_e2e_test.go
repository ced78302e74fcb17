package tunnel_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// The dual-stack e2e topology adds IPv6 to the standard one, on the
// gw ⇄ corp link only (ULA, RFC 4193): the client reaches corp's IPv6
// network through the tunnel or not at all.
var (
	gwCorp6  = netip.MustParseAddr("fd00:c0::1") // the gateway host's corp-side IPv6 address
	corp6    = netip.MustParseAddr("fd00:c0::2") // the IPv6-only service's address
	corpNet6 = netip.MustParsePrefix("fd00:c0::/64")
	pool6    = netip.MustParsePrefix("fd7a:5c3e:11::/64")
)

// TestDualStackOpenconnect: the stock openconnect 9.01 (kernel tun) on a
// gateway with an IPv6 pool gets an IPv6 address and the IPv6 include
// route, reaches an IPv6-only service on the corporate network by address
// and by name (AAAA through the DNS proxy, asked at its IPv6 and its IPv4
// address; unbound upstream), with the gateway's corp-side IPv6 address as
// the source the service sees (each flow is re-originated from the
// gateway host: a NAT66 in effect). A SYN from the client's tunnel
// address to an IPv6 destination outside the include routes, to ::1, to a
// link-local address or to the gateway host's own IPv6 address is reset at
// once, where the same SYN to the corporate service is answered.
func TestDualStackOpenconnect(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "openconnect", "iptables", "unbound", "dig")
	tp := testenv.Topology(t)
	addCorp6(t, tp)
	// unbound in corp on both its addresses: v6only.corp.example has only
	// an AAAA record (corp6), intranet.corp.example only an A record.
	testenv.Unbound(t, tp.Corp, []netip.Addr{corp6, testenv.CorpAddr}, "corp.example.", []string{
		"v6only.corp.example. 300 IN AAAA " + corp6.String(),
		"intranet.corp.example. 300 IN A " + testenv.CorpAddr.String(),
	})

	// The IPv6-only service: HTTP on corp6 alone.
	l, err := tp.Corp.Listen("tcp6", netip.AddrPortFrom(corp6, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		io.WriteString(w, "v6only "+host)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	svc := netip.MustParseAddrPort(l.Addr().String())

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Without the tunnel the client has no way there.
	if c, err := tp.Client.Dial(ctx, "tcp", svc.String()); err == nil {
		c.Close()
		t.Fatalf("the client reaches %v without the tunnel", svc)
	}

	cert := testenv.NewCert(t, testenv.GWAddr.String())
	var logs testenv.LogBuffer
	gw, listen := sessionGateway(t, tp, cert, 443, &logs, func(c *tunnel.Config) {
		c.Pool6 = pool6
		c.SplitInclude = []netip.Prefix{testenv.CorpNet, corpNet6}
		c.DNS = []netip.Addr{testenv.CorpAddr, corp6}
		c.SearchDomains = []string{"corp.example"}
		c.HostAddrs = []netip.Addr{testenv.GWAddr, testenv.GWCorpAddr, gwCorp6}
	})
	defer func() {
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	}()
	oc := testenv.Openconnect(t, tp.Client, testenv.OCOptions{Server: listen, ServerCertPin: cert.Pin,
		User: "alice", Password: "secret", Mode: testenv.ModeTun})
	env := oc.Env()
	for _, k := range []string{"INTERNAL_IP6_NETMASK", "INTERNAL_IP6_ADDRESS", "INTERNAL_IP4_DNS", "INTERNAL_IP6_DNS", "CISCO_IPV6_SPLIT_INC", "CISCO_IPV6_SPLIT_INC_0_ADDR", "CISCO_SPLIT_INC"} {
		t.Logf("%s=%q", k, env[k])
	}
	addr6, err := netip.ParsePrefix(env["INTERNAL_IP6_NETMASK"])
	if err != nil || addr6.Bits() != pool6.Bits() || !pool6.Contains(addr6.Addr()) {
		t.Fatalf("INTERNAL_IP6_NETMASK %q: want an address of %v with /64", env["INTERNAL_IP6_NETMASK"], pool6)
	}
	if env["CISCO_IPV6_SPLIT_INC"] != "1" || env["CISCO_IPV6_SPLIT_INC_0_ADDR"] != corpNet6.Addr().String() ||
		env["CISCO_IPV6_SPLIT_INC_0_MASKLEN"] != "64" {
		t.Errorf("IPv6 split include: %q %q/%q, want 1 %v", env["CISCO_IPV6_SPLIT_INC"],
			env["CISCO_IPV6_SPLIT_INC_0_ADDR"], env["CISCO_IPV6_SPLIT_INC_0_MASKLEN"], corpNet6)
	}
	if !strings.Contains(env["INTERNAL_IP4_DNS"], corp6.String()) && !strings.Contains(env["INTERNAL_IP6_DNS"], corp6.String()) {
		t.Errorf("the IPv6 resolver (X-CSTP-DNS-IP6) did not reach the script: IP4_DNS %q IP6_DNS %q",
			env["INTERNAL_IP4_DNS"], env["INTERNAL_IP6_DNS"])
	}
	if s, ok := gw.WhoIs(addr6.Addr()); !ok || s.User != "alice" {
		t.Errorf("WhoIs(%v) = %+v, %v", addr6.Addr(), s, ok)
	}

	get := func(host string) (string, error) {
		hc := &http.Client{Transport: &http.Transport{DialContext: tp.Client.Dial, DisableKeepAlives: true}, Timeout: 15 * time.Second}
		resp, err := hc.Get("http://" + net.JoinHostPort(host, fmt.Sprint(svc.Port())) + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	// By address. The tun address may still be tentative for a moment.
	var body string
	for i := 0; ; i++ {
		if body, err = get(corp6.String()); err == nil || i == 20 {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil || body != "v6only "+gwCorp6.String() {
		t.Fatalf("GET by address: %q, %v (want the service, seeing the gateway's %v)", body, err, gwCorp6)
	}

	// By name: AAAA through the DNS proxy at each pushed address.
	for _, dns := range []netip.Addr{corp6, testenv.CorpAddr} {
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return tp.Client.Dial(ctx, network, netip.AddrPortFrom(dns, 53).String())
		}}
		ips, err := r.LookupNetIP(ctx, "ip6", "v6only.corp.example")
		if err != nil || len(ips) != 1 || ips[0] != corp6 {
			t.Errorf("AAAA v6only.corp.example through the DNS proxy at %v: %v, %v", dns, ips, err)
			continue
		}
		if body, err := get(ips[0].String()); err != nil || !strings.HasPrefix(body, "v6only ") {
			t.Errorf("GET by name (resolved at %v): %q, %v", dns, body, err)
		}
	}

	// Refusals, with SYNs sent straight into the tun device (the client's
	// kernel would not route ::1 or another network there itself; a
	// client may send what it likes, the gateway enforces).
	gwHostSvc, err := tp.GW.Listen("tcp6", netip.AddrPortFrom(gwCorp6, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer gwHostSvc.Close()
	hostSvc := netip.AddrPortFrom(gwCorp6, netip.MustParseAddrPort(gwHostSvc.Addr().String()).Port())
	src := netip.AddrPortFrom(addr6.Addr(), 41000)
	synCases(t, gw, newTunTap(t, tp.Client, oc.Interface), src, []synCase{
		{"the corporate service (control)", svc, false},
		{"outside the include routes", netip.MustParseAddrPort("[fd00:99::1]:80"), true},
		{"the gateway host's ::1", netip.MustParseAddrPort("[::1]:22"), true},
		{"a link-local address", netip.MustParseAddrPort("[fe80::1]:22"), true},
		{"the gateway host's own IPv6 address (a listener there)", hostSvc, true},
	})
	if err := oc.Close(); err != nil {
		t.Logf("openconnect exit: %v", err)
	}

	// A full tunnel (no include routes): every IPv6 destination is
	// routed, so only the gateway-host block refuses ::1, link-local, the
	// cloud metadata address and the host's own address.
	gwFull, listenFull := sessionGateway(t, tp, cert, 444, &logs, func(c *tunnel.Config) {
		c.Pool6 = pool6
		c.SplitInclude = nil
		c.HostAddrs = []netip.Addr{testenv.GWAddr, testenv.GWCorpAddr, gwCorp6}
	})
	ocFull := testenv.Openconnect(t, tp.Client, testenv.OCOptions{Server: listenFull, ServerCertPin: cert.Pin,
		User: "alice", Password: "secret", Mode: testenv.ModeTun})
	full6, err := netip.ParsePrefix(ocFull.Env()["INTERNAL_IP6_NETMASK"])
	if err != nil {
		t.Fatalf("full tunnel: INTERNAL_IP6_NETMASK: %v", err)
	}
	synCases(t, gwFull, newTunTap(t, tp.Client, ocFull.Interface), netip.AddrPortFrom(full6.Addr(), 41000), []synCase{
		{"full tunnel: the corporate service (control)", svc, false},
		{"full tunnel: the gateway host's ::1", netip.MustParseAddrPort("[::1]:22"), true},
		{"full tunnel: a link-local address", netip.MustParseAddrPort("[fe80::1]:22"), true},
		{"full tunnel: the AWS IPv6 metadata address", netip.MustParseAddrPort("[fd00:ec2::254]:80"), true},
		{"full tunnel: the gateway host's own IPv6 address", hostSvc, true},
	})
}

// synCase is a SYN into the tunnel and whether the gateway's policy must
// refuse it.
type synCase struct {
	name    string
	dst     netip.AddrPort
	refused bool
}

// synCases sends each case's SYN from src and checks the answer: a
// refused one is reset at once and counted as a policy refusal
// (Stats.Stack.DropNotAllowed; a failed upstream dial is not), an allowed
// one answered with a SYN-ACK.
func synCases(t *testing.T, gw *tunnel.Gateway, tun *tunTap, src netip.AddrPort, cases []synCase) {
	t.Helper()
	for _, tc := range cases {
		before := gw.Stats().Stack.DropNotAllowed
		flags, err := tun.syn(src, tc.dst, 5*time.Second)
		refusals := gw.Stats().Stack.DropNotAllowed - before
		switch {
		case err != nil:
			t.Errorf("%s (%v): %v", tc.name, tc.dst, err)
		case tc.refused && (flags&tcpRST == 0 || refusals != 1):
			t.Errorf("%s (%v): answered with flags %#x after %d policy refusals, want a RST after 1", tc.name, tc.dst, flags, refusals)
		case !tc.refused && (flags != tcpSYN|tcpACK || refusals != 0):
			t.Errorf("%s (%v): answered with flags %#x after %d policy refusals, want SYN-ACK", tc.name, tc.dst, flags, refusals)
		}
	}
}

const (
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// tunTap sends raw IPv6 packets into a tun device and reads what comes
// back, through an AF_PACKET socket in the device's namespace.
type tunTap struct {
	fd      int
	ifindex int
}

func newTunTap(t *testing.T, ns *testenv.Netns, dev string) *tunTap {
	t.Helper()
	tt := &tunTap{fd: -1}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		tt.ifindex = ifi.Index
		// Sockets keep the namespace they were made in.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IPV6)))
		if err != nil {
			return err
		}
		tt.fd = fd
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IPV6), Ifindex: ifi.Index})
	})
	if err != nil {
		t.Fatalf("AF_PACKET socket on %s: %v", dev, err)
	}
	t.Cleanup(func() { unix.Close(tt.fd) })
	return tt
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// syn sends a TCP SYN src -> dst into the tunnel and returns the TCP flags
// of the answer from dst to src.
func (tt *tunTap) syn(src, dst netip.AddrPort, timeout time.Duration) (byte, error) {
	pkt := tunnel.TCPSYN6ForTest(src, dst)
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IPV6), Ifindex: tt.ifindex}
	if err := unix.Sendto(tt.fd, pkt, 0, to); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 65536)
	for time.Now().Before(deadline) {
		tv := unix.NsecToTimeval(int64(time.Until(deadline)))
		if err := unix.SetsockoptTimeval(tt.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return 0, err
		}
		n, from, err := unix.Recvfrom(tt.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue // our own SYN
		}
		b := buf[:n]
		if len(b) < 60 || b[0]>>4 != 6 || b[6] != 6 ||
			netip.AddrFrom16([16]byte(b[8:24])) != dst.Addr() || netip.AddrFrom16([16]byte(b[24:40])) != src.Addr() ||
			binary.BigEndian.Uint16(b[40:42]) != dst.Port() || binary.BigEndian.Uint16(b[42:44]) != src.Port() {
			continue
		}
		return b[40+13], nil
	}
	return 0, fmt.Errorf("no answer within %v", timeout)
}
