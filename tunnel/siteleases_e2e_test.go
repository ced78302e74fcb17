package tunnel

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/underpass/underpass/internal/core/ippool"
	"github.com/underpass/underpass/internal/daemon/sitestore"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel/site"
)

// leasePool is a small pool for the lease tests: 29 client addresses, so
// three strides of about ten addresses fill (and borrow) quickly.
func leasePool(c *Config) { c.Pool = netip.MustParsePrefix("10.99.0.0/27") }

// leaseOf returns the store's lease of a (ok false: none).
func leaseOf(t *testing.T, st *sitestore.Store, a netip.Addr) (site.Lease, bool) {
	t.Helper()
	ls, err := st.Leases(t.Context())
	if err != nil {
		t.Fatalf("Leases: %v", err)
	}
	for _, l := range ls {
		if l.Addr == a {
			return l, true
		}
	}
	return site.Lease{}, false
}

// TestSiteLeases: with a real etcd, a sign-in's address is leased
// site-wide and the lease is the session's record (who, server, client,
// since); a server that restarts never hands out the address of its
// earlier session that resumed elsewhere; a resume whose address another
// session of the site holds is refused with 503 and counted, and succeeds
// once it is free; a session that ends releases its lease.
func TestSiteLeases(t *testing.T) {
	e := testenv.StartEtcd(t)
	sealers := siteSealers(t, 3)
	a := startStoreServer(t, e, sealers[0], 0, 3, leasePool)
	b := startStoreServer(t, e, sealers[1], 1, 3, leasePool)
	st := siteStore(t, e)
	ctx := t.Context()

	c1 := dial(t, a.addr, "alice", "secret")
	id1 := sessionID(t, a.g, c1.cookie)
	l, ok := leaseOf(t, st, c1.tunAddr)
	if !ok || l.Session != id1 || l.Server != "s1" || l.User != "alice" || l.Client != netip.MustParseAddr("127.0.0.1") || l.Since.IsZero() || l.Until.IsZero() {
		t.Fatalf("lease of %v = %+v (found %v), want session %s on s1 for alice from 127.0.0.1", c1.tunAddr, l, ok, id1)
	}
	if ls, err := b.g.SiteLeases(ctx); err != nil || len(ls) != 1 || ls[0] != l {
		t.Fatalf("SiteLeases on s2 = %+v, %v; want [%+v]", ls, err, l)
	}

	// s1 goes away (its leases stay); the client resumes on s2 with its
	// address and the lease moves there.
	if err := a.g.Close(); err != nil {
		t.Fatal(err)
	}
	if l, ok := leaseOf(t, st, c1.tunAddr); !ok || l.Server != "s1" {
		t.Fatalf("s1 went away and its session's lease is %+v (found %v), want it kept for the resume elsewhere", l, ok)
	}
	c1b, status := connectTunnel(t, b.addr, c1.cookie)
	if c1b == nil || c1b.tunAddr != c1.tunAddr {
		t.Fatalf("resume on s2: status %d, client %+v; want %v", status, c1b, c1.tunAddr)
	}
	if l, _ := leaseOf(t, st, c1.tunAddr); l.Server != "s2" || l.Session != id1 || l.Client != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("after the resume on s2 the lease is %+v", l)
	}
	// s1 restarts with an empty pool: its first address is c1's.
	a2 := startStoreServer(t, e, sealers[0], 0, 3, leasePool)
	c2 := dial(t, a2.addr, "bob", "hunter2")
	if c2.tunAddr == c1.tunAddr {
		t.Fatalf("the restarted s1 handed out %v, held by a live session on s2", c2.tunAddr)
	}

	// Another session of the site takes c2's address (as a server that
	// leased it during a store outage would); c2's resume on s2 is
	// refused, not re-addressed.
	id2 := sessionID(t, a2.g, c2.cookie)
	if err := st.ReleaseLease(ctx, c2.tunAddr, id2, "s1"); err != nil {
		t.Fatal(err)
	}
	intruder := site.Lease{Addr: c2.tunAddr, Session: "intruder", Server: "s9", User: "mallory", Since: l.Since, Until: l.Until}
	if err := st.ClaimLease(ctx, intruder); err != nil {
		t.Fatal(err)
	}
	if c, status := connectTunnel(t, b.addr, c2.cookie); c != nil || status != 503 {
		t.Fatalf("resume of an address held elsewhere in the site: status %d, want 503", status)
	}
	if n := b.g.Stats().SiteStore.LeaseConflicts; n != 1 {
		t.Fatalf("s2 counted %d lease conflicts, want 1", n)
	}
	if err := st.ReleaseLease(ctx, c2.tunAddr, "intruder", "s9"); err != nil {
		t.Fatal(err)
	}
	c2b, status := connectTunnel(t, b.addr, c2.cookie)
	if c2b == nil || c2b.tunAddr != c2.tunAddr {
		t.Fatalf("resume once the address is free: status %d, want %v", status, c2.tunAddr)
	}

	// A session that ends releases its lease (queued, then sent).
	if err := b.g.Disconnect(id1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, ok := leaseOf(t, st, c1.tunAddr); return !ok }, "the ended session's lease to go")
	if _, ok := leaseOf(t, st, c2.tunAddr); !ok {
		t.Fatal("the live session's lease went too")
	}
}

// TestSiteLeasesOutage: with etcd stopped, a sign-in takes an address
// from the local stride and queues its lease; a strict server refuses
// resumes (503) while a lenient one serves them; when etcd returns the
// queued lease is claimed, a conflict with a lease taken meanwhile is
// counted, and the session is kept.
func TestSiteLeasesOutage(t *testing.T) {
	e := testenv.StartEtcd(t)
	sealers := siteSealers(t, 2)
	a := startStoreServer(t, e, sealers[0], 0, 2, leasePool)
	strict := startStoreServer(t, e, sealers[1], 1, 2, func(c *Config) { leasePool(c); c.Site.Strict = true })
	for _, s := range []storeServer{a, strict} {
		waitFor(t, func() bool { return s.g.Stats().SiteStore.Up }, "the store up")
	}
	st := siteStore(t, e)
	ctx := t.Context()

	c0 := dial(t, a.addr, "alice", "secret")
	// Another server's session holds the next address of s1's stride.
	next := c0.tunAddr.Next()
	ghost := site.Lease{Addr: next, Session: "ghost", Server: "s9", User: "carol"}
	l0, _ := leaseOf(t, st, c0.tunAddr)
	ghost.Since, ghost.Until = l0.Since, l0.Until
	if err := st.ClaimLease(ctx, ghost); err != nil {
		t.Fatal(err)
	}

	e.Stop()
	for i, s := range []storeServer{a, strict} {
		waitFor(t, func() bool { return !s.g.Stats().SiteStore.Up }, fmt.Sprintf("server %d to see the store down", i+1))
	}
	c1 := dial(t, a.addr, "bob", "hunter2") // degraded: the local stride decides
	if c1.tunAddr != next {
		t.Fatalf("sign-in during the outage got %v, want %v (the next of s1's stride)", c1.tunAddr, next)
	}
	if q := a.g.Stats().SiteStore.LeasesQueued; q != 1 {
		t.Fatalf("s1 queued %d lease calls, want 1", q)
	}
	if c, status := connectTunnel(t, strict.addr, c0.cookie); c != nil || status != 503 {
		t.Fatalf("strict server resumed during the outage: status %d, want 503", status)
	}

	e.Start()
	waitFor(t, func() bool {
		st := a.g.Stats().SiteStore
		return st.Up && st.LeasesQueued == 0
	}, "s1 to replay its lease queue")
	if n := a.g.Stats().SiteStore.LeaseConflicts; n != 1 {
		t.Fatalf("s1 counted %d lease conflicts, want 1 (its outage sign-in vs the ghost)", n)
	}
	if err := c1.ping(); err != nil {
		t.Fatalf("the conflicting session was dropped: %v", err)
	}
	if l, _ := leaseOf(t, st, next); l.Session != "ghost" {
		t.Fatalf("the store's lease of %v is %+v, want the ghost's (taken first)", next, l)
	}
	waitFor(t, func() bool { return strict.g.Stats().SiteStore.Up }, "the strict server to see the store")
	if c, status := connectTunnel(t, strict.addr, c0.cookie); c == nil || c.tunAddr != c0.tunAddr {
		t.Fatalf("strict server with the store back: status %d", status)
	}
}

// TestSiteLeasesRestart: a server restarting with an empty pool lists the
// site's leases first, so it skips at once every address of its stride
// that its earlier sessions (resumed on another server) still hold, even
// more of them than one sign-in tries (siteAllocTries).
func TestSiteLeasesRestart(t *testing.T) {
	e := testenv.StartEtcd(t)
	sealers := siteSealers(t, 2)
	pool := func(c *Config) { c.Pool = netip.MustParsePrefix("10.96.0.0/26") } // 61 client addresses: strides of 30 and 31
	a := startStoreServer(t, e, sealers[0], 0, 2, pool)
	b := startStoreServer(t, e, sealers[1], 1, 2, pool)
	const n = siteAllocTries + 4
	var clients []*testClient
	for range n {
		clients = append(clients, dial(t, a.addr, "alice", "secret"))
	}
	if err := a.g.Close(); err != nil {
		t.Fatal(err)
	}
	held := map[netip.Addr]bool{}
	for _, c := range clients {
		moved, status := connectTunnel(t, b.addr, c.cookie)
		if moved == nil || moved.tunAddr != c.tunAddr {
			t.Fatalf("resume on s2: status %d", status)
		}
		held[c.tunAddr] = true
	}
	a2 := startStoreServer(t, e, sealers[0], 0, 2, pool)
	waitFor(t, func() bool { return a2.g.Stats().SiteStore.Up }, "the restarted s1 to reach the store")
	c := dial(t, a2.addr, "bob", "hunter2")
	if held[c.tunAddr] {
		t.Fatalf("the restarted s1 handed out %v, held by a session on s2", c.tunAddr)
	}
	p := a2.g.pool.(*ippool.Pool)
	if _, own := p.Strides(); p.StrideOf(c.tunAddr) != own {
		t.Fatalf("the restarted s1 handed out %v, outside its own stride", c.tunAddr)
	}
}

// TestSiteLeasesGoingAway: a session that ends because its server goes
// away (Close, Shutdown) keeps its lease, so its client resumes elsewhere
// with it; one ended for good (logoff, operator, grace) releases it.
// (Through Close itself the difference does not show: Close stops the
// site loop before it ends the sessions.)
func TestSiteLeasesGoingAway(t *testing.T) {
	e := testenv.StartEtcd(t)
	a := startStoreServer(t, e, siteSealers(t, 1)[0], 0, 1, leasePool)
	st := siteStore(t, e)
	for _, tc := range []struct {
		r    EndReason
		kept bool
	}{{EndGoingAway, true}, {EndGraceExpired, false}} {
		c := dial(t, a.addr, "alice", "secret")
		s := a.g.sessions.get(sessionID(t, a.g, c.cookie))
		a.g.endSession(s, tc.r)
		waitFor(t, func() bool { return a.g.Stats().SiteStore.LeasesQueued == 0 }, "the lease queue to drain")
		if _, ok := leaseOf(t, st, c.tunAddr); ok != tc.kept {
			t.Errorf("%v: lease of %v kept %v, want %v", tc.r, c.tunAddr, ok, tc.kept)
		}
	}
}
