package tunnel

import (
	"net/netip"
	"testing"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel/site"
)

// leasePool6 makes leasePool's servers dual-stack (a ULA /64, as
// Config.Pool6's documentation suggests).
func leasePool6(c *Config) {
	leasePool(c)
	c.Pool6 = netip.MustParsePrefix("fd7a:5c3e:11::/64")
}

// addr6Of is the IPv6 address a CONNECT response assigned (the
// X-CSTP-Address-IP6 header, address/prefix length).
func addr6Of(t *testing.T, c *testClient) netip.Addr {
	t.Helper()
	p, err := netip.ParsePrefix(c.hdr.Get("X-CSTP-Address-IP6"))
	if err != nil {
		t.Fatalf("X-CSTP-Address-IP6: %v", err)
	}
	return p.Addr()
}

// TestSiteLeasesIPv6: with a real etcd and Pool6, a dual-stack session's
// IPv6 address is leased site-wide next to its IPv4 one, as the same
// session's second lease; a sign-in skips an IPv6 address the site
// leases to another session; a resume on another server keeps the IPv6
// address sealed in its cookie and moves the lease there; a resume whose
// IPv6 address another session of the site holds is refused (503) and
// counted, and succeeds once it is free; a session that ends releases
// both leases.
func TestSiteLeasesIPv6(t *testing.T) {
	e := testenv.StartEtcd(t)
	sealers := siteSealers(t, 2)
	a := startStoreServer(t, e, sealers[0], 0, 2, leasePool6)
	b := startStoreServer(t, e, sealers[1], 1, 2, leasePool6)
	st := siteStore(t, e)
	ctx := t.Context()

	c1 := dial(t, a.addr, "alice", "secret")
	id1, a6 := sessionID(t, a.g, c1.cookie), addr6Of(t, c1)
	l4, ok4 := leaseOf(t, st, c1.tunAddr)
	l6, ok6 := leaseOf(t, st, a6)
	if !ok4 || !ok6 || l6.Session != id1 || l6.Server != "s1" || l6.User != "alice" || l6.Until != l4.Until {
		t.Fatalf("leases of %v and %v = %+v (found %v), %+v (found %v); want both session %s's on s1", c1.tunAddr, a6, l4, ok4, l6, ok6, id1)
	}

	// Another server's session holds the next IPv6 address of s1's
	// stride: the next sign-in on s1 skips it.
	ghost := site.Lease{Addr: a6.Next(), Session: "ghost", Server: "s9", User: "carol", Since: l6.Since, Until: l6.Until}
	if err := st.ClaimLease(ctx, ghost); err != nil {
		t.Fatal(err)
	}
	c2 := dial(t, a.addr, "bob", "hunter2")
	id2, b6 := sessionID(t, a.g, c2.cookie), addr6Of(t, c2)
	if b6 == ghost.Addr {
		t.Fatalf("s1 handed out %v, leased to another session of the site", b6)
	}
	if l, ok := leaseOf(t, st, b6); !ok || l.Session != id2 {
		t.Fatalf("lease of %v = %+v (found %v), want session %s's", b6, l, ok, id2)
	}
	if l, _ := leaseOf(t, st, ghost.Addr); l.Session != "ghost" {
		t.Fatalf("the other session's lease became %+v", l)
	}

	// s1 goes away (its leases stay); alice resumes on s2 with both
	// addresses and both leases move there.
	if err := a.g.Close(); err != nil {
		t.Fatal(err)
	}
	if l, ok := leaseOf(t, st, a6); !ok || l.Server != "s1" {
		t.Fatalf("s1 went away and its session's IPv6 lease is %+v (found %v), want it kept for the resume elsewhere", l, ok)
	}
	c1b, status := connectTunnel(t, b.addr, c1.cookie)
	if c1b == nil || c1b.tunAddr != c1.tunAddr || addr6Of(t, c1b) != a6 {
		t.Fatalf("resume on s2: status %d, client %+v; want %v and %v", status, c1b, c1.tunAddr, a6)
	}
	for _, a := range []netip.Addr{c1.tunAddr, a6} {
		if l, _ := leaseOf(t, st, a); l.Server != "s2" || l.Session != id1 {
			t.Fatalf("after the resume on s2 the lease of %v is %+v", a, l)
		}
	}

	// Another session of the site takes bob's IPv6 address (as a server
	// that leased it during a store outage would): his resume on s2 is
	// refused, not re-addressed.
	if err := st.ReleaseLease(ctx, b6, id2, "s1"); err != nil {
		t.Fatal(err)
	}
	intruder := site.Lease{Addr: b6, Session: "intruder", Server: "s9", User: "mallory", Since: l6.Since, Until: l6.Until}
	if err := st.ClaimLease(ctx, intruder); err != nil {
		t.Fatal(err)
	}
	if c, status := connectTunnel(t, b.addr, c2.cookie); c != nil || status != 503 {
		t.Fatalf("resume of an IPv6 address held elsewhere in the site: status %d, want 503", status)
	}
	if n := b.g.Stats().SiteStore.LeaseConflicts; n != 1 {
		t.Fatalf("s2 counted %d lease conflicts, want 1", n)
	}
	if err := st.ReleaseLease(ctx, b6, "intruder", "s9"); err != nil {
		t.Fatal(err)
	}
	c2b, status := connectTunnel(t, b.addr, c2.cookie)
	if c2b == nil || c2b.tunAddr != c2.tunAddr || addr6Of(t, c2b) != b6 {
		t.Fatalf("resume once the address is free: status %d, client %+v; want %v and %v", status, c2b, c2.tunAddr, b6)
	}

	// A session that ends releases both its leases (queued, then sent).
	if err := b.g.Disconnect(id1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		_, ok4 := leaseOf(t, st, c1.tunAddr)
		_, ok6 := leaseOf(t, st, a6)
		return !ok4 && !ok6
	}, "the ended session's leases to go")
	if _, ok := leaseOf(t, st, b6); !ok {
		t.Fatal("the live session's IPv6 lease went too")
	}
}
