package tunnel

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"time"

	"github.com/underpass/underpass/internal/core/ippool"
	"github.com/underpass/underpass/tunnel/site"
)

// Site-wide address leases (site.Leases, when Site.Store implements it).
// The local pool (*ippool.Pool, strided per server) picks addresses; the
// store confirms them, so no two sessions of the site hold one address.
// A dual-stack session's IPv6 address (Pool6) is leased the same way, as a
// second lease of the same session: each address is its own key, so the
// two are claimed, released and set aside independently, with the same
// compare-and-swap rules.
// A sign-in or resume asks the store at most siteCallTimeout; while the
// store is unreachable the local pool decides alone (degraded mode) and
// the lease waits in a queue that siteLoop replays when the store is back.
const (
	// siteAllocTries bounds the addresses one sign-in tries when the
	// store says they are leased elsewhere (after a server restart its
	// own stride is full of its earlier sessions' leases, which their
	// clients may resume elsewhere). All tries share one siteCallTimeout.
	siteAllocTries = 16
	// siteLearnEvery is how often a server lists the site's leases and
	// sets aside (holds in its pool under a placeholder key) every
	// address leased to a session it does not run, returning those whose
	// lease has gone. It also lists them when it first reaches the store
	// and after every outage, so a restarted server knows at once which
	// of its stride's addresses its earlier sessions still hold. 30 s:
	// an address freed elsewhere is usable here within that, and one
	// list per server per 30 s is light even at 10,000 leases (~2 MB).
	siteLearnEvery = 30 * time.Second
	// heldKeyPrefix starts the local pool keys of those placeholders; a
	// session id (sealed or random) never starts with a NUL.
	heldKeyPrefix = "\x00held:"
)

var (
	// errSiteDown: the store did not answer a lease call; the lease was
	// queued.
	errSiteDown = errors.New("tunnel: site store unavailable")
	// refuseSiteStrict is a resume's answer in strict mode (Site.Strict)
	// while the store is unreachable.
	refuseSiteStrict = &refusal{http.StatusServiceUnavailable, "site store unavailable: resumes are refused until it is back (strict mode)"}
	// refuseAddrTakenSite: the cookie's address is leased to another live
	// session of the site. The same 503 as refuseAddrTaken: another
	// address would make openconnect 9.01 abort.
	refuseAddrTakenSite = &refusal{http.StatusServiceUnavailable, "this session's address is held by another session of the site"}
)

// leaseOp is a lease call queued while the store was unreachable.
type leaseOp struct {
	l       site.Lease // release: Addr, Session and Server only
	release bool
}

// heldAddr is an address held in the local pool for another server's
// session.
type heldAddr struct {
	key   string // the placeholder's pool key
	until time.Time
}

func (g *Gateway) siteLeases() site.Leases {
	if g.site == nil {
		return nil
	}
	return g.site.leases
}

// poolFor is the pool a belongs to by family: Pool's for IPv4, Pool6's
// for IPv6 (nil without Pool6).
func (g *Gateway) poolFor(a netip.Addr) leaser {
	if a.Is6() && !a.Is4In6() {
		return g.pool6
	}
	return g.pool
}

// leaseFor is s's lease record for a.
func (g *Gateway) leaseFor(s *session, a netip.Addr) site.Lease {
	return site.Lease{
		Addr: a, Session: s.id, Server: g.site.server, User: s.ident.User,
		Client: s.clientAddr.Addr(), Since: s.created, Until: s.expires,
	}
}

// confirm claims l in the store. It returns nil, a *site.HeldError, or
// errSiteDown (the store did not answer: l is queued for siteLoop).
func (g *Gateway) confirm(ctx context.Context, l site.Lease) error {
	ss := g.site
	if ss.down.Load() {
		g.queueLease(leaseOp{l: l})
		return errSiteDown
	}
	err := ss.leases.ClaimLease(ctx, l)
	var held *site.HeldError
	if errors.As(err, &held) && held.Holder.Server == ss.server && g.releaseQueued(ctx, held.Holder) {
		err = ss.leases.ClaimLease(ctx, l) // it was this server's own ended session's
	}
	switch {
	case err == nil:
		g.setUp(true, nil)
		return nil
	case errors.As(err, &held):
		g.setUp(true, nil)
		return err
	}
	g.setUp(false, err)
	g.queueLease(leaseOp{l: l})
	return errSiteDown
}

// allocate leases an address of pool (g.pool or g.pool6) to a
// signing-in session: the local pool's pick, confirmed by the site store.
// An address the store says another session holds is set aside (until
// its lease ends or a learn finds it gone) and the next one tried.
func (g *Gateway) allocate(s *session, pool leaser) (netip.Addr, error) {
	if g.siteLeases() == nil {
		return pool.Allocate(s.id)
	}
	ctx, cancel := context.WithTimeout(g.ctx, siteCallTimeout)
	defer cancel()
	relearned := false
	for range siteAllocTries {
		a, err := pool.Allocate(s.id)
		if errors.Is(err, ippool.ErrExhausted) && !relearned && g.holding() {
			// Addresses set aside may have been released since the last
			// learn: list the leases now (one caller at a time) and retry.
			relearned = true
			if g.site.learning.TryLock() {
				g.site.learning.Unlock()
				g.learn(ctx)
			}
			a, err = pool.Allocate(s.id)
		}
		if err != nil {
			return a, err
		}
		err = g.confirm(ctx, g.leaseFor(s, a))
		var held *site.HeldError
		if !errors.As(err, &held) {
			if err != nil {
				g.log.Debug("site store unavailable: address leased here only", "session", s.id, "addr", a)
			}
			return a, nil // confirmed, or degraded mode
		}
		pool.Release(a)
		g.hold(a, held.Holder)
	}
	g.log.Warn("no address for session: every address tried is leased elsewhere in the site", "session", s.id, "tries", siteAllocTries)
	return netip.Addr{}, errNoAddress
}

// hold keeps a (just released) out of Allocate: it is l's, elsewhere.
func (g *Gateway) hold(a netip.Addr, l site.Lease) {
	ss := g.site
	key := heldKeyPrefix + l.Session
	if g.poolFor(a).Claim(key, a) != nil {
		return // taken meanwhile by another sign-in, which asks the store itself
	}
	ss.mu.Lock()
	ss.held[a] = heldAddr{key: key, until: l.Until}
	ss.mu.Unlock()
	g.log.Debug("address leased elsewhere in the site: set aside", "addr", a, "held_by", l.Session, "server", l.Server)
}

// unhold returns a held address to the pool (a is then free locally):
// its time is up, or its session resumes here.
func (g *Gateway) unhold(a netip.Addr) {
	ss := g.site
	ss.mu.Lock()
	_, ok := ss.held[a]
	delete(ss.held, a)
	ss.mu.Unlock()
	if ok {
		g.poolFor(a).Release(a)
	}
}

// holding reports whether addresses are set aside for other servers.
func (g *Gateway) holding() bool {
	g.site.mu.Lock()
	defer g.site.mu.Unlock()
	return len(g.site.held) > 0
}

// learn lists the site's leases: every address leased to a session that
// does not run here with it is held; held addresses whose lease has gone
// (or ended) return to the pool. It reports whether the store answered.
func (g *Gateway) learn(ctx context.Context) bool {
	ss := g.site
	ss.learning.Lock()
	defer ss.learning.Unlock()
	cctx, cancel := context.WithTimeout(ctx, siteCallTimeout)
	ls, err := ss.leases.Leases(cctx)
	cancel()
	g.setUp(err == nil, err)
	if err != nil {
		return false
	}
	now := time.Now()
	leased := make(map[netip.Addr]bool, len(ls))
	for _, l := range ls {
		if pool := g.poolFor(l.Addr); !now.Before(l.Until) || pool == nil || !pool.Contains(l.Addr) {
			continue
		}
		leased[l.Addr] = true
		if s := g.sessions.get(l.Session); s != nil && s.holds(l.Addr) {
			continue // ours
		}
		ss.mu.Lock()
		_, held := ss.held[l.Addr]
		ss.mu.Unlock()
		if !held {
			g.hold(l.Addr, l)
		}
	}
	var gone []netip.Addr
	ss.mu.Lock()
	for a, h := range ss.held {
		if !leased[a] || !now.Before(h.until) {
			gone = append(gone, a)
		}
	}
	ss.mu.Unlock()
	for _, a := range gone {
		g.unhold(a)
	}
	return true
}

// claim leases the cookie's address a (IPv4, or IPv6 of Pool6) to a
// resuming session: free in the local pool, and confirmed by the store.
// In strict mode (Site.Strict) a store that does not answer refuses the
// resume.
func (g *Gateway) claim(s *session, a netip.Addr) *refusal {
	pool := g.poolFor(a)
	ls := g.siteLeases()
	if ls == nil {
		return g.claimLocal(s, pool, a)
	}
	strict := g.conf().Site.Strict
	if strict && g.site.down.Load() {
		g.log.Warn("resume refused: site store unavailable (strict mode)", "session", s.id, "user", s.ident.User, "addr", a)
		return refuseSiteStrict
	}
	g.unhold(a)
	if rf := g.claimLocal(s, pool, a); rf != nil {
		return rf
	}
	ctx, cancel := context.WithTimeout(g.ctx, siteCallTimeout)
	defer cancel()
	err := g.confirm(ctx, g.leaseFor(s, a))
	var held *site.HeldError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &held):
		pool.Release(a)
		g.site.conflicts.Add(1)
		g.log.Warn("resume refused: address held by another session of the site", "session", s.id, "user", s.ident.User, "addr", a,
			"held_by", held.Holder.Session, "held_by_user", held.Holder.User, "held_on", held.Holder.Server)
		return refuseAddrTakenSite
	case strict:
		pool.Release(a)
		g.dropQueuedClaim(s.id, a)
		g.log.Warn("resume refused: site store unavailable (strict mode)", "session", s.id, "user", s.ident.User, "addr", a)
		return refuseSiteStrict
	}
	return nil // degraded: the claim is queued
}

// claimLocal claims a in this server's pool.
func (g *Gateway) claimLocal(s *session, pool leaser, a netip.Addr) *refusal {
	err := pool.Claim(s.id, a)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ippool.ErrTaken):
		other := g.sessions.lookupAddr(a)
		attrs := []any{"session", s.id, "user", s.ident.User, "addr", a}
		if other != nil {
			attrs = append(attrs, "held_by", other.id, "held_by_user", other.ident.User)
		}
		g.log.Warn("resume refused: address held by another session", attrs...)
		return refuseAddrTaken
	default: // not in this server's pool (a site whose servers disagree on Pool), or held otherwise
		g.log.Warn("resume refused: cookie's address unusable here", "session", s.id, "user", s.ident.User, "addr", a, "err", err)
		return &refusal{http.StatusServiceUnavailable, "this session's address " + a.String() + " is not usable on this server"}
	}
}

// release returns s's address a to its pool and ends its site lease
// (queued: the session's end never waits on the store). A gateway going
// away keeps its sessions' leases: their clients resume elsewhere with
// them.
func (g *Gateway) release(s *session, a netip.Addr, r EndReason) {
	g.poolFor(a).Release(a)
	if g.siteLeases() == nil || r == EndGoingAway {
		return
	}
	ss := g.site
	ss.mu.Lock()
	ss.releasing[sessionAddr{s.id, a}] = struct{}{}
	ss.mu.Unlock()
	g.queueLease(leaseOp{l: site.Lease{Addr: a, Session: s.id, Server: ss.server}, release: true})
}

// queueLease appends op to the lease queue (bounded like the outbox:
// the oldest op is dropped and counted) and wakes siteLoop.
func (g *Gateway) queueLease(op leaseOp) {
	ss := g.site
	ss.mu.Lock()
	if len(ss.leaseOps) >= siteMaxQueued {
		d := ss.leaseOps[0]
		g.log.Warn("site store queue full: oldest lease call dropped", "session", d.l.Session, "addr", d.l.Addr, "release", d.release)
		ss.leaseOps = ss.leaseOps[1:]
		ss.dropped.Add(1)
	}
	ss.leaseOps = append(ss.leaseOps, op)
	ss.mu.Unlock()
	select {
	case ss.leaseKick <- struct{}{}:
	default:
	}
}

// dropQueuedClaim removes a queued claim of a by session id (a resume
// refused after its claim was queued).
func (g *Gateway) dropQueuedClaim(id string, a netip.Addr) {
	ss := g.site
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for i, op := range ss.leaseOps {
		if !op.release && op.l.Session == id && op.l.Addr == a {
			ss.leaseOps = append(ss.leaseOps[:i], ss.leaseOps[i+1:]...)
			return
		}
	}
}

// releaseQueued performs a queued release of l (this server's session
// that ended, its release not yet sent) at once, so the address can be
// leased again. It reports whether it did.
func (g *Gateway) releaseQueued(ctx context.Context, l site.Lease) bool {
	ss := g.site
	k := sessionAddr{l.Session, l.Addr}
	ss.mu.Lock()
	_, ok := ss.releasing[k]
	ss.mu.Unlock()
	if !ok {
		return false
	}
	if err := ss.leases.ReleaseLease(ctx, l.Addr, l.Session, ss.server); err != nil {
		return false
	}
	ss.mu.Lock()
	delete(ss.releasing, k)
	ss.mu.Unlock()
	return true
}

// reconcile replays the queued lease calls in order until the queue is
// empty or the store fails. A claim the store refuses (another session of
// the site took the address during the outage) is a conflict: counted and
// logged with both sessions. The local session is not ended: both
// sessions keep working on their own servers (each server's stack routes
// only its own sessions), and the conflict matters only if one of them
// resumes on the other's server, which then refuses it (503).
func (g *Gateway) reconcile(ctx context.Context) {
	ss := g.site
	for {
		ss.mu.Lock()
		if len(ss.leaseOps) == 0 {
			ss.mu.Unlock()
			return
		}
		op := ss.leaseOps[0]
		ss.mu.Unlock()
		if !op.release {
			// Only a session still live here with that address: a claim
			// whose session ended or moved is stale.
			s := g.sessions.get(op.l.Session)
			if s == nil || !s.holds(op.l.Addr) {
				g.popLease(op)
				continue
			}
		}
		cctx, cancel := context.WithTimeout(ctx, siteCallTimeout)
		var err error
		if op.release {
			err = ss.leases.ReleaseLease(cctx, op.l.Addr, op.l.Session, op.l.Server)
		} else {
			err = ss.leases.ClaimLease(cctx, op.l)
		}
		cancel()
		var held *site.HeldError
		if errors.As(err, &held) {
			ss.conflicts.Add(1)
			g.log.Warn("site lease conflict: two live sessions hold one address (leased during a store outage)",
				"addr", op.l.Addr, "session", op.l.Session, "user", op.l.User,
				"held_by", held.Holder.Session, "held_by_user", held.Holder.User, "held_on", held.Holder.Server)
			err = nil
		}
		g.setUp(err == nil, err)
		if err != nil {
			return
		}
		g.popLease(op)
	}
}

// popLease removes the head of the lease queue if it is still op (a full
// queue may have dropped it meanwhile).
func (g *Gateway) popLease(op leaseOp) {
	ss := g.site
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.leaseOps) > 0 && ss.leaseOps[0] == op {
		ss.leaseOps = ss.leaseOps[1:]
	}
	if op.release {
		delete(ss.releasing, sessionAddr{op.l.Session, op.l.Addr})
	}
}

// ErrNoSiteLeases is SiteLeases' error without a Site.Store that
// implements site.Leases.
var ErrNoSiteLeases = errors.New("tunnel: no site store keeping address leases (Site.Store)")

// SiteLeases lists the site's address leases, which are its sessions on
// every server, from the site store: who, on which server, from which
// client address, since when, sorted by address. It returns
// ErrNoSiteLeases without a store that keeps leases, and the store's
// error when it does not answer within ctx.
func (g *Gateway) SiteLeases(ctx context.Context) ([]site.Lease, error) {
	ls := g.siteLeases()
	if ls == nil {
		return nil, ErrNoSiteLeases
	}
	return ls.Leases(ctx)
}
