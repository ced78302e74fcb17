package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// The site topology's addresses (RFC 2544 test range only): clients reach
// the balancer on its public address; the balancer and the servers share
// one site network (a bridge in lb); the servers and corp share another
// (a bridge in corp).
//
//	[client] 198.18.0.1/24 (+ SiteClientAddrs) ⇄ 198.18.0.2/24 [lb]
//	[lb] br 198.18.1.1/24 ⇄ 198.18.1.1N/24 [gwN]
//	[gwN] 198.19.0.1N/24 ⇄ br 198.19.0.2/24 [corp]
var (
	// SiteFrontAddr is the balancer's public address, the site's name: the
	// only address the clients reach (the standard topology's GWAddr, so
	// certificates made for it serve here too).
	SiteFrontAddr = GWAddr
	// SiteLBAddr is the balancer's address on the site network: the source
	// of every connection it makes to a server, so the one address the
	// servers trust PROXY headers from.
	SiteLBAddr = netip.MustParseAddr("198.18.1.1")
	// SiteUntrustedAddr is a second address of lb on the site network: a
	// peer of the servers that is not the balancer (see DialFrom).
	SiteUntrustedAddr = netip.MustParseAddr("198.18.1.2")
	// SiteClientAddrs are further client addresses besides ClientAddr, for
	// clients that must look like different hosts to the balancer.
	SiteClientAddrs = []netip.Addr{netip.MustParseAddr("198.18.0.3"), netip.MustParseAddr("198.18.0.4"), netip.MustParseAddr("198.18.0.5")}
)

// The prefixes of the site network (lb and the servers) and of the
// client-facing link (the clients and lb).
var (
	siteNet  = netip.MustParsePrefix("198.18.1.0/24")
	clientLB = netip.MustParsePrefix("198.18.0.0/24")
)

// SiteServerAddr is server n's (1-based) address on the site network, where
// it listens for the balancer.
func SiteServerAddr(n int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + n)}) }

// SiteServerCorpAddr is server n's (1-based) corp-side address, the source
// of the flows it re-originates.
func SiteServerCorpAddr(n int) netip.Addr { return netip.AddrFrom4([4]byte{198, 19, 0, byte(10 + n)}) }

// SiteTopo is a site of several gateway servers behind one balancer:
// namespaces client, lb, gw1..gwN and corp. The client reaches only lb; lb
// reaches the servers; the servers reach corp. No namespace forwards, so a
// client's only way to corp is a balancer connection to a server's tunnel.
type SiteTopo struct {
	Client, LB, Corp *Netns
	GWs              []*Netns // GWs[n-1] is server n

	ClientIf string // client's veth (to lb)
}

// SiteTopology builds the site topology with servers gateway namespaces,
// checks its routing (the client reaches lb and nothing else; lb reaches
// every server; every server reaches corp), and removes everything in
// t.Cleanup.
func SiteTopology(t testing.TB, servers int) *SiteTopo {
	t.Helper()
	RequireRoot(t)
	RequireTool(t, "ip", "iptables")
	if servers < 1 || servers > 200 { // 198.18.1.(10+n) must stay a host address
		t.Fatalf("testenv: SiteTopology: %d servers, want 1..200", servers)
	}
	st := &SiteTopo{Client: NewNetns(t, "client"), LB: NewNetns(t, "lb"), Corp: NewNetns(t, "corp")}
	var lbIf string
	st.ClientIf, lbIf = Link(t, st.Client, st.LB, netip.PrefixFrom(ClientAddr, clientLB.Bits()), netip.PrefixFrom(SiteFrontAddr, clientLB.Bits()))
	for _, a := range SiteClientAddrs {
		st.Client.Run(t, "ip", "addr", "add", netip.PrefixFrom(a, clientLB.Bits()).String(), "dev", st.ClientIf)
	}
	// One bridge on each side, so lb has a single address towards every
	// server and corp a single one towards them.
	for _, b := range []struct {
		ns   *Netns
		addr []netip.Prefix
	}{
		{st.LB, []netip.Prefix{netip.PrefixFrom(SiteLBAddr, siteNet.Bits()), netip.PrefixFrom(SiteUntrustedAddr, siteNet.Bits())}},
		{st.Corp, []netip.Prefix{netip.PrefixFrom(CorpAddr, CorpNet.Bits())}},
	} {
		b.ns.Run(t, "ip", "link", "add", "br0", "type", "bridge")
		for _, a := range b.addr {
			b.ns.Run(t, "ip", "addr", "add", a.String(), "dev", "br0")
		}
		b.ns.Run(t, "ip", "link", "set", "br0", "up")
	}
	for i := range servers {
		n := i + 1
		gw := NewNetns(t, fmt.Sprintf("gw%d", n))
		st.GWs = append(st.GWs, gw)
		_, lbPort := Link(t, gw, st.LB, netip.PrefixFrom(SiteServerAddr(n), siteNet.Bits()), netip.Prefix{})
		st.LB.Run(t, "ip", "link", "set", lbPort, "master", "br0")
		_, corpPort := Link(t, gw, st.Corp, netip.PrefixFrom(SiteServerCorpAddr(n), CorpNet.Bits()), netip.Prefix{})
		st.Corp.Run(t, "ip", "link", "set", corpPort, "master", "br0")
	}
	for _, ns := range append([]*Netns{st.Client, st.LB, st.Corp}, st.GWs...) {
		ns.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=0")
	}
	// Isolation even when a test turns forwarding on in lb.
	st.LB.Run(t, "iptables", "-w", "-A", "FORWARD", "-i", lbIf, "-j", "DROP")
	st.LB.Run(t, "iptables", "-w", "-A", "FORWARD", "-o", lbIf, "-j", "DROP")
	st.check(t)
	return st
}

// check proves the routing: the client reaches lb and neither a server nor
// corp; lb reaches every server and not corp; every server reaches corp.
func (st *SiteTopo) check(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // local veths and bridges: ms
	defer cancel()
	reach := func(from *Netns, fromName string, to *Netns, addr netip.Addr) {
		t.Helper()
		l, err := to.Listen("tcp", net.JoinHostPort(addr.String(), "0"))
		if err != nil {
			t.Fatalf("testenv: listen on %v: %v", addr, err)
		}
		defer l.Close()
		c, err := from.Dial(ctx, "tcp", l.Addr().String())
		if err != nil {
			t.Fatalf("testenv: site topology broken: %s cannot reach %v: %v", fromName, addr, err)
		}
		c.Close()
	}
	unreachable := func(from *Netns, fromName string, addr netip.Addr) {
		t.Helper()
		c, err := from.Dial(ctx, "tcp", net.JoinHostPort(addr.String(), "9"))
		if err == nil {
			c.Close()
		}
		if !errors.Is(err, errNoRoute) {
			t.Fatalf("testenv: ISOLATION BROKEN: %s dial to %v: %v (want network unreachable)", fromName, addr, err)
		}
	}
	reach(st.Client, "client", st.LB, SiteFrontAddr)
	unreachable(st.Client, "client", CorpAddr)
	unreachable(st.LB, "lb", CorpAddr)
	for i, gw := range st.GWs {
		n := i + 1
		unreachable(st.Client, "client", SiteServerAddr(n))
		reach(st.LB, "lb", gw, SiteServerAddr(n))
		reach(gw, fmt.Sprintf("gw%d", n), st.Corp, CorpAddr)
		unreachable(gw, fmt.Sprintf("gw%d", n), ClientAddr)
	}
}

// ServeHTTP starts the corp HTTP server of Topo.ServeHTTP in corp on
// CorpAddr:port (0 = any free port) and returns its base URL; /whoami
// there names the server a flow came through (SiteServerCorpAddr).
func (st *SiteTopo) ServeHTTP(t testing.TB, port int) string {
	t.Helper()
	return serveCorpHTTP(t, st.Corp, port)
}

// DialFrom connects from inside ns with the local address src (one of the
// namespace's own addresses): how a test speaks as one of several client
// hosts, or as a site peer that is not the balancer.
func DialFrom(ctx context.Context, ns *Netns, src netip.Addr, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
