package tunnel_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// TestSiteDrain ("Drain", issue 12; R-O4): a server of the site behind
// HAProxy is shut down with a drain delay. Its /readyz fails first and
// HAProxy takes it out while its openconnect client is still connected
// to it; a new client then signs in on the other server; only after the
// delay is the client told to reconnect, and it lands on the other server
// with its address, without signing in again.
func TestSiteDrain(t *testing.T) {
	t.Parallel()
	// The delay: several of HAProxy's check intervals here (inter 300ms,
	// fall 2), as the default is for a production balancer.
	s, echo, front, hap := startSite(t, 4*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute) // the whole scenario, generously
	defer cancel()
	up := func(n int) bool {
		st, err := hap.ServersUp("site")
		if err != nil {
			t.Fatal(err)
		}
		return st[fmt.Sprint("s", n)]
	}
	s.waitReady(t, hap)
	s.warm(t, ctx, 1, 2)
	s.warm(t, ctx, 2, 3)

	oc, addr, old, other := s.openconnect(ctx, t, front, echo)
	signIns := s.signIns.Load()

	t.Logf("openconnect has %v on server %d; stopping it with a %v drain delay", addr, old.n, s.drainDelay)
	stopped := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		stopped <- old.gw.Shutdown(sctx)
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
	// A new client now signs in on the other server (balance source would
	// send this client's address to the draining one).
	before := len(other.gw.Sessions())
	if _, err := testenv.Authenticate(t, s.tp.Client, testenv.OCOptions{Server: front, ServerCertPin: s.cert.Pin,
		User: "alice", Password: "secret"}); err != nil {
		t.Fatalf("a new client during the drain: %v", err)
	}
	if after := len(other.gw.Sessions()); after != before+1 {
		t.Fatalf("server %d has %d sessions after a new sign-in, had %d: the new client went elsewhere", other.n, after, before)
	}
	if info, ok := old.gw.WhoIs(addr); !ok || !info.Connected {
		t.Fatalf("the client was moved before the drain delay ended (%+v, %v)", info, ok)
	}

	// Then the client is told to reconnect, and lands on the other server
	// with its address.
	if err := oc.WaitScriptReason("reconnect", 1, 60*time.Second); err != nil {
		t.Fatalf("%v\nserver %d log:\n%s", err, other.n, other.logs.String())
	}
	if got := oc.ScriptEnv("reconnect")["INTERNAL_IP4_ADDRESS"]; got != addr.String() {
		t.Fatalf("reconnected with %q, had %v", got, addr)
	}
	if info, ok := other.gw.WhoIs(addr); !ok || !info.Connected {
		t.Fatalf("server %d: WhoIs(%v) = %+v, %v; want the drained client", other.n, addr, info, ok)
	}
	if err := echoThrough(ctx, s.tp.Client.Dial, echo.tcp.String(), 20*time.Second); err != nil {
		t.Fatal(err)
	}
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
