package tunnel_test

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// testSiteOutage ("Store outage", issue 12: degraded, never down; a
// TestSite case): etcd (one member) stops. Every server reports the store down (Stats,
// underpass_site_store_up 0 on /metrics) and stays ready in HAProxy;
// openconnect's session carries on, and when its server dies it resumes
// on another one with its address. A new client signs in through HAProxy;
// a disconnect of its session on another server and a ban earned through
// HAProxy apply on their own server only and wait in its queue. When etcd
// is back every queue is replayed: the revoked session ends where it
// lives and its cookie is refused everywhere, the ban reaches every
// server (the dead one too, restarted), and the session resumed during
// the outage is kept, with no lease conflict counted.
func testSiteOutage(ctx context.Context, t *testing.T, s *site) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	s.waitReady(t)
	oc, addr, b := s.openconnect(ctx, t, testenv.OCOptions{User: "alice", Password: "secret"})
	defer oc.Close()

	s.etcd[0].Stop()
	etcdBack, bBack := false, true
	defer func() { // for the cases after this one
		if !etcdBack {
			s.etcd[0].Start()
		}
		if !bBack {
			s.start(t, b.n)
		}
	}()
	for _, srv := range s.servers[1:] {
		// Noticing takes up to a health announcement plus a call timeout.
		waitFor(t, 20*time.Second, fmt.Sprintf("server %d to see the store down", srv.n), func() bool {
			return !srv.gw.Stats().SiteStore.Up
		})
		if v, err := s.metric(ctx, srv.n, "underpass_site_store_up"); err != nil || v != "0" {
			t.Fatalf("server %d: underpass_site_store_up %q, %v; want 0", srv.n, v, err)
		}
		if err := srv.gw.Ready(); err != nil {
			t.Fatalf("server %d not ready with the store down: %v", srv.n, err)
		}
	}
	s.waitReady(t) // HAProxy keeps every server
	if err := echoThrough(ctx, s.tp.Client.Dial, s.echo.tcp.String(), 10*time.Second); err != nil {
		t.Fatalf("openconnect's session with the store down: %v", err)
	}

	// Failover with the store down: the resume claims the sealed address
	// from the local pool alone.
	signIns := s.signIns.Load()
	t.Logf("openconnect has %v on server %d; killing it with the store down", addr, b.n)
	b.kill()
	bBack = false
	now := s.failedOver(ctx, t, oc, addr, b)
	if n := s.signIns.Load() - signIns; n != 0 {
		t.Fatalf("%d sign-ins during the failover, want none", n)
	}
	if q := now.gw.Stats().SiteStore.LeasesQueued; q == 0 {
		t.Errorf("server %d queued no lease claim for the resumed session", now.n)
	}
	var up []*siteServer // the two servers left
	for _, srv := range s.servers[1:] {
		if srv != b {
			up = append(up, srv)
		}
	}

	// A new sign-in through HAProxy, then a disconnect of its session on
	// the server it does not live on.
	cookie, id := s.signIn(t, s.front)
	lives := func(srv *siteServer) bool {
		return slices.ContainsFunc(srv.gw.Sessions(), func(si tunnel.SessionInfo) bool { return si.ID == id })
	}
	home, revoker := up[0], up[1]
	if !lives(home) {
		home, revoker = revoker, home
	}
	if !lives(home) {
		t.Fatalf("the new session %s lives on no server", id)
	}
	failed := map[*siteServer]uint64{}
	for _, srv := range up {
		failed[srv] = tunnel.SiteFailuresForTest(srv.gw)
	}
	t.Logf("session %s signed in on server %d; server %d revokes it", id, home.n, revoker.n)
	if err := revoker.gw.Disconnect(id); err != nil {
		t.Fatalf("Disconnect on server %d with the store down: %v", revoker.n, err)
	}
	// Three wrong passwords from another client host through HAProxy.
	bad := testenv.SiteClientAddrs[2]
	for i := range 3 {
		_, err := tunnel.Dial(ctx, tunnel.ClientConfig{Server: s.front, Transport: tunnel.TransportTLS,
			Username: "alice", Password: "wrong", PinSHA256: s.cert.Pin, Dialer: srcDialer{s.tp.Client, bad}})
		if err == nil {
			t.Fatalf("attempt %d: wrong password accepted", i)
		}
	}
	var banner *siteServer
	for _, srv := range up {
		if srv.bans.Banned(bad) {
			banner = srv
		}
	}
	if banner == nil {
		t.Fatalf("%v is banned nowhere after three wrong passwords", bad)
	}
	// What waits: the revocation on revoker, the ban on banner. Each
	// server's attempt to publish must have failed (not merely be in
	// flight) before etcd returns, so what arrives later is the replay.
	want := map[*siteServer]int{revoker: 1}
	want[banner]++
	for srv, n := range want {
		if q := srv.gw.Stats().SiteStore.Queued; q != n {
			t.Errorf("server %d queued %d records during the outage, want %d", srv.n, q, n)
		}
		waitFor(t, 10*time.Second, fmt.Sprintf("server %d to fail publishing", srv.n), func() bool {
			return tunnel.SiteFailuresForTest(srv.gw) > failed[srv]
		})
	}
	for _, srv := range up {
		if srv != banner && srv.bans.Banned(bad) {
			t.Fatalf("server %d learnt server %d's ban with the store down", srv.n, banner.n)
		}
	}
	if !lives(home) {
		t.Fatalf("server %d learnt server %d's revocation with the store down", home.n, revoker.n)
	}

	// etcd back: the queues are replayed, and the state is reconciled.
	s.etcd[0].Start()
	etcdBack = true
	for _, srv := range up {
		waitFor(t, 20*time.Second, fmt.Sprintf("server %d to publish its queue", srv.n), func() bool {
			st := srv.gw.Stats().SiteStore
			return st.Up && st.Queued == 0 && st.LeasesQueued == 0
		})
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("server %d to end the revoked session", home.n), func() bool { return !lives(home) })
	s.start(t, b.n) // the dead server comes back and lists the site's records
	bBack = true
	for _, srv := range s.servers[1:] {
		waitFor(t, 10*time.Second, fmt.Sprintf("server %d to ban %v", srv.n, bad), func() bool { return srv.bans.Banned(bad) })
		waitFor(t, 10*time.Second, fmt.Sprintf("server %d to list the revocation", srv.n), func() bool {
			return tunnel.IsRevokedForTest(srv.gw, id)
		})
		if st, err := resumeStatus(ctx, s.direct(srv.n, netip.AddrPortFrom(testenv.ClientAddr, 40002)), webvpnCookie(cookie)); err != nil || st == http.StatusOK {
			t.Fatalf("server %d: the cookie revoked during the outage: status %d, %v", srv.n, st, err)
		}
		if n := srv.gw.Stats().SiteStore.LeaseConflicts; n != 0 {
			t.Errorf("server %d counted %d lease conflicts: the failover during the outage claimed its own session's address", srv.n, n)
		}
		if v, err := s.metric(ctx, srv.n, "underpass_site_store_up"); err != nil || v != "1" {
			t.Errorf("server %d: underpass_site_store_up %q, %v; want 1", srv.n, v, err)
		}
	}
	// The session resumed during the outage is kept.
	select {
	case <-oc.Done():
		t.Fatalf("openconnect's session ended after the reconciliation:\n%s", oc.Proc.Tail(20))
	default:
	}
	if h := s.holder(addr); h != now {
		t.Fatalf("openconnect's session left server %d after the reconciliation", now.n)
	}
	if err := echoThrough(ctx, s.tp.Client.Dial, s.echo.tcp.String(), 10*time.Second); err != nil {
		t.Fatalf("openconnect's session after the reconciliation: %v", err)
	}
	if !banner.gw.LiftBan(bad) {
		t.Fatal("LiftBan: no active ban")
	}
	for _, srv := range s.servers[1:] {
		waitFor(t, 10*time.Second, fmt.Sprintf("server %d to lift the ban on %v", srv.n, bad), func() bool { return !srv.bans.Banned(bad) })
	}
}
