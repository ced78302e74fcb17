package tunnel

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/underpass/underpass/tunnel/site"
)

// The site store's timing.
const (
	// siteAnnounceEvery is how often the health record is rewritten. With
	// the etcd backend's 10 s TTL a server misses three announcements
	// before it disappears, and a dead one is gone within 10 s (the
	// issue's bound is 15 s).
	siteAnnounceEvery = 3 * time.Second
	// siteCallTimeout bounds each store call: the store is never waited
	// on by a client, and a reachable etcd answers in milliseconds.
	siteCallTimeout = 2 * time.Second
	// siteRetryEvery is how often queued records are retried while the
	// store is unreachable.
	siteRetryEvery = time.Second
	// siteMaxQueued caps the records queued during an outage (about
	// 100 bytes each: a few MB). Beyond it the oldest record not being
	// published right now is dropped and logged; a dropped revocation
	// still applies here, and a dropped ban on the other servers only
	// until its points are earned there.
	siteMaxQueued = 1 << 15
)

// siteSync is the gateway's side of the site store (Site.Store): records
// apply locally at once and wait in an outbox until the store takes them.
type siteSync struct {
	store  site.Store
	server string
	kick   chan struct{} // something was queued
	// leaseKick: a lease call was queued. Lease calls have their own
	// goroutine (leaseLoop): a busy server's releases must not wait
	// behind its revocations, or other servers see stale leases.
	leaseKick chan struct{}
	learning  sync.Mutex // one learn at a time

	leases site.Leases // store as site.Leases; nil: it keeps no leases

	up        atomic.Bool
	down      atomic.Bool // the last store call failed (up is false before the first call too)
	conflicts atomic.Uint64
	dropped   atomic.Uint64
	failures  atomic.Uint64 // Publish calls that failed (the record stayed queued)

	mu     sync.Mutex
	outbox []site.Record
	// sending: flush is publishing outbox[0]. That record is never
	// dropped, so a record counted in Dropped never reaches the store.
	sending bool
	// leaseOps are lease calls waiting for the store (reconcile);
	// releasing are the leases whose release is queued (a dual-stack
	// session has two); held are addresses set aside for other servers'
	// sessions.
	leaseOps  []leaseOp
	releasing map[sessionAddr]struct{}
	held      map[netip.Addr]heldAddr
}

// sessionAddr names one lease: a session and one of its addresses.
type sessionAddr struct {
	session string
	addr    netip.Addr
}

// SiteStoreStats is the gateway's view of its site store.
type SiteStoreStats struct {
	Configured bool   // Site.Store is set
	Up         bool   // the store answered the gateway's last call
	Queued     int    // records applied here, not yet published
	Dropped    uint64 // records and lease calls dropped from a full queue (siteMaxQueued)
	// Leases: the store keeps site-wide address leases (site.Leases).
	Leases bool
	// LeasesQueued counts lease calls (claims made in degraded mode,
	// releases) waiting for the store.
	LeasesQueued int
	// LeaseConflicts counts addresses found leased to another session of
	// the site where this server's session needed them: resumes refused
	// (503) and leases made during an outage that the store refused
	// afterwards (both sessions kept; logged).
	LeaseConflicts uint64
}

func (g *Gateway) startSite(cfg *Config) {
	if cfg.Site.Store == nil {
		return
	}
	g.site = &siteSync{store: cfg.Site.Store, server: cfg.Site.name(), kick: make(chan struct{}, 1),
		leaseKick: make(chan struct{}, 1), releasing: make(map[sessionAddr]struct{}), held: make(map[netip.Addr]heldAddr)}
	g.site.leases, _ = cfg.Site.Store.(site.Leases)
	g.wg.Add(2)
	go g.siteWatch()
	go g.siteLoop()
	if g.site.leases != nil {
		g.wg.Add(1)
		go g.leaseLoop()
	}
}

func (g *Gateway) siteStats() SiteStoreStats {
	ss := g.site
	if ss == nil {
		return SiteStoreStats{}
	}
	ss.mu.Lock()
	n, nl := len(ss.outbox), len(ss.leaseOps)
	ss.mu.Unlock()
	return SiteStoreStats{Configured: true, Up: ss.up.Load(), Queued: n, Dropped: ss.dropped.Load(),
		Leases: ss.leases != nil, LeasesQueued: nl, LeaseConflicts: ss.conflicts.Load()}
}

// publish queues r for the site store. r has been applied here already.
func (g *Gateway) publish(r site.Record) {
	ss := g.site
	if ss == nil {
		return
	}
	r.Server = ss.server
	ss.mu.Lock()
	if len(ss.outbox) >= siteMaxQueued {
		i := 0
		if ss.sending {
			i = 1 // the head is in flight: drop the next oldest
		}
		d := ss.outbox[i]
		g.log.Warn("site store queue full: oldest record dropped", "kind", d.Kind.String(), "session", d.Session, "client_ip", d.Addr)
		if i == 1 {
			ss.outbox[1] = ss.outbox[0] // keep the head, in O(1)
		}
		ss.outbox = ss.outbox[1:]
		ss.dropped.Add(1)
	}
	ss.outbox = append(ss.outbox, r)
	ss.mu.Unlock()
	select {
	case ss.kick <- struct{}{}:
	default:
	}
}

// setUp records whether the store answered, logging each change.
func (g *Gateway) setUp(ok bool, err error) {
	g.site.down.Store(!ok)
	if g.site.up.Swap(ok) == ok {
		return
	}
	if ok {
		g.log.Info("site store available")
	} else {
		g.log.Warn("site store unavailable: revocations, bans and address leases apply here and are queued", "err", err)
	}
}

// flush publishes queued records in order until the queue is empty or the
// store fails.
func (g *Gateway) flush(ctx context.Context) {
	ss := g.site
	for {
		ss.mu.Lock()
		if len(ss.outbox) == 0 {
			ss.mu.Unlock()
			return
		}
		r := ss.outbox[0]
		ss.sending = true
		ss.mu.Unlock()
		cctx, cancel := context.WithTimeout(ctx, siteCallTimeout)
		err := ss.store.Publish(cctx, r)
		cancel()
		g.setUp(err == nil, err)
		ss.mu.Lock()
		ss.sending = false
		if err == nil {
			ss.outbox = ss.outbox[1:] // still r: publish never drops it while sending
		}
		ss.mu.Unlock()
		if err != nil {
			ss.failures.Add(1)
			return
		}
	}
}

func (g *Gateway) announce(ctx context.Context) {
	ss := g.site
	g.mu.Lock()
	draining := g.unready || g.draining
	g.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, siteCallTimeout)
	err := ss.store.Announce(cctx, site.Health{
		Server: ss.server, Sessions: g.sessions.count(), Draining: draining,
		Started: g.started, Updated: time.Now(),
	})
	cancel()
	g.setUp(err == nil, err)
}

// siteLoop announces health and publishes the outbox. At Close it makes
// one last attempt to publish and withdraws the health record.
func (g *Gateway) siteLoop() {
	defer g.wg.Done()
	ss := g.site
	learned := false // the leases were listed since the last outage
	if ss.leases != nil {
		learned = g.learn(g.ctx)
	}
	g.announce(g.ctx)
	learn := time.NewTicker(siteLearnEvery)
	defer learn.Stop()
	announce := time.NewTicker(siteAnnounceEvery)
	defer announce.Stop()
	retry := time.NewTicker(siteRetryEvery)
	defer retry.Stop()
	for {
		select {
		case <-g.ctx.Done():
			g.siteFinish()
			return
		case <-announce.C:
			g.announce(g.ctx)
			g.flush(g.ctx)
		case <-retry.C:
			g.flush(g.ctx)
		case <-learn.C:
			if ss.leases != nil {
				learned = g.learn(g.ctx)
			}
		case <-ss.kick:
			g.flush(g.ctx)
		}
		if ss.leases != nil {
			if ss.down.Load() {
				learned = false
			} else if !learned {
				learned = g.learn(g.ctx) // back from an outage (after replaying the queue)
			}
		}
	}
}

// sync publishes the outbox, then (at exit) replays the lease queue.
func (g *Gateway) sync(ctx context.Context) {
	g.flush(ctx)
	if g.site.leases != nil && !g.site.down.Load() && ctx.Err() == nil {
		g.reconcile(ctx)
	}
}

// leaseLoop replays queued lease calls as they come, and every second
// while the store is unreachable (siteLoop's announcements find it back).
func (g *Gateway) leaseLoop() {
	defer g.wg.Done()
	ss := g.site
	retry := time.NewTicker(siteRetryEvery)
	defer retry.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-retry.C:
		case <-ss.leaseKick:
		}
		if !ss.down.Load() {
			g.reconcile(g.ctx)
		}
	}
}

// siteFinish makes one last, bounded attempt to publish the queue and
// withdraws the health record, so the site sees this server leave at once.
func (g *Gateway) siteFinish() {
	ss := g.site
	ctx, cancel := context.WithTimeout(context.Background(), siteCallTimeout)
	defer cancel()
	g.sync(ctx)
	if err := ss.store.Withdraw(ctx, ss.server); err != nil {
		g.log.Debug("site store: health record not withdrawn (it expires with its TTL)", "err", err)
	}
	ss.mu.Lock()
	if n, nl := len(ss.outbox), len(ss.leaseOps); n+nl > 0 {
		g.log.Warn("site store unavailable at exit: records not published", "records", n, "lease_calls", nl)
	}
	ss.mu.Unlock()
}

func (g *Gateway) siteWatch() {
	defer g.wg.Done()
	_ = g.site.store.Watch(g.ctx, g.applyRecord)
}

// applyRecord applies a record from the store (another server's, or one of
// this server's own coming back).
func (g *Gateway) applyRecord(r site.Record) {
	switch r.Kind {
	case site.Revoked:
		if r.Session == "" || !time.Now().Before(r.Until) {
			return
		}
		g.mu.Lock()
		if _, ok := g.revoked[r.Session]; !ok {
			g.revoked[r.Session] = r.Until
		}
		g.mu.Unlock()
		if s := g.sessions.get(r.Session); s != nil {
			g.log.Info("session revoked on another server of the site", "session", r.Session, "server", r.Server)
			g.endSession(s, EndOperator) // already in revoked: not published again
		}
	case site.Banned:
		if b := g.conf().Bans; b != nil && r.Addr.IsValid() && !b.Banned(r.Addr) {
			if b.Impose(r.Addr, r.Until) {
				g.log.Info("client banned by another server of the site", "client_ip", r.Addr, "server", r.Server, "until", r.Until)
			}
		}
	case site.Lifted:
		if b := g.conf().Bans; b != nil && r.Addr.IsValid() {
			b.Lift(r.Addr)
		}
	}
}

// LiftBan ends the ban on a client address (and forgets its points) on
// this server and, with a site store, on every server of the site. It
// reports whether a ban was active here.
func (g *Gateway) LiftBan(a netip.Addr) bool {
	b := g.conf().Bans
	if b == nil || !a.IsValid() {
		return false
	}
	a = a.Unmap()
	was := b.Lift(a)
	g.publish(site.Record{Kind: site.Lifted, Addr: a})
	return was
}
