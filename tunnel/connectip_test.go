package tunnel

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"
	"gvisor.dev/gvisor/pkg/tcpip"
	gvchecksum "gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/underpass/underpass/internal/core/masque"
)

// TestConnectIPGoClientInterop: connect-ip-go's own client (its public
// API, none of ours) gets an address, routes and DNS configuration from the
// gateway and exchanges UDP packets with a corporate host through it.
// dialConnectIPGo opens a CONNECT-IP session as alice with connect-ip-go's
// own client; it closes at cleanup.
func dialConnectIPGo(ctx context.Context, t *testing.T, addr string) *connectip.Conn {
	t.Helper()
	tmpl := uritemplate.MustNew("https://" + addr + ConnectIPPath)
	req, err := connectip.NewRequest(ctx, tmpl)
	if err != nil {
		t.Fatal(err)
	}
	req.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("alice:secret")))
	tr := &connectip.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{http3.NextProtoH3}},
		QUICConfig:      &quic.Config{EnableDatagrams: true, InitialPacketSize: 1350},
	}
	conn, rsp, err := tr.Dial(req)
	if err != nil {
		t.Fatalf("Dial: %v (response %v)", err, rsp)
	}
	t.Cleanup(func() { conn.Close() })
	if rsp.StatusCode != 200 {
		t.Fatalf("status %d", rsp.StatusCode)
	}
	return conn
}

// TestNoDNSIsSaid: a gateway that pushes no DNS says so with an empty DNS
// configuration, so a client does not wait for one (issue 14: tunnel.Client
// waited 500 ms on every QUIC connect). Before, ReceiveDNSConfiguration
// blocked until its context ended.
func TestNoDNSIsSaid(t *testing.T) {
	_, addr := startGateway(t, func(c *Config) { c.DNS, c.DisableDNSProxy = nil, true })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn := dialConnectIPGo(ctx, t, addr)
	if _, err := conn.ReceiveAddressAssignment(ctx); err != nil {
		t.Fatal(err)
	}
	dcs, err := conn.ReceiveDNSConfiguration(ctx)
	if err != nil || len(dcs) != 0 {
		t.Fatalf("DNS configuration %+v, %v; want an empty one", dcs, err)
	}
}

func TestConnectIPGoClientInterop(t *testing.T) {
	uecho := udpEcho(t)
	_, addr := startGateway(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	conn := dialConnectIPGo(ctx, t, addr)
	as, err := conn.ReceiveAddressAssignment(ctx)
	if err != nil || len(as) != 1 {
		t.Fatalf("address assignment %v, %v", as, err)
	}
	local := as[0].IPPrefix.Addr()
	if !DefaultPool.Contains(local) || as[0].IPPrefix.Bits() != 32 {
		t.Errorf("assigned %v", as[0].IPPrefix)
	}
	routes, err := conn.Routes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var prefixes []netip.Prefix
	for _, r := range routes {
		prefixes = append(prefixes, r.Prefixes()...)
	}
	// include 198.18/16 minus exclude 198.18.200/24, plus the gateway
	// and DNS addresses.
	for _, want := range []string{"198.18.0.0/17", "198.18.201.0/24", "169.254.0.1/32", "10.0.0.53/32"} {
		if !slices.Contains(prefixes, netip.MustParsePrefix(want)) {
			t.Errorf("routes %v lack %s", prefixes, want)
		}
	}
	for _, p := range prefixes {
		if p.Contains(netip.MustParseAddr("198.18.200.1")) {
			t.Errorf("excluded network routed: %v", p)
		}
	}
	dcs, err := conn.ReceiveDNSConfiguration(ctx)
	if err != nil || len(dcs) != 1 || len(dcs[0].Nameservers) != 1 ||
		!slices.Equal(dcs[0].Nameservers[0].IPv4Addresses, []netip.Addr{netip.MustParseAddr("10.0.0.53")}) ||
		!slices.Equal(dcs[0].SearchDomains, []string{"corp.example", "example.net"}) {
		t.Errorf("DNS configuration %+v, %v", dcs, err)
	}

	// A UDP datagram to the corporate echo server comes back.
	dst := netip.AddrPortFrom(netip.MustParseAddr("198.18.1.1"), uecho.Port())
	src := netip.AddrPortFrom(local, 40000)
	if _, err := conn.WritePacket(udpPacket(src, dst, []byte("interop"))); err != nil {
		t.Fatal(err)
	}
	awaitPacket(t, conn, "the echo", func(p []byte) bool {
		ip := header.IPv4(p)
		if !ip.IsValid(len(p)) || ip.TransportProtocol() != header.UDPProtocolNumber {
			return false
		}
		u := header.UDP(ip.Payload())
		return string(u.Payload()) == "interop" && u.DestinationPort() == 40000
	})
}

// awaitPacket reads packets from conn until match accepts one, and fails
// t when none comes within 10 s.
func awaitPacket(t *testing.T, conn *connectip.Conn, what string, match func([]byte) bool) {
	t.Helper()
	buf := make([]byte, 2048)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			n, err := conn.ReadPacket(buf)
			if err != nil {
				t.Errorf("ReadPacket: %v", err)
				return
			}
			if match(buf[:n]) {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s through CONNECT-IP", what)
	}
}

// udpPacket builds an IPv4/UDP packet.
func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.UDPMinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(src.Addr().As4()), DstAddr: tcpip.AddrFrom4(dst.Addr().As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(b[header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(header.UDPMinimumSize + len(payload))})
	copy(u.Payload(), payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(u)))
	xsum = gvchecksum.Checksum(payload, xsum)
	u.SetChecksum(^u.CalculateChecksum(xsum))
	return b
}

// TestConnectIPDualStack: over CONNECT-IP a dual-stack session is assigned
// its IPv6 address as a /128 next to the IPv4 /32, the IPv6 routes follow
// the IPv4 ones, and the IPv6 resolver travels in the nameserver's IPv6
// list (before, any IPv6 DNS address failed the whole configuration); an
// IPv6 SYN from the assigned address into an IPv6 route is answered (the
// host's dial fails here: a RST or an ICMPv6 unreachable comes back).
// The same session is still usable by an IPv4-only client: the IPv4
// address and routes are as before.
func TestConnectIPDualStack(t *testing.T) {
	_, addr := startGateway(t, func(c *Config) {
		c.Pool6 = testPool6
		c.SplitInclude = append(c.SplitInclude, netip.MustParsePrefix("fd00:1::/48"))
		c.DNS = append(c.DNS, netip.MustParseAddr("fd00:1::53"))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn := dialConnectIPGo(ctx, t, addr)
	as, err := conn.ReceiveAddressAssignment(ctx)
	if err != nil || len(as) != 2 {
		t.Fatalf("address assignment %v, %v; want an IPv4 and an IPv6 address", as, err)
	}
	a4, a6 := as[0].IPPrefix, as[1].IPPrefix
	if !DefaultPool.Contains(a4.Addr()) || a4.Bits() != 32 || !testPool6.Contains(a6.Addr()) || a6.Bits() != 128 {
		t.Fatalf("assigned %v and %v", a4, a6)
	}
	routes, err := conn.Routes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var prefixes []netip.Prefix
	seen6 := false
	for _, r := range routes {
		if r.StartIP.Is4() && seen6 {
			t.Errorf("IPv4 route %v after an IPv6 one", r)
		}
		seen6 = seen6 || r.StartIP.Is6()
		prefixes = append(prefixes, r.Prefixes()...)
	}
	for _, want := range []string{"198.18.0.0/17", "169.254.0.1/32", "fd00:1::/48"} {
		if !slices.Contains(prefixes, netip.MustParsePrefix(want)) {
			t.Errorf("routes %v lack %s", prefixes, want)
		}
	}
	dcs, err := conn.ReceiveDNSConfiguration(ctx)
	if err != nil || len(dcs) != 1 || len(dcs[0].Nameservers) != 1 ||
		!slices.Equal(dcs[0].Nameservers[0].IPv4Addresses, []netip.Addr{netip.MustParseAddr("10.0.0.53")}) ||
		!slices.Equal(dcs[0].Nameservers[0].IPv6Addresses, []netip.Addr{netip.MustParseAddr("fd00:1::53")}) {
		t.Fatalf("DNS configuration %+v, %v", dcs, err)
	}

	src := netip.AddrPortFrom(a6.Addr(), 40002)
	if icmp, err := conn.WritePacket(tcpSYN6(src, netip.MustParseAddrPort("[fd00:1::10]:80"))); err != nil || icmp != nil {
		t.Fatalf("WritePacket: %v (ICMP % x)", err, icmp)
	}
	awaitPacket(t, conn, "answer to an IPv6 SYN", func(p []byte) bool {
		return len(p) >= 48 && p[0]>>4 == 6 && netip.AddrFrom16([16]byte(p[24:40])) == a6.Addr() &&
			((p[6] == 6 && p[53]&0x04 != 0) || (p[6] == 58 && p[40] == 1)) // a RST, or ICMPv6 destination unreachable
	})
}

// TestConnectIPRefusals: the gateway's answers to CONNECT-IP requests it
// does not serve, through its own HTTP/3 layer: 404 outside its path
// (nothing reveals the VPN behind Config.SecretPath), 401 with
// WWW-Authenticate and X-Reason without credentials or with wrong ones;
// and a client may retry on the same connection after a refusal.
func TestConnectIPRefusals(t *testing.T) {
	_, addr := startGateway(t, func(c *Config) { c.SecretPath = "/vpn-4f9c" })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	qc, err := quic.DialAddr(ctx, addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{masque.ALPN}},
		&quic.Config{EnableDatagrams: true, InitialPacketSize: 1350})
	if err != nil {
		t.Fatal(err)
	}
	defer qc.CloseWithError(0, "")
	mc, err := masque.NewClientConn(qc, nil)
	if err != nil {
		t.Fatal(err)
	}
	basic := func(u, p string) http.Header {
		return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p))}}
	}
	for _, tc := range []struct {
		name   string
		path   string
		header http.Header
		status int
		field  string // a field the refusal must carry
	}{
		{"without the secret path", ConnectIPPath, basic("alice", "secret"), http.StatusNotFound, ""},
		{"another path", "/vpn-4f9c/.well-known/masque/udp/", basic("alice", "secret"), http.StatusNotFound, ""},
		{"no credentials", "/vpn-4f9c" + ConnectIPPath, nil, http.StatusUnauthorized, "Www-Authenticate"},
		{"wrong password", "/vpn-4f9c" + ConnectIPPath, basic("alice", "nope"), http.StatusUnauthorized, "X-Reason"},
	} {
		_, rsp, err := mc.Dial(ctx, masque.Request{Authority: addr, Path: tc.path, Header: tc.header})
		if err == nil || rsp == nil || rsp.Status != tc.status || (tc.field != "" && rsp.Header.Get(tc.field) == "") {
			t.Fatalf("%s: response %+v, %v; want %d with %s", tc.name, rsp, err, tc.status, tc.field)
		}
	}
	sess, rsp, err := mc.Dial(ctx, masque.Request{Authority: addr, Path: "/vpn-4f9c" + ConnectIPPath, Header: basic("alice", "secret")})
	if err != nil || rsp.Header.Get("Set-Cookie") == "" {
		t.Fatalf("the retry on the same connection: %+v, %v", rsp, err)
	}
	if typ, _, err := sess.ReadCapsule(func(uint64) bool { return true }); err != nil || typ != masque.CapsuleAddressAssign {
		t.Fatalf("first capsule %#x, %v; want ADDRESS_ASSIGN", typ, err)
	}
}
