package testenv

import (
	"net"
	"net/netip"
	"testing"
)

// TestSiteTopology: SiteTopology's own routing check passes (it fails the
// test otherwise), a server sees the balancer's connections come from
// SiteLBAddr (what the servers trust PROXY headers from) unless DialFrom
// picks SiteUntrustedAddr, lb sees each client address as itself, and
// the servers reach corp.
func TestSiteTopology(t *testing.T) {
	RequireTool(t, "curl")
	st := SiteTopology(t, 3)
	if len(st.GWs) != 3 {
		t.Fatalf("%d gateway namespaces, want 3", len(st.GWs))
	}
	// peer accepts one connection on addr in ns and returns its source.
	peer := func(ns *Netns, addr netip.Addr, dial func(string) (net.Conn, error)) netip.Addr {
		t.Helper()
		l, err := ns.Listen("tcp", net.JoinHostPort(addr.String(), "0"))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		c, err := dial(l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		a, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		return netip.MustParseAddrPort(a.RemoteAddr().String()).Addr()
	}
	for n := 1; n <= 3; n++ {
		if got := peer(st.GWs[n-1], SiteServerAddr(n), func(a string) (net.Conn, error) { return st.LB.Dial(testCtx(t), "tcp", a) }); got != SiteLBAddr {
			t.Errorf("server %d sees lb as %v, want %v", n, got, SiteLBAddr)
		}
		if got := peer(st.GWs[n-1], SiteServerAddr(n), func(a string) (net.Conn, error) {
			return DialFrom(testCtx(t), st.LB, SiteUntrustedAddr, "tcp", a)
		}); got != SiteUntrustedAddr {
			t.Errorf("server %d sees the untrusted peer as %v, want %v", n, got, SiteUntrustedAddr)
		}
		if got := peer(st.Corp, CorpAddr, func(a string) (net.Conn, error) { return st.GWs[n-1].Dial(testCtx(t), "tcp", a) }); got != SiteServerCorpAddr(n) {
			t.Errorf("corp sees server %d as %v, want %v", n, got, SiteServerCorpAddr(n))
		}
	}
	base := st.ServeHTTP(t, 0)
	for n := 1; n <= 3; n++ {
		if who, err := Curl(testCtx(t), st.GWs[n-1], base+"/whoami"); err != nil || who != SiteServerCorpAddr(n).String() {
			t.Errorf("server %d: /whoami = %q, %v", n, who, err)
		}
	}
	for _, src := range append([]netip.Addr{ClientAddr}, SiteClientAddrs...) {
		if got := peer(st.LB, SiteFrontAddr, func(a string) (net.Conn, error) { return DialFrom(testCtx(t), st.Client, src, "tcp", a) }); got != src {
			t.Errorf("lb sees client %v as %v", src, got)
		}
	}
}
