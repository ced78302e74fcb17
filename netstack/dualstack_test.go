package netstack

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// A dual-stack client: the IPv4 address and an IPv6 one (a ULA /64 pool).
var (
	cliAddr6 = netip.MustParseAddr("fd00:99::2")
	cli2Addr = netip.MustParseAddr("fd00:99::3")
	far6     = netip.MustParseAddr("2001:db8::1")
)

// TestAttachAddrs: a port takes one address of each family or fails
// whole, and Close frees both.
func TestAttachAddrs(t *testing.T) {
	gw := newGW(t, nil)
	for _, tc := range []struct {
		name  string
		addrs []netip.Addr
		want  error
	}{
		{"none", nil, ErrInvalidAddr},
		{"three", []netip.Addr{cliAddr, cliAddr6, cli2}, ErrInvalidAddr},
		{"two IPv4", []netip.Addr{cliAddr, cli2}, ErrInvalidAddr},
		{"two IPv6", []netip.Addr{cliAddr6, cli2Addr}, ErrInvalidAddr},
		{"link-local zone", []netip.Addr{cliAddr, netip.MustParseAddr("fe80::1%eth0")}, ErrInvalidAddr},
		{"IPv6 multicast", []netip.Addr{cliAddr, netip.MustParseAddr("ff02::1")}, ErrInvalidAddr},
		{"IPv4-mapped", []netip.Addr{cliAddr, netip.MustParseAddr("::ffff:10.99.0.9")}, ErrInvalidAddr},
		{"the stack's own", []netip.Addr{cliAddr6, gwAddr}, ErrInvalidAddr},
	} {
		if p, err := gw.AttachAddrs(tc.addrs, testHeadroom, 0); !errors.Is(err, tc.want) {
			if p != nil {
				p.Close()
			}
			t.Errorf("%s: AttachAddrs(%v) = %v, want %v", tc.name, tc.addrs, err, tc.want)
		}
	}
	p, err := gw.AttachAddrs([]netip.Addr{cliAddr, cliAddr6}, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Addrs(); !slices.Equal(got, []netip.Addr{cliAddr, cliAddr6}) || p.Addr() != cliAddr {
		t.Fatalf("Addrs = %v, Addr = %v", got, p.Addr())
	}
	// Either address in use fails the whole attach and leaves nothing
	// behind: the free one stays free.
	if _, err := gw.AttachAddrs([]netip.Addr{cli2, cliAddr6}, testHeadroom, 0); !errors.Is(err, ErrAddrInUse) {
		t.Fatalf("second address in use: %v", err)
	}
	p2, err := gw.Attach(cli2, testHeadroom, 0)
	if err != nil {
		t.Fatalf("the first address was left attached by the failed AttachAddrs: %v", err)
	}
	p2.Close()
	if _, err := gw.Attach(cliAddr6, testHeadroom, 0); !errors.Is(err, ErrAddrInUse) {
		t.Fatalf("IPv6 address of a live port: %v", err)
	}
	p.Close()
	for _, a := range []netip.Addr{cliAddr, cliAddr6} {
		q, err := gw.Attach(a, testHeadroom, 0)
		if err != nil {
			t.Fatalf("%v not freed by Close: %v", a, err)
		}
		q.Close()
	}
}

// loop6Dialer sends every IPv6 destination to ::1 and every IPv4 one to
// 127.0.0.1 (same port), in the destination's family: gVisor refuses a
// packet to a loopback address arriving on a non-loopback NIC, so tests
// address far6 and the flow lands on ::1.
type loop6Dialer struct{ d net.Dialer }

func (l *loop6Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, err
	}
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port())
	if ap.Addr().Is6() {
		to = netip.AddrPortFrom(netip.IPv6Loopback(), ap.Port())
	}
	return l.d.DialContext(ctx, network, to.String())
}

// TestDualStackFlows: one port carries TCP and UDP over both families,
// re-originated with IPv6 host sockets for IPv6 destinations; a packet
// from any other IPv6 source is a spoof; session-to-session traffic over
// IPv6 is refused as over IPv4.
func TestDualStackFlows(t *testing.T) {
	gw := newGW(t, func(c *Config) { c.Dialer = &loop6Dialer{} })
	c := newClientAddrs(t, gw, []netip.Addr{cliAddr, cliAddr6}, 0)

	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer conn.Close(); io.Copy(conn, conn) }()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up := netip.AddrPortFrom(far6, netip.MustParseAddrPort(ln.Addr().String()).Port())
	conn, err := c.dialTCP(ctx, up)
	if err != nil {
		t.Fatalf("TCP over IPv6 to %v: %v", up, err)
	}
	msg := bytes.Repeat([]byte("dual-stack "), 10000)
	go conn.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("TCP over IPv6 echo: %v", err)
	}
	conn.Close()

	u, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.ServePacket(t, u, func(b []byte, from net.Addr) { u.WriteTo(b, from) })
	uc, err := c.dialUDP(netip.AddrPortFrom(far6, netip.MustParseAddrPort(u.LocalAddr().String()).Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := uc.Write([]byte("hello6")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 64)
	if n, err := uc.Read(b); err != nil || string(b[:n]) != "hello6" {
		t.Fatalf("UDP over IPv6: %q, %v", b[:n], err)
	}

	// The same port, over IPv4.
	conn4, err := c.dialTCP(ctx, echoServer(t))
	if err != nil {
		t.Fatalf("TCP over IPv4 on a dual-stack port: %v", err)
	}
	conn4.Close()

	// Anti-spoofing: the port's IPv6 address only.
	before := gw.Stats().DropSpoofed
	spoof := udpPacket(netip.AddrPortFrom(cli2Addr, 999), netip.AddrPortFrom(far6, 53), []byte("x"))
	if err := c.port.Inject(spoof); !errors.Is(err, ErrSpoofed) {
		t.Fatalf("IPv6 packet from another source: %v", err)
	}
	if d := gw.Stats().DropSpoofed - before; d != 1 {
		t.Fatalf("DropSpoofed grew by %d", d)
	}
	// No session-to-session traffic: another dual-stack session's IPv6
	// address is refused (an ICMPv6 admin-prohibited comes back).
	other, err := gw.AttachAddrs([]netip.Addr{cli2, cli2Addr}, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	p, err := gw.AttachAddrs([]netip.Addr{netip.MustParseAddr("10.99.0.9"), netip.MustParseAddr("fd00:99::9")}, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	pkt := udpPacket(netip.MustParseAddrPort("[fd00:99::9]:999"), netip.AddrPortFrom(cli2Addr, 53), []byte("x"))
	if err := p.Inject(pkt); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("IPv6 to another session: %v", err)
	}
	r := nextPacket(t, p, 2*time.Second)
	if r[0]>>4 != 6 || r[6] != protoICMPv6 || r[40] != icmp6Unreach || r[41] != icmp6CodeAdminProhib {
		t.Fatalf("answer to a refused IPv6 packet: % x", r[:min(len(r), 48)])
	}
}

// TestHostPingerIPv6 pings ::1 from a host socket (a ping socket, or a raw
// one as root): the IPv6 path of HostPinger against the real kernel.
func TestHostPingerIPv6(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	r, err := HostPinger{}.Ping(ctx, netip.IPv6Loopback(), 0x4242, 5, []byte("payload6"))
	if err != nil {
		t.Fatalf("Ping ::1: %v", err)
	}
	if string(r) != "payload6" {
		t.Fatalf("reply payload %q", r)
	}
}
