package tunnel

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// TestSiteStoreQuorum (issue 12, "Quorum"): two servers on a three-member
// etcd. With one member stopped nothing changes: the store stays up on
// both and a revocation on A ends the session running on B. With a second
// one stopped there is no quorum: both servers report the store down
// (degraded mode), their sessions carry on, sign-ins work, and a
// revocation applies locally; once a member returns, the queue reaches the
// other server.
func TestSiteStoreQuorum(t *testing.T) {
	members := testenv.StartEtcdCluster(t, 3)
	sealers := siteSealers(t, 2)
	var s [2]*Gateway
	var addrs [2]string
	var logs [2]testenv.LogBuffer
	for i := range s {
		st := siteStore(t, members...)
		s[i], addrs[i] = startGateway(t, func(c *Config) {
			c.Sealer, c.Logger = sealers[i], slog.New(slog.NewTextHandler(&logs[i], nil))
			c.Site = Site{Servers: 2, ServerIndex: i + 1, ServerName: fmt.Sprintf("s%d", i+1), Store: st}
		})
	}
	up := func(want bool, why string) {
		t.Helper()
		for i, g := range s {
			waitFor(t, func() bool { return g.Stats().SiteStore.Up == want }, fmt.Sprintf("server %d %s", i+1, why))
		}
	}
	up(true, "to reach the store")

	// One member down (whichever it is, the leader or not).
	failed := [2]uint64{s[0].site.failures.Load(), s[1].site.failures.Load()}
	members[0].Stop()
	tc := dial(t, addrs[1], "alice", "secret")
	id := sessionID(t, s[1], tc.cookie)
	if err := s[0].Disconnect(id); err != nil {
		t.Fatalf("Disconnect on A with one etcd member down: %v", err)
	}
	tc.waitDisconnect(t)
	for i, g := range s {
		waitFor(t, func() bool { st := g.Stats().SiteStore; return st.Up && st.Queued == 0 }, fmt.Sprintf("server %d to publish its queue", i+1))
		if n := g.site.failures.Load(); n != failed[i] || strings.Contains(logs[i].String(), "site store unavailable") {
			t.Errorf("server %d lost the store with one member of three down: %d publications failed; log:\n%s", i+1, n-failed[i], logs[i].String())
		}
	}

	// Two members down: no quorum, degraded mode.
	live := dial(t, addrs[0], "bob", "hunter2")
	members[1].Stop()
	up(false, "to see the store down without a quorum")
	if err := live.ping(); err != nil {
		t.Fatalf("a session stopped with the quorum: %v", err)
	}
	dial(t, addrs[1], "alice", "secret") // a new sign-in
	liveID := sessionID(t, s[0], live.cookie)
	failedA := s[0].site.failures.Load()
	if err := s[0].Disconnect(liveID); err != nil {
		t.Fatal(err)
	}
	live.waitDisconnect(t)
	// A's attempt to publish must have failed, not merely be in flight.
	waitFor(t, func() bool { return s[0].site.failures.Load() > failedA }, "A to fail publishing")
	if s[1].isRevoked(liveID) {
		t.Fatal("B learnt a revocation without a quorum")
	}

	// A member back: a quorum again, and the queue goes out.
	members[1].Start()
	up(true, "to reach the store again")
	waitFor(t, func() bool { return s[1].isRevoked(liveID) }, "B to learn the revocation queued on A")
}
