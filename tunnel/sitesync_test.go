package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/tunnel/site"
)

// failingStore is an in-process site.Store for edge cases the etcd tests
// cannot reach cheaply: it refuses every call while down.
type failingStore struct {
	down atomic.Bool
	mu   sync.Mutex
	got  []site.Record
}

var errStoreDown = errors.New("store down")

func (f *failingStore) Publish(_ context.Context, r site.Record) error {
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
// returns the rest is published in order.
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
	if len(fs.got) != siteMaxQueued || fs.got[0].Session != fmt.Sprint(extra) || fs.got[len(fs.got)-1].Session != fmt.Sprint(siteMaxQueued+extra-1) {
		t.Fatalf("published %d records, first %q last %q", len(fs.got), fs.got[0].Session, fs.got[len(fs.got)-1].Session)
	}
	if fs.got[0].Server != "s1" {
		t.Fatalf("record's server %q, want s1", fs.got[0].Server)
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
