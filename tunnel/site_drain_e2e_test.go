package tunnel_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// siteDrainDelay is every site server's Config.DrainDelay: several of
// HAProxy's check intervals here (inter 300ms, fall 2), as the default is
// for a production balancer. Only the drain case shuts a server down;
// the others kill servers, which skips the drain.
const siteDrainDelay = 4 * time.Second

// testSiteDrain ("Drain", issue 12; R-O4; a TestSite case): a server of
// the site behind HAProxy is shut down with a drain delay. Its /readyz
// fails first and HAProxy takes it out while its openconnect client is
// still connected to it; a new client then signs in on another server;
// only after the delay is the client told to reconnect, and it lands on
// another server with its address, without signing in again. The server
// then comes back, empty.
func testSiteDrain(ctx context.Context, t *testing.T, s *site) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	up := func(n int) bool {
		st, err := s.hap.ServersUp("site")
		if err != nil {
			t.Fatal(err)
		}
		return st[fmt.Sprint("s", n)]
	}
	s.waitReady(t)
	oc, addr, old := s.openconnect(ctx, t, testenv.OCOptions{User: "alice", Password: "secret"})
	defer oc.Close()
	signIns := s.signIns.Load()

	t.Logf("openconnect has %v on server %d; stopping it with a %v drain delay", addr, old.n, s.drainDelay)
	stopped := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		stopped <- old.gw.Shutdown(sctx)
	}()
	defer func() {
		old.kill()
		s.start(t, old.n)
	}()
	// First the balancer takes the server out, while its client is still
	// connected to it.
	waitFor(t, s.drainDelay, "HAProxy to take the draining server out", func() bool { return !up(old.n) })
	if info, ok := old.gw.WhoIs(addr); !ok || !info.Connected {
		t.Fatalf("the client left server %d before HAProxy took it out (%+v, %v)", old.n, info, ok)
	}
	if n := countOf(oc.ScriptReasons(), "reconnect"); n != 0 {
		t.Fatalf("openconnect reconnected %d times before HAProxy took its server out", n)
	}
	// A new client from the same address now signs in on another server
	// (HAProxy's stickiness would send it to the draining one).
	_, id := s.signIn(t, s.front)
	for _, srv := range s.servers[1:] {
		for _, si := range srv.gw.Sessions() {
			if si.ID == id && srv == old {
				t.Fatalf("the new client signed in on the draining server %d", old.n)
			}
		}
	}
	if info, ok := old.gw.WhoIs(addr); !ok || !info.Connected {
		t.Fatalf("the client was moved before the drain delay ended (%+v, %v)", info, ok)
	}

	// Then the client is told to reconnect, and lands on another server
	// with its address.
	s.failedOver(ctx, t, oc, addr, old)
	if n := s.signIns.Load() - signIns; n != 1 {
		t.Fatalf("%d sign-ins during the drain, want 1 (the new client's)", n)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Shutdown did not return")
	}
}

// countOf counts the elements of s equal to v.
func countOf[T comparable](s []T, v T) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}
