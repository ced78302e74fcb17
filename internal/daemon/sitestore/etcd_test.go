package sitestore

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel/site"
)

// waitFor bounds every wait of these tests: etcd on loopback answers in
// milliseconds, a lease expires within a second of its TTL.
const waitFor = 20 * time.Second

func newStore(t *testing.T, e *testenv.Etcd) *Store {
	t.Helper()
	s, err := New(Config{Endpoints: []string{e.Endpoint}, Prefix: "/t/" + t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// recorder collects what Watch delivers.
type recorder struct {
	mu  sync.Mutex
	got []site.Record
}

func (r *recorder) add(rec site.Record) {
	r.mu.Lock()
	r.got = append(r.got, rec)
	r.mu.Unlock()
}

// waitLen waits until n records arrived and returns them.
func (r *recorder) waitLen(t *testing.T, n int) []site.Record {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		r.mu.Lock()
		got := slices.Clone(r.got)
		r.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %d records %+v, want %d", waitFor, len(got), got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func watch(t *testing.T, s *Store) *recorder {
	t.Helper()
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, rec.add) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Watch returned %v, want context.Canceled", err)
		}
	})
	return rec
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return c
}

// TestPublishWatch: records present when Watch starts are listed; later
// ones are watched; a Lifted record deletes the ban and arrives as Lifted;
// a record whose Until has passed is not stored.
func TestPublishWatch(t *testing.T) {
	// Registered first, so it runs after every other cleanup: the watch,
	// both clients and etcd have stopped by then.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	e := testenv.StartEtcd(t)
	a, b := newStore(t, e), newStore(t, e)
	until := time.Now().Add(time.Hour).Truncate(time.Second).UTC()
	addr := netip.MustParseAddr("198.51.100.7")
	before := site.Record{Kind: site.Revoked, Session: "s-1", Until: until, Server: "a"}
	if err := a.Publish(ctx(t), before); err != nil {
		t.Fatal(err)
	}
	rec := watch(t, b)
	if got := rec.waitLen(t, 1); got[0] != before {
		t.Fatalf("listed %+v, want %+v", got[0], before)
	}
	later := []site.Record{
		{Kind: site.Banned, Addr: addr, Until: until, Server: "a"},
		{Kind: site.Revoked, Session: "expired", Until: time.Now().Add(-time.Second), Server: "a"},
		{Kind: site.Lifted, Addr: addr, Server: "b"},
		{Kind: site.Revoked, Session: "s-2", Until: until, Server: "b"},
	}
	for _, r := range later {
		if err := a.Publish(ctx(t), r); err != nil {
			t.Fatal(err)
		}
	}
	want := []site.Record{before, later[0], {Kind: site.Lifted, Addr: addr}, later[3]}
	got := rec.waitLen(t, len(want))
	if !slices.Equal(byRange(got), byRange(want)) {
		t.Fatalf("watched\n%+v\nwant\n%+v", got, want)
	}
}

// byRange orders records by their key range, bans/ before revoked/,
// keeping the order within each: Watch watches the ranges separately, so
// only the order within one is given.
func byRange(rs []site.Record) []site.Record {
	rank := func(r site.Record) int {
		if r.Kind == site.Revoked {
			return 1
		}
		return 0
	}
	out := slices.Clone(rs)
	slices.SortStableFunc(out, func(a, b site.Record) int { return cmp.Compare(rank(a), rank(b)) })
	return out
}

// TestPublishErrors: records that cannot be stored are refused with a
// clear error, and nothing is written.
func TestPublishErrors(t *testing.T) {
	e := testenv.StartEtcd(t)
	s := newStore(t, e)
	for _, tc := range []struct {
		r    site.Record
		want string
	}{
		{site.Record{Kind: site.Revoked, Until: time.Now().Add(time.Hour)}, "without a session id"},
		{site.Record{Kind: site.Banned, Until: time.Now().Add(time.Hour)}, "banned record without an address"},
		{site.Record{Kind: site.Lifted}, "lifted record without an address"},
		{site.Record{Kind: 99}, "unknown record kind 99"},
	} {
		err := s.Publish(ctx(t), tc.r)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Publish(%+v) = %v, want %q", tc.r, err, tc.want)
		}
	}
	resp, err := s.cli.Get(ctx(t), s.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("store holds %v keys (%v), want 0", resp.Count, err)
	}
}

// TestWatchCompacted: a watch resuming from a compacted revision gets 0
// (list again), and Watch then lists what is there.
func TestWatchCompacted(t *testing.T) {
	e := testenv.StartEtcd(t)
	s := newStore(t, e)
	until := time.Now().Add(time.Hour).Truncate(time.Second).UTC()
	r1 := site.Record{Kind: site.Revoked, Session: "old", Until: until, Server: "a"}
	if err := s.Publish(ctx(t), r1); err != nil {
		t.Fatal(err)
	}
	resp, err := s.cli.Get(ctx(t), s.prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	old := resp.Header.Revision
	// Two more writes, then compaction up to the last: the revision after
	// old is gone (etcd keeps the compaction revision itself).
	r2 := site.Record{Kind: site.Revoked, Session: "new", Until: until, Server: "a"}
	r3 := site.Record{Kind: site.Banned, Addr: netip.MustParseAddr("192.0.2.1"), Until: until, Server: "a"}
	for _, r := range []site.Record{r2, r3} {
		if err := s.Publish(ctx(t), r); err != nil {
			t.Fatal(err)
		}
	}
	resp, err = s.cli.Get(ctx(t), s.prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.cli.Compact(ctx(t), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	for _, sub := range watched {
		var got []site.Record
		if rev := s.watchFrom(ctx(t), s.prefix+sub, old, func(r site.Record) { got = append(got, r) }); rev != 0 {
			t.Fatalf("%s watch from compacted revision %d returned %d (records %+v), want 0", sub, old, rev, got)
		}
	}
	rec := watch(t, s)
	// Listed in key order within a range: "new" before "old".
	if got := rec.waitLen(t, 3); !slices.Equal(byRange(got), []site.Record{r3, r2, r1}) {
		t.Fatalf("re-listed %+v", got)
	}
}

// TestWatchSurvivesRestart: records published while etcd was down and
// after it returned reach a watch started before the outage.
func TestWatchSurvivesRestart(t *testing.T) {
	e := testenv.StartEtcd(t)
	a, b := newStore(t, e), newStore(t, e)
	rec := watch(t, b)
	until := time.Now().Add(time.Hour).Truncate(time.Second).UTC()
	r1 := site.Record{Kind: site.Revoked, Session: "before", Until: until, Server: "a"}
	if err := a.Publish(ctx(t), r1); err != nil {
		t.Fatal(err)
	}
	rec.waitLen(t, 1)
	e.Stop()
	c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	err := a.Publish(c, site.Record{Kind: site.Revoked, Session: "during", Until: until})
	cancel()
	if err == nil {
		t.Fatal("Publish succeeded with etcd stopped")
	}
	e.Start()
	r2 := site.Record{Kind: site.Revoked, Session: "after", Until: until, Server: "a"}
	if err := a.Publish(ctx(t), r2); err != nil {
		t.Fatal(err)
	}
	if got := rec.waitLen(t, 2); got[1] != r2 {
		t.Fatalf("after the restart the watch got %+v, want %+v", got[1:], r2)
	}
}

// TestWatchOnlyRevocationsAndBans: a server's Watch receives revocations
// and bans and nothing of the writes every sign-in, session end, health
// announcement and config push make under the same prefix. fn's count
// shows only what decode kept; etcd's own counters show what it sent:
// events (etcd_debugging_mvcc_events_total) and watch responses
// (grpc_server_msg_sent_total for Watch), both 1 for the one revocation
// after 35 other writes (20 lease claims, 10 releases, 3 announcements, a
// withdrawal, a config push). A whole-prefix watch gets all 36 events.
func TestWatchOnlyRevocationsAndBans(t *testing.T) {
	e := testenv.StartEtcd(t)
	a, b := newStore(t, e), newStore(t, e)
	rec := watch(t, b)
	until := time.Now().Add(time.Hour).Truncate(time.Second).UTC()
	// Both ranges' watches run once a record of each has arrived.
	first := []site.Record{
		{Kind: site.Revoked, Session: "s-0", Until: until, Server: "a"},
		{Kind: site.Banned, Addr: netip.MustParseAddr("192.0.2.9"), Until: until, Server: "a"},
	}
	for _, r := range first {
		if err := a.Publish(ctx(t), r); err != nil {
			t.Fatal(err)
		}
	}
	rec.waitLen(t, len(first))
	events, responses := etcdWatchCounters(t, e)

	const n = 20
	writes := 0
	for i := range n {
		l := site.Lease{Addr: netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), Session: fmt.Sprint("s-", i+1), Server: "a", User: "u", Since: time.Now(), Until: until}
		if err := a.ClaimLease(ctx(t), l); err != nil {
			t.Fatal(err)
		}
		writes++
		if i%2 == 0 {
			if err := a.ReleaseLease(ctx(t), l.Addr, l.Session, "a"); err != nil {
				t.Fatal(err)
			}
			writes++
		}
	}
	for range 3 {
		if err := a.Announce(ctx(t), site.Health{Server: "a", Sessions: n / 2, Updated: time.Now()}); err != nil {
			t.Fatal(err)
		}
		writes++
	}
	if err := a.Withdraw(ctx(t), "a"); err != nil {
		t.Fatal(err)
	}
	writes++
	if _, err := a.PutConfig(ctx(t), SiteConfig{YAML: []byte("banner: hi\n"), Hash: "h1"}, 0); err != nil {
		t.Fatal(err)
	}
	writes++
	// Last, a revocation: etcd sends a watcher its events in revision
	// order, so it arrives after anything the writes above sent.
	last := site.Record{Kind: site.Revoked, Session: "s-last", Until: until, Server: "a"}
	if err := a.Publish(ctx(t), last); err != nil {
		t.Fatal(err)
	}
	got := rec.waitLen(t, len(first)+1)
	if len(got) != len(first)+1 || got[len(first)] != last {
		t.Fatalf("fn got %+v, want %+v then only %+v", got, first, last)
	}
	ev, resp := etcdWatchCounters(t, e)
	if ev-events != 1 || resp-responses != 1 {
		t.Fatalf("etcd sent the watch %v events in %v responses for one revocation among %d other writes, want 1 in 1", ev-events, resp-responses, writes)
	}
}

// etcdWatchCounters reads from etcd's /metrics the events it has sent to
// watchers and the watch responses it has sent.
func etcdWatchCounters(t *testing.T, e *testenv.Etcd) (events, responses float64) {
	t.Helper()
	fams := etcdMetrics(t, e)
	ef, ok := fams["etcd_debugging_mvcc_events_total"]
	if !ok || len(ef.GetMetric()) != 1 {
		t.Fatalf("etcd /metrics has no etcd_debugging_mvcc_events_total")
	}
	events = ef.GetMetric()[0].GetCounter().GetValue()
	found := false
	for _, m := range fams["grpc_server_msg_sent_total"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["grpc_service"] == "etcdserverpb.Watch" && labels["grpc_method"] == "Watch" {
			responses, found = m.GetCounter().GetValue(), true
		}
	}
	if !found {
		t.Fatalf("etcd /metrics has no grpc_server_msg_sent_total for etcdserverpb.Watch")
	}
	return events, responses
}

// etcdProposals reads from etcd's /metrics the raft proposals it has
// committed (a gauge in etcd 3.4: the committed index).
func etcdProposals(t *testing.T, e *testenv.Etcd) float64 {
	t.Helper()
	f, ok := etcdMetrics(t, e)["etcd_server_proposals_committed_total"]
	if !ok || len(f.GetMetric()) != 1 {
		t.Fatalf("etcd /metrics has no etcd_server_proposals_committed_total")
	}
	m := f.GetMetric()[0]
	return m.GetGauge().GetValue() + m.GetCounter().GetValue()
}

// etcdRanges reads from etcd's /metrics the reads (ranges) its store has
// served.
func etcdRanges(t *testing.T, e *testenv.Etcd) float64 {
	t.Helper()
	f, ok := etcdMetrics(t, e)["etcd_mvcc_range_total"]
	if !ok || len(f.GetMetric()) != 1 {
		t.Fatalf("etcd /metrics has no etcd_mvcc_range_total")
	}
	return f.GetMetric()[0].GetCounter().GetValue()
}

// etcdMetrics reads etcd's /metrics.
func etcdMetrics(t *testing.T, e *testenv.Etcd) map[string]*dto.MetricFamily {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx(t), http.MethodGet, e.Endpoint+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	tp := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := tp.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("etcd /metrics: %v", err)
	}
	return fams
}

// TestHealth: Announce lists a server; one that stops announcing is gone
// within 15 s (its lease's TTL, no leader); Withdraw removes at once.
func TestHealth(t *testing.T) {
	e := testenv.StartEtcd(t)
	a, b := newStore(t, e), newStore(t, e)
	now := time.Now().Truncate(time.Second).UTC()
	for _, h := range []site.Health{{Server: "b", Sessions: 2, Started: now, Updated: now}, {Server: "a", Sessions: 5, Started: now, Updated: now}} {
		st := a
		if h.Server == "b" {
			st = b
		}
		if err := st.Announce(ctx(t), h); err != nil {
			t.Fatal(err)
		}
	}
	list, err := a.Servers(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Server != "a" || list[0].Sessions != 5 || list[1].Server != "b" {
		t.Fatalf("Servers = %+v", list)
	}
	// a goes silent (as if killed): gone within 15 s.
	start := time.Now()
	for {
		list, err = b.Servers(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 1 && list[0].Server == "b" {
			break
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("a silent server still listed after 15 s: %+v", list)
		}
		if err := b.Announce(ctx(t), site.Health{Server: "b", Updated: time.Now()}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("a silent server disappeared after %v", time.Since(start).Round(100*time.Millisecond))
	if err := b.Withdraw(ctx(t), "b"); err != nil {
		t.Fatal(err)
	}
	if list, err = b.Servers(ctx(t)); err != nil || len(list) != 0 {
		t.Fatalf("after Withdraw: %+v, %v", list, err)
	}
	if err := a.Announce(ctx(t), site.Health{}); err == nil {
		t.Fatal("Announce without a server name accepted")
	}
}

// TestAnnounceAfterLeaseExpired: a lease etcd expired (an outage longer
// than the TTL) is replaced.
func TestAnnounceAfterLeaseExpired(t *testing.T) {
	e := testenv.StartEtcd(t)
	s := newStore(t, e)
	if err := s.Announce(ctx(t), site.Health{Server: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.cli.Revoke(ctx(t), s.lease); err != nil { // as etcd does at expiry
		t.Fatal(err)
	}
	if err := s.Announce(ctx(t), site.Health{Server: "a"}); err != nil {
		t.Fatalf("Announce after the lease ended: %v", err)
	}
	if list, err := s.Servers(ctx(t)); err != nil || len(list) != 1 {
		t.Fatalf("Servers = %+v, %v", list, err)
	}
}

// TestDecodeBadValues: values that do not match their key, or are not
// JSON, are skipped (and logged), never delivered.
func TestDecodeBadValues(t *testing.T) {
	s := &Store{prefix: "/p/", log: slog.New(slog.DiscardHandler)}
	kv := func(k, v string) *mvccpb.KeyValue { return &mvccpb.KeyValue{Key: []byte("/p/" + k), Value: []byte(v)} }
	for _, tc := range []struct {
		name string
		kv   *mvccpb.KeyValue
		del  bool
		ok   bool
	}{
		{"revocation", kv("revoked/x", `{"kind":"revoked","session":"x","until":"2030-01-01T00:00:00Z"}`), false, true},
		{"not JSON", kv("revoked/x", `{`), false, false},
		{"kind mismatch", kv("revoked/x", `{"kind":"banned","addr":"192.0.2.1"}`), false, false},
		{"ban without address", kv("bans/192.0.2.1", `{"kind":"banned","addr":""}`), false, false},
		{"ban", kv("bans/192.0.2.1", `{"kind":"banned","addr":"192.0.2.1"}`), false, true},
		{"lift", kv("bans/192.0.2.1", ``), true, true},
		{"lift of a bad key", kv("bans/nonsense", ``), true, false},
		{"revocation expiry", kv("revoked/x", ``), true, false},
		{"health record", kv("servers/a", `{"server":"a"}`), false, false},
		{"other key", kv("else", `{}`), false, false},
	} {
		if _, ok := s.decode(tc.kv, tc.del); ok != tc.ok {
			t.Errorf("%s: ok = %v, want %v", tc.name, ok, tc.ok)
		}
	}
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("no"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "no etcd endpoints"},
		{Config{Endpoints: []string{"http://127.0.0.1:1"}, CertFile: "c.pem"}, "both its certificate and key files"},
		{Config{Endpoints: []string{"http://127.0.0.1:1"}, CAFile: filepath.Join(dir, "missing.pem")}, "CA file"},
		{Config{Endpoints: []string{"http://127.0.0.1:1"}, CAFile: notPEM}, "no PEM certificate"},
	} {
		s, err := New(tc.cfg)
		if err == nil {
			s.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
