package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
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

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/cstp"
	"github.com/underpass/underpass/internal/core/ippool"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/netstack"
)

// testPool6 is the dual-stack tests' IPv6 pool: a ULA /64.
var testPool6 = netip.MustParsePrefix("fd7a:5c3e:11::/64")

// connectHead sends a CONNECT with cookie and extra request headers and
// returns the reply's status and headers; the connection is closed (the
// session stays, detached).
func connectHead(t *testing.T, addr, cookie, extra string) (int, http.Header) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: gw\r\nCookie: webvpn=%s\r\nX-CSTP-Version: 1\r\nX-CSTP-MTU: 1400\r\n%s\r\n", cookie, extra)
	req, _ := http.NewRequest(http.MethodConnect, "https://gw/CSCOSSLC/tunnel", nil)
	rsp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatalf("CONNECT response: %v", err)
	}
	return rsp.StatusCode, rsp.Header
}

// tcpSYN6 is an IPv6 TCP SYN from src to dst.
func tcpSYN6(src, dst netip.AddrPort) []byte {
	b := make([]byte, 40+20)
	binary.BigEndian.PutUint32(b[0:4], 6<<28)
	binary.BigEndian.PutUint16(b[4:6], 20)
	b[6], b[7] = 6, 64 // TCP, hop limit
	s16, d16 := src.Addr().As16(), dst.Addr().As16()
	copy(b[8:24], s16[:])
	copy(b[24:40], d16[:])
	t := b[40:]
	binary.BigEndian.PutUint16(t[0:2], src.Port())
	binary.BigEndian.PutUint16(t[2:4], dst.Port())
	binary.BigEndian.PutUint32(t[4:8], 1000)
	t[12], t[13] = 5<<4, 0x02 // SYN
	binary.BigEndian.PutUint16(t[14:16], 65535)
	// Checksum over the pseudo-header (RFC 8200 8.1) and the segment.
	ps := make([]byte, 0, 40+len(t))
	ps = append(ps, s16[:]...)
	ps = append(ps, d16[:]...)
	ps = binary.BigEndian.AppendUint32(ps, uint32(len(t)))
	ps = append(ps, 0, 0, 0, 6)
	ps = append(ps, t...)
	binary.BigEndian.PutUint16(t[16:18], ^checksum(ps))
	return b
}

// TestDualStackSession: with Pool6, a client that asks for IPv6 gets an
// IPv6 address of the pool (never the kept-back first one) with the
// pool's prefix length, and the IPv6 routes in the -IP6 headers; a client
// that does not ask gets exactly the IPv4 reply. The address is sticky on
// reconnect, sealed in the cookie so another server of the site resumes
// it, enforced on the data path (anti-spoofing, the gateway-host block:
// a SYN to ::1 is reset), found by WhoIs, and released at the session's
// end.
func TestDualStackSession(t *testing.T) {
	sealer, err := auth.NewSealer(nil, make([]byte, auth.SealerKeySize))
	if err != nil {
		t.Fatal(err)
	}
	mod := func(c *Config) {
		c.Pool6 = testPool6
		c.SplitInclude = append(c.SplitInclude, netip.MustParsePrefix("fd00:1::/48"))
		c.Sealer = sealer
	}
	g, addr := startGateway(t, mod)
	// bob first, so alice's addresses are not the ones a fresh pool hands
	// out first: the resume below must claim hers, not allocate.
	if c, body := signIn(t, addr, "bob", "hunter2"); c == "" {
		t.Fatalf("sign-in: %s", body)
	}
	cookie, body := signIn(t, addr, "alice", "secret")
	if cookie == "" {
		t.Fatalf("sign-in: %s", body)
	}

	// openconnect 9.01's request: both address types, full IPv6.
	const ask6 = "X-CSTP-Address-Type: IPv6,IPv4\r\nX-CSTP-Full-IPv6-Capability: true\r\n"
	st, h := connectHead(t, addr, cookie, ask6)
	if st != 200 {
		t.Fatalf("CONNECT: %d", st)
	}
	a6, err := netip.ParsePrefix(h.Get(cstp.HdrAddressIP6))
	if err != nil || a6.Bits() != testPool6.Bits() || !testPool6.Contains(a6.Addr()) || a6.Addr() == testPool6.Addr().Next() {
		t.Fatalf("X-CSTP-Address-IP6 %q (%v): want an address of %v other than its first, with /%d", h.Get(cstp.HdrAddressIP6), err, testPool6, testPool6.Bits())
	}
	addr4, _ := netip.ParseAddr(h.Get(cstp.HdrAddress))
	if inc6 := h.Values(cstp.HdrSplitIncludeIP6); len(inc6) != 1 || inc6[0] != "fd00:1::/48" {
		t.Errorf("Split-Include-IP6 %q, want the IPv6 include", inc6)
	}
	if inc := strings.Join(h.Values(cstp.HdrSplitInclude), ","); strings.Contains(inc, ":") || !strings.Contains(inc, "198.18.0.0/255.255.0.0") {
		t.Errorf("Split-Include %q: want the IPv4 routes only", inc)
	}
	s, ok := g.WhoIs(a6.Addr())
	if !ok || s.User != "alice" || s.Address6 != a6.Addr() || s.Address != addr4 {
		t.Fatalf("WhoIs(%v) = %+v, %v", a6.Addr(), s, ok)
	}

	// Sticky on reconnect, with the IPv4 address.
	if st, h := connectHead(t, addr, cookie, ask6); st != 200 || h.Get(cstp.HdrAddressIP6) != a6.String() || h.Get(cstp.HdrAddress) != addr4.String() {
		t.Fatalf("reconnect: %d, %q %q, want %v %v", st, h.Get(cstp.HdrAddressIP6), h.Get(cstp.HdrAddress), a6, addr4)
	}
	// A client that does not ask for IPv6 (an IPv4-only client) gets
	// no IPv6 header at all.
	for _, extra := range []string{"X-CSTP-Address-Type: IPv4\r\n", ""} {
		st, h := connectHead(t, addr, cookie, extra)
		if st != 200 {
			t.Fatalf("CONNECT %q: %d", extra, st)
		}
		for k := range h {
			if strings.HasSuffix(k, "-Ip6") {
				t.Errorf("request %q: reply has %s: %q", extra, k, h.Values(k))
			}
		}
		if h.Get(cstp.HdrAddress) != addr4.String() {
			t.Errorf("request %q: address %q", extra, h.Get(cstp.HdrAddress))
		}
	}

	// The data path: a SYN from the IPv6 address to the gateway host's
	// ::1 is reset at once; one from another IPv6 source is dropped.
	tc, code := connectTunnel(t, addr, cookie)
	if tc == nil {
		t.Fatalf("CONNECT: %d", code)
	}
	spoofed := g.Stats().Stack.DropSpoofed
	other := netip.AddrPortFrom(a6.Addr().Next(), 40000)
	if err := tc.writeFrame(cstp.Data, tcpSYN6(other, netip.MustParseAddrPort("[fd00:1::10]:80"))); err != nil {
		t.Fatal(err)
	}
	if err := tc.writeFrame(cstp.Data, tcpSYN6(netip.AddrPortFrom(a6.Addr(), 40001), netip.MustParseAddrPort("[::1]:22"))); err != nil {
		t.Fatal(err)
	}
	for {
		typ, p, err := tc.readFrame(5 * time.Second)
		if err != nil {
			t.Fatalf("no answer to a SYN to [::1]:22: %v", err)
		}
		if typ != cstp.Data || len(p) < 60 || p[0]>>4 != 6 {
			continue // keepalives, IPv4
		}
		if netip.AddrFrom16([16]byte(p[24:40])) != a6.Addr() || p[6] != 6 || p[40+13]&0x04 == 0 {
			t.Fatalf("answer to a SYN to [::1]:22: % x, want a RST to %v", p, a6.Addr())
		}
		if binary.BigEndian.Uint16(p[42:44]) == 40000 {
			t.Fatal("the spoofed SYN was answered")
		}
		break
	}
	if d := g.Stats().Stack.DropSpoofed - spoofed; d != 1 {
		t.Errorf("DropSpoofed grew by %d, want 1", d)
	}
	tc.Close()

	// Another server of the site resumes the sealed cookie (a client
	// failing over) with both addresses.
	_, addr2 := startGateway(t, mod)
	st, h = connectHead(t, addr2, cookie, ask6)
	if st != 200 || h.Get(cstp.HdrAddressIP6) != a6.String() || h.Get(cstp.HdrAddress) != addr4.String() {
		t.Fatalf("resume on another server: %d, %q %q, want %v %v", st, h.Get(cstp.HdrAddressIP6), h.Get(cstp.HdrAddress), a6, addr4)
	}

	// The session's end releases the IPv6 address.
	leased := g.pool6.(*ippool.Pool).Len()
	if err := g.Disconnect(s.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, ok := g.WhoIs(a6.Addr()); return !ok }, "the session's end")
	if n := g.pool6.(*ippool.Pool).Len(); n != leased-1 {
		t.Errorf("IPv6 leases %d after the session's end, want %d", n, leased-1)
	}
}

// TestIPv4OnlyReplyUnchanged: without Pool6, a client asking for IPv6
// gets no IPv6 address, and IPv6 routes go in the plain headers as
// before dual stack.
func TestIPv4OnlyReplyUnchanged(t *testing.T) {
	_, addr := startGateway(t, func(c *Config) {
		c.SplitInclude = append(c.SplitInclude, netip.MustParsePrefix("fd00:1::/48"))
	})
	cookie, _ := signIn(t, addr, "alice", "secret")
	st, h := connectHead(t, addr, cookie, "X-CSTP-Address-Type: IPv6,IPv4\r\nX-CSTP-Full-IPv6-Capability: true\r\n")
	if st != 200 {
		t.Fatalf("CONNECT: %d", st)
	}
	for k := range h {
		if strings.HasSuffix(k, "-Ip6") {
			t.Errorf("IPv4-only gateway sent %s: %q", k, h.Values(k))
		}
	}
	if inc := strings.Join(h.Values(cstp.HdrSplitInclude), ","); !strings.Contains(inc, "fd00:1::/48") {
		t.Errorf("Split-Include %q: want the IPv6 route in the plain header, as before", inc)
	}
}

// TestClientDualStack: tunnel.Client on a dual-stack gateway, over TLS
// and over QUIC, gets an IPv6 address of the pool (Addr6), dials an IPv6
// corporate service through its stack, resolves an AAAA-only name through
// the pushed DNS (the gateway's proxy) and reaches it by name; the IPv6
// routes it was given bound it (an IPv6 address outside them is
// ErrNotRouted). On an IPv4-only gateway the same client has no Addr6 and
// refuses IPv6 destinations.
func TestClientDualStack(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.ServeListener(t, ln, func(c net.Conn) { io.Copy(c, c) })
	port := netip.MustParseAddrPort(ln.Addr().String()).Port()
	svc := netip.AddrPortFrom(netip.MustParseAddr("fd00:1::1"), port) // LoopCorpDialer: [::1]
	_, addr := startGateway(t, func(c *Config) {
		c.Pool6 = testPool6
		c.SplitInclude = append(c.SplitInclude, testenv.LoopCorpNet6)
		c.Pinger = loopCorpPinger{}
	})
	for _, tr := range []TransportMode{TransportTLS, TransportQUIC} {
		c := dialClient(t, addr, func(cc *ClientConfig) { cc.Transport = tr })
		if a6 := c.Addr6(); !testPool6.Contains(a6) || !DefaultPool.Contains(c.Addr()) {
			t.Fatalf("%s: addresses %v and %v", c.Transport(), c.Addr(), a6)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := echoTCP(ctx, c, svc.String(), []byte("over IPv6")); err != nil {
			t.Errorf("%s: TCP to %v: %v", c.Transport(), svc, err)
		}
		ips, err := c.LookupNetIP(ctx, "echo6")
		if err != nil || len(ips) != 1 || ips[0] != svc.Addr() {
			t.Errorf("%s: LookupNetIP(echo6) = %v, %v; want %v", c.Transport(), ips, err, svc.Addr())
		}
		if err := echoTCP(ctx, c, net.JoinHostPort("echo6.corp.example", itoa(port)), []byte("by name")); err != nil {
			t.Errorf("%s: TCP to echo6.corp.example: %v", c.Transport(), err)
		}
		if _, err := c.Ping(ctx, svc.Addr()); err != nil {
			t.Errorf("%s: ping %v: %v", c.Transport(), svc.Addr(), err)
		}
		if _, err := c.DialContext(ctx, "tcp", "[fd00:2::1]:80"); !errors.Is(err, ErrNotRouted) {
			t.Errorf("%s: dial outside the IPv6 routes: %v, want ErrNotRouted", c.Transport(), err)
		}
		cancel()
		c.Close()
	}

	_, addr4 := startGateway(t, nil)
	c := dialClient(t, addr4, nil)
	if c.Addr6().IsValid() {
		t.Fatalf("IPv4-only gateway gave %v", c.Addr6())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.DialContext(ctx, "tcp", svc.String()); err == nil || !strings.Contains(err.Error(), "no IPv6 address") {
		t.Errorf("IPv6 dial on an IPv4-only session: %v", err)
	}
}

// loopCorpPinger pings LoopCorpNet6's addresses on ::1 from the host's own
// sockets (netstack.HostPinger), as LoopCorpDialer dials them.
type loopCorpPinger struct{}

func (loopCorpPinger) Ping(ctx context.Context, dst netip.Addr, id, seq uint16, payload []byte) ([]byte, error) {
	if testenv.LoopCorpNet6.Contains(dst) {
		dst = netip.IPv6Loopback()
	}
	return netstack.HostPinger{}.Ping(ctx, dst, id, seq, payload)
}
