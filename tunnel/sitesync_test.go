package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel/site"
)

// failingStore is an in-process site.Store for edge cases the etcd tests
// cannot reach cheaply: it refuses every call while down.
type failingStore struct {
	down atomic.Bool
	mu   sync.Mutex
	got  []site.Record
	// hold, when set, makes Publish signal entered and then wait until
	// hold is closed: the record stays in flight as long as the test likes.
	hold, entered chan struct{}
}

var errStoreDown = errors.New("store down")

func (f *failingStore) Publish(_ context.Context, r site.Record) error {
	if f.hold != nil {
		select {
		case f.entered <- struct{}{}:
		default:
		}
		<-f.hold
	}
	if f.down.Load() {
		return errStoreDown
	}
	f.mu.Lock()
	f.got = append(f.got, r)
	f.mu.Unlock()
	return nil
}

func (f *failingStore) Watch(ctx context.Context, _ func(site.Record)) error {
	<-ctx.Done()
	return ctx.Err()
}

func (f *failingStore) Announce(context.Context, site.Health) error {
	if f.down.Load() {
		return errStoreDown
	}
	return nil
}

func (f *failingStore) Withdraw(context.Context, string) error { return nil }

func (f *failingStore) Servers(context.Context) ([]site.Health, error) { return nil, nil }

// TestSiteQueueBounded: during an outage the queue holds at most
// siteMaxQueued records, dropping the oldest (counted); when the store
// returns the rest is published in order. Whether record 0 was being
// published (and failing) when the queue overflowed is up to the
// scheduler, so one of records 0..extra survives; the rest are exact.
func TestSiteQueueBounded(t *testing.T) {
	fs := &failingStore{}
	fs.down.Store(true)
	g, _ := startGateway(t, func(c *Config) { c.Site = Site{ServerName: "s1", Store: fs} })
	const extra = 5
	for i := range siteMaxQueued + extra {
		g.publish(site.Record{Kind: site.Revoked, Session: fmt.Sprint(i), Until: time.Now().Add(time.Hour)})
	}
	st := g.Stats().SiteStore
	if st.Queued != siteMaxQueued || st.Dropped != extra || st.Up || !st.Configured {
		t.Fatalf("SiteStore = %+v, want %d queued, %d dropped, down", st, siteMaxQueued, extra)
	}
	fs.down.Store(false)
	waitFor(t, func() bool { st := g.Stats().SiteStore; return st.Queued == 0 && st.Up }, "the queue to drain")
	fs.mu.Lock()
	defer fs.mu.Unlock()
	checkPublished(t, fs.got, siteMaxQueued, extra)
	var first int
	if _, err := fmt.Sscan(fs.got[0].Session, &first); err != nil || first > extra {
		t.Fatalf("first record published %q, want one of 0..%d", fs.got[0].Session, extra)
	}
	if fs.got[0].Server != "s1" {
		t.Fatalf("record's server %q, want s1", fs.got[0].Server)
	}
}

// TestSiteQueueKeepsInFlight: a record being published when the queue
// overflows is not dropped (it would reach the store and still be counted
// as dropped); the next oldest goes instead.
func TestSiteQueueKeepsInFlight(t *testing.T) {
	fs := &failingStore{hold: make(chan struct{}), entered: make(chan struct{}, 1)}
	var logs testenv.LogBuffer
	g, _ := startGateway(t, func(c *Config) {
		c.Site = Site{ServerName: "s1", Store: fs}
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	const extra = 5
	rec := func(i int) site.Record {
		return site.Record{Kind: site.Revoked, Session: fmt.Sprint(i), Until: time.Now().Add(time.Hour)}
	}
	g.publish(rec(0))
	select {
	case <-fs.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("record 0 was never published")
	}
	for i := 1; i < siteMaxQueued+extra; i++ {
		g.publish(rec(i))
	}
	if st := g.Stats().SiteStore; st.Queued != siteMaxQueued || st.Dropped != extra {
		t.Fatalf("SiteStore = %+v, want %d queued, %d dropped", st, siteMaxQueued, extra)
	}
	for i := 1; i <= extra+1; i++ {
		logged := strings.Contains(logs.String(), fmt.Sprintf("oldest record dropped\" kind=revoked session=%d ", i))
		if logged != (i <= extra) {
			t.Errorf("record %d logged as dropped: %v, want %v\n%s", i, logged, i <= extra, logs.String())
		}
	}
	close(fs.hold)
	waitFor(t, func() bool { return g.Stats().SiteStore.Queued == 0 }, "the queue to drain")
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if len(fs.got) == 0 || fs.got[0].Session != "0" {
		t.Fatalf("the in-flight record was not published first: %d records", len(fs.got))
	}
	checkPublished(t, fs.got, siteMaxQueued, extra)
}

// checkPublished: n records were published, and after the first they are
// exactly records extra+1 .. n+extra-1, in order.
func checkPublished(t *testing.T, got []site.Record, n, extra int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("published %d records, want %d", len(got), n)
	}
	for i, r := range got[1:] {
		if want := fmt.Sprint(extra + 1 + i); r.Session != want {
			t.Fatalf("record %d published is %q, want %q", i+1, r.Session, want)
		}
	}
}

// TestApplyRecord: records from the store apply idempotently; expired or
// malformed ones, and bans on a gateway without a ban list, are ignored.
func TestApplyRecord(t *testing.T) {
	bans := auth.NewBans(auth.BanConfig{})
	g, _ := startGateway(t, func(c *Config) {
		c.Sealer, c.Bans = siteSealers(t, 1)[0], bans
		c.Site = Site{ServerName: "s1", Store: &failingStore{}}
	})
	a := netip.MustParseAddr("192.0.2.7")
	hour := time.Now().Add(time.Hour)
	steps := []struct {
		r       site.Record
		revoked string // a session id that must be listed after the step
		banned  bool
	}{
		{site.Record{Kind: site.Revoked, Session: "gone", Until: time.Now().Add(-time.Second)}, "", false},
		{site.Record{Kind: site.Revoked, Until: hour}, "", false},
		{site.Record{Kind: site.Revoked, Session: "r1", Until: hour}, "r1", false},
		{site.Record{Kind: site.Revoked, Session: "r1", Until: hour}, "r1", false},
		{site.Record{Kind: site.Banned, Until: hour}, "", false},
		{site.Record{Kind: site.Banned, Addr: a, Until: hour}, "", true},
		{site.Record{Kind: site.Banned, Addr: a, Until: hour}, "", true},
		{site.Record{Kind: site.Lifted, Addr: a}, "", false},
		{site.Record{Kind: 42, Session: "x", Addr: a, Until: hour}, "", false},
	}
	for i, s := range steps {
		g.applyRecord(s.r)
		if s.revoked != "" && !g.isRevoked(s.revoked) {
			t.Errorf("step %d: %s not revoked", i, s.revoked)
		}
		if bans.Banned(a) != s.banned {
			t.Errorf("step %d: banned %v, want %v", i, bans.Banned(a), s.banned)
		}
	}
	if g.isRevoked("gone") {
		t.Error("an expired revocation was listed")
	}
	if st := g.Stats().SiteStore; st.Queued != 0 {
		t.Errorf("records from the store were queued again: %+v", st)
	}
	// No ban list: a ban record is ignored, no panic.
	g2, _ := startGateway(t, func(c *Config) { c.Site = Site{ServerName: "s2", Store: &failingStore{}} })
	g2.applyRecord(site.Record{Kind: site.Banned, Addr: a, Until: hour})
	if g2.LiftBan(a) {
		t.Error("LiftBan without a ban list reported a ban")
	}
}
