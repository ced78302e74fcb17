package tunnel_test

import (
	"bytes"
	"context"
	"encoding/binary"
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
	"golang.org/x/sys/unix"
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
	// Fragments whose Fragment header follows Hop-by-Hop and Destination
	// Options headers: a UDP datagram, a ping, and a ping to a host that
	// does not exist (which gVisor, reassembling such fragments itself,
	// used to answer).
	for _, pr := range []struct {
		name string
		dst  netip.AddrPort
	}{
		{"UDP fragments after extension headers", netip.AddrPortFrom(corp6, portUDPEcho)},
		{"ping fragments after extension headers", netip.AddrPortFrom(corp6, 0)},
		{"ping fragments after extension headers to no host", netip.AddrPortFrom(netip.MustParseAddr("fd00:c0::77"), 0)},
	} {
		probes = append(probes, probe{name: pr.name, run: func(ctx context.Context, p *parityPath) string {
			return fragExtProbe(ctx, p.ns, pr.dst)
		}, kernelOnly: "a raw socket: tunnel.Client's stack builds its own headers"})
	}
	expectKernel(t, probes, map[string]string{
		"the source address corp sees":     gwCorp6.String() + ", ok",
		"UDP sizes both ways":              "1: true 1232: true 1233: true 1452: true 1453: true 8000: true",
		"UDP's largest datagram both ways": "65527: true",
		"ping sizes":                       "56: reply of 64 bytes 1452: reply of 1460 bytes 8000: reply of 8008 bytes 65000: reply of 65008 bytes",
		"UDP fragments after extension headers": "none: echo intact true, hop-by-hop: echo intact true, " +
			"destination options: echo intact true, both: echo intact true",
		"ping fragments after extension headers": "none: reply intact true, hop-by-hop: reply intact true, " +
			"destination options: reply intact true, both: reply intact true",
		"ping fragments after extension headers to no host": "none: no reply, hop-by-hop: no reply, " +
			"destination options: no reply, both: no reply",
	})
	ctx, cancel := context.WithTimeout(context.Background(), parityTimeout)
	defer cancel()
	oc = runParity(t, ctx, gw, oc, ocOpts, paths, probes, corp(portUDPPush))

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

// IPv6 extension headers a client may put before the Fragment header
// (RFC 8200 4.1's order); each is 8 bytes here, one PadN option.
const (
	extHopByHop = 0
	extDestOpts = 60
	ipv6Frag    = 44
	ipv6UDP     = 17
	ipv6ICMP    = 58
)

// extChains are the chains of extension headers fragExtProbe puts before
// the Fragment header.
var extChains = []struct {
	name string
	exts []byte
}{
	{"none", nil},
	{"hop-by-hop", []byte{extHopByHop}},
	{"destination options", []byte{extDestOpts}},
	{"both", []byte{extHopByHop, extDestOpts}},
}

// fragExtProbe sends one message per chain of extension headers before
// the Fragment header as hand-built IPv6 fragments, from a raw socket in
// the client's namespace (the kernel's own stack never puts headers
// before the Fragment header), and reports per chain what came back: for
// a UDP echo server at dst (a port) whether the echo was intact, so the
// server saw the whole datagram once the router (the kernel's conntrack,
// or Underpass) reassembled it; for a host (port 0), whether an echo
// reply to a ping came back intact.
func fragExtProbe(ctx context.Context, ns *testenv.Netns, dst netip.AddrPort) string {
	var out []string
	for i, ch := range extChains {
		res, err := fragEcho(ctx, ns, dst, ch.exts, uint32(0x5e0000+i))
		if err != nil {
			res = errClass(err)
		}
		out = append(out, ch.name+": "+res)
	}
	return strings.Join(out, ", ")
}

// fragEcho sends one 400-byte UDP datagram (ICMPv6 echo request when
// dst's port is 0) to dst in three fragments with exts before each
// Fragment header and reports whether the echo (reply) came back intact.
func fragEcho(ctx context.Context, ns *testenv.Netns, dst netip.AddrPort, exts []byte, id uint32) (string, error) {
	// A connected UDP socket picks the source address and port and takes
	// a UDP echo; the message itself goes out through the raw socket.
	probePort := dst.Port()
	if probePort == 0 {
		probePort = 9 // any: only the source address is used
	}
	c, err := ns.Dial(ctx, "udp6", netip.AddrPortFrom(dst.Addr(), probePort).String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	src := netip.MustParseAddrPort(c.LocalAddr().String())
	payload := testenv.Pattern(400)
	var raw, icmp int
	if err := ns.Do(func() (err error) {
		// IPPROTO_RAW: the packets carry their own IPv6 header (raw(7));
		// an ICMPv6 raw socket sees the echo replies.
		if raw, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_RAW); err != nil {
			return err
		}
		icmp, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6)
		return err
	}); err != nil {
		return "", err
	}
	defer unix.Close(raw)
	defer unix.Close(icmp)
	proto, msg := byte(ipv6UDP), make([]byte, 8+len(payload))
	if dst.Port() == 0 {
		proto = ipv6ICMP
		msg[0] = 128 // echo request; identifier and sequence number:
		binary.BigEndian.PutUint32(msg[4:8], id)
	} else {
		binary.BigEndian.PutUint16(msg[0:2], src.Port())
		binary.BigEndian.PutUint16(msg[2:4], dst.Port())
		binary.BigEndian.PutUint16(msg[4:6], uint16(len(msg)))
	}
	copy(msg[8:], payload)
	to := &unix.SockaddrInet6{Addr: dst.Addr().As16()}
	for _, f := range fragments6(src.Addr(), dst.Addr(), proto, msg, exts, id, 200) {
		if err := unix.Sendto(raw, f, 0, to); err != nil {
			return "", err
		}
	}
	if proto == ipv6UDP {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 1024)
		n, err := c.Read(buf)
		if err != nil {
			return "no echo (" + errClass(err) + ")", nil
		}
		return fmt.Sprintf("echo intact %v", bytes.Equal(buf[:n], payload)), nil
	}
	tv := unix.NsecToTimeval(int64(500 * time.Millisecond))
	if err := unix.SetsockoptTimeval(icmp, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return "", err
	}
	buf := make([]byte, 2048)
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		n, _, err := unix.Recvfrom(icmp, buf, 0)
		if err != nil || n < 8 || buf[0] != 129 || binary.BigEndian.Uint32(buf[4:8]) != id {
			continue // a timeout, or another ICMPv6 message
		}
		return fmt.Sprintf("reply intact %v", bytes.Equal(buf[8:n], payload)), nil
	}
	return "no reply", nil
}

// fragments6 cuts the upper-layer message msg (UDP or ICMPv6, checksum
// left zero) from src to dst into IPv6 fragments of per bytes (a
// multiple of 8) of the message each, with the extension headers exts
// (8 bytes each, one PadN option) before each Fragment header. It fills
// in the message's checksum first.
func fragments6(src, dst netip.Addr, proto byte, msg []byte, exts []byte, id uint32, per int) [][]byte {
	// The checksum covers the pseudo-header (RFC 8200 8.1) and the whole
	// message; it is UDP's 7th and 8th bytes, ICMPv6's 3rd and 4th.
	s, d := src.As16(), dst.As16()
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(s[:])
	add(d[:])
	add([]byte{0, 0, byte(len(msg) >> 8), byte(len(msg)), 0, 0, 0, proto})
	add(msg)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	at := 6
	if proto == ipv6ICMP {
		at = 2
	}
	binary.BigEndian.PutUint16(msg[at:at+2], ^uint16(sum))

	var out [][]byte
	for off := 0; off < len(msg); off += per {
		chunk := msg[off:min(off+per, len(msg))]
		b := make([]byte, 40, 40+8*len(exts)+8+len(chunk))
		binary.BigEndian.PutUint32(b[0:4], 6<<28)
		binary.BigEndian.PutUint16(b[4:6], uint16(8*len(exts)+8+len(chunk)))
		b[6], b[7] = ipv6Frag, 64
		if len(exts) > 0 {
			b[6] = exts[0]
		}
		copy(b[8:24], s[:])
		copy(b[24:40], d[:])
		for i := range exts {
			nh := byte(ipv6Frag)
			if i+1 < len(exts) {
				nh = exts[i+1]
			}
			b = append(b, nh, 0, 1, 4, 0, 0, 0, 0) // Hdr Ext Len 0: 8 bytes; PadN of 4
		}
		fo := uint16(off) // a multiple of 8: the offset in 8-byte units, shifted by 3
		if off+len(chunk) < len(msg) {
			fo |= 1 // M: more fragments
		}
		b = append(b, proto, 0, byte(fo>>8), byte(fo), byte(id>>24), byte(id>>16), byte(id>>8), byte(id))
		out = append(out, append(b, chunk...))
	}
	return out
}
