package tunnel_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// TestSiteQuorum ("Quorum", issue 12): the three-server site of TestSite
// on a three-member etcd. With one member stopped nothing changes: the
// store stays up on every server, none fails a call, and a disconnect on
// one server ends openconnect's session on another. With a second one
// stopped there is no quorum: every server reports the store down
// (degraded mode) and stays in HAProxy, openconnect's session carries on,
// a sign-in through HAProxy works, and a disconnect applies on its own
// server only; once a member returns, it reaches the server running the
// session, which ends it.
func TestSiteQuorum(t *testing.T) {
	t.Parallel()
	s := startSite(t, siteDrainDelay, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute) // the whole scenario, generously
	defer cancel()
	others := func(b *siteServer) (a *siteServer) { // a server other than b
		for _, srv := range s.servers[1:] {
			if srv != b {
				return srv
			}
		}
		return nil
	}

	// One member down (whichever it is, the leader or not).
	failed := map[*siteServer]uint64{}
	for _, srv := range s.servers[1:] {
		failed[srv] = tunnel.SiteFailuresForTest(srv.gw)
	}
	s.etcd[0].Stop()
	oc, addr, b := s.openconnect(ctx, t, testenv.OCOptions{User: "alice", Password: "secret"})
	info, _ := b.gw.WhoIs(addr)
	a := others(b)
	if err := a.gw.Disconnect(info.ID); err != nil {
		t.Fatalf("Disconnect on server %d with one etcd member down: %v", a.n, err)
	}
	select {
	case <-oc.Done():
	case <-time.After(15 * time.Second): // etcd on loopback carries a revocation in milliseconds
		t.Fatalf("openconnect still runs after the disconnect on server %d:\n%s", a.n, oc.Proc.Tail(20))
	}
	for _, srv := range s.servers[1:] {
		waitFor(t, 10*time.Second, fmt.Sprintf("server %d to list the revocation", srv.n), func() bool {
			return tunnel.IsRevokedForTest(srv.gw, info.ID)
		})
		waitFor(t, 10*time.Second, fmt.Sprintf("server %d to publish its queue", srv.n), func() bool {
			st := srv.gw.Stats().SiteStore
			return st.Up && st.Queued == 0
		})
		if n := tunnel.SiteFailuresForTest(srv.gw); n != failed[srv] || strings.Contains(srv.logs.String(), "site store unavailable") {
			t.Errorf("server %d lost the store with one member of three down: %d publications failed; log:\n%s", srv.n, n-failed[srv], srv.logs.String())
		}
	}

	// Two members down: no quorum, degraded mode.
	live, addr, b := s.openconnect(ctx, t, testenv.OCOptions{User: "alice", Password: "secret"})
	info, _ = b.gw.WhoIs(addr)
	s.etcd[1].Stop()
	for _, srv := range s.servers[1:] {
		// Noticing takes up to a health announcement plus a call timeout.
		waitFor(t, 20*time.Second, fmt.Sprintf("server %d to see the store down without a quorum", srv.n), func() bool {
			return !srv.gw.Stats().SiteStore.Up
		})
	}
	s.waitReady(t) // HAProxy keeps every server
	if err := echoThrough(ctx, s.tp.Client.Dial, s.echo.tcp.String(), 10*time.Second); err != nil {
		t.Fatalf("openconnect's session without a quorum: %v", err)
	}
	if _, err := testenv.Authenticate(t, s.tp.Client, testenv.OCOptions{Server: s.front, ServerCertPin: s.cert.Pin,
		User: "alice", Password: "secret"}); err != nil {
		t.Fatalf("a sign-in through HAProxy without a quorum: %v", err)
	}
	a = others(b)
	failedA := tunnel.SiteFailuresForTest(a.gw)
	if err := a.gw.Disconnect(info.ID); err != nil {
		t.Fatal(err)
	}
	// A's attempt to publish must have failed, not merely be in flight.
	waitFor(t, 10*time.Second, fmt.Sprintf("server %d to fail publishing", a.n), func() bool {
		return tunnel.SiteFailuresForTest(a.gw) > failedA
	})
	if tunnel.IsRevokedForTest(b.gw, info.ID) {
		t.Fatalf("server %d learnt a revocation without a quorum", b.n)
	}
	if err := echoThrough(ctx, s.tp.Client.Dial, s.echo.tcp.String(), 10*time.Second); err != nil {
		t.Fatalf("openconnect's session after a revocation without a quorum: %v", err)
	}

	// A member back: a quorum again, and the queue goes out.
	s.etcd[1].Start()
	for _, srv := range s.servers[1:] {
		waitFor(t, 20*time.Second, fmt.Sprintf("server %d to reach the store again", srv.n), func() bool {
			return srv.gw.Stats().SiteStore.Up
		})
	}
	select {
	case <-live.Done():
	case <-time.After(15 * time.Second): // the queue is replayed within a second (siteRetryEvery)
		t.Fatalf("openconnect's session outlived the revocation queued on server %d:\n%s", a.n, live.Proc.Tail(20))
	}
}
