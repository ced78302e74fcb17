package auth

import (
	"container/list"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// BanConfig configures Bans. Zero fields take the defaults below.
type BanConfig struct {
	// Threshold is the score at which an address is banned. Default 20:
	// with the default FailurePoints the tenth quick wrong password bans.
	Threshold int
	// BanFor is how long a ban lasts. Default 5m (ocserv's default too).
	BanFor time.Duration
	// Decay forgets one point per interval. Default 1m: with the default
	// FailurePoints, one wrong password every two minutes never adds up.
	Decay time.Duration
	// MaxEntries caps tracked (not yet banned) addresses, evicting the
	// least recently seen; MaxBans caps active bans the same way. Default
	// 65536 each: about 10 MB worst case under an address spray.
	MaxEntries int
	MaxBans    int
	// IPv6Prefix groups IPv6 sources by this prefix length, since one
	// client usually owns a whole /64. Default 64; 128 disables grouping.
	IPv6Prefix int
	// Now is the clock (tests inject a fake). Default time.Now.
	Now func() time.Time
}

// FailurePoints is the score a wrong sign-in normally earns (ocserv uses 10
// per wrong password with a threshold of 20 and counts connections too; a
// finer 2 lets the threshold be tuned in small steps).
const FailurePoints = 2

// Ban is one listed address.
type Ban struct {
	Addr   netip.Addr // the source, or the first address of its IPv6 prefix
	Points int
	Until  time.Time // zero if not banned
}

// Bans keeps ban points per source address (R-A5). It is safe for
// concurrent use; Banned is cheap enough to call before any TLS work.
// Memory is bounded: scores and bans each live in an LRU list capped by
// MaxEntries/MaxBans, so an address spray evicts old scores, not the map.
type Bans struct {
	cfg BanConfig

	mu     sync.RWMutex
	scores map[netip.Addr]*list.Element // of *scoreEntry, most recent at front
	order  *list.List
	bans   map[netip.Addr]*list.Element // of *banEntry, newest at front
	border *list.List
}

type scoreEntry struct {
	addr   netip.Addr
	points int
	last   time.Time // time the decay was last applied
}

type banEntry struct {
	addr   netip.Addr
	points int
	until  time.Time
}

// NewBans returns an empty ban list.
func NewBans(cfg BanConfig) *Bans {
	if cfg.Threshold <= 0 {
		cfg.Threshold = 20
	}
	if cfg.BanFor <= 0 {
		cfg.BanFor = 5 * time.Minute
	}
	if cfg.Decay <= 0 {
		cfg.Decay = time.Minute
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 1 << 16
	}
	if cfg.MaxBans <= 0 {
		cfg.MaxBans = 1 << 16
	}
	if cfg.IPv6Prefix <= 0 || cfg.IPv6Prefix > 128 {
		cfg.IPv6Prefix = 64
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Bans{
		cfg:    cfg,
		scores: make(map[netip.Addr]*list.Element),
		order:  list.New(),
		bans:   make(map[netip.Addr]*list.Element),
		border: list.New(),
	}
}

// key normalises a source: IPv4-mapped IPv6 becomes IPv4, IPv6 is masked
// to the configured prefix, zones are dropped.
func (b *Bans) key(ip netip.Addr) netip.Addr {
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		if p, err := ip.Prefix(b.cfg.IPv6Prefix); err == nil {
			return p.Addr()
		}
	}
	return ip
}

// Banned reports whether ip is currently banned.
func (b *Bans) Banned(ip netip.Addr) bool {
	_, ok := b.BannedUntil(ip)
	return ok
}

// BannedUntil returns the end of ip's ban, if it is banned.
func (b *Bans) BannedUntil(ip netip.Addr) (time.Time, bool) {
	if !ip.IsValid() {
		return time.Time{}, false
	}
	k := b.key(ip)
	b.mu.RLock()
	defer b.mu.RUnlock()
	e, ok := b.bans[k]
	if !ok {
		return time.Time{}, false
	}
	until := e.Value.(*banEntry).until
	if !b.cfg.Now().Before(until) {
		return time.Time{}, false
	}
	return until, true
}

// AddFailure adds points to ip's score and reports whether ip is banned
// afterwards. points <= 0 means FailurePoints.
func (b *Bans) AddFailure(ip netip.Addr, points int) bool {
	if !ip.IsValid() {
		return false
	}
	if points <= 0 {
		points = FailurePoints
	}
	k := b.key(ip)
	now := b.cfg.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if e, ok := b.bans[k]; ok {
		be := e.Value.(*banEntry)
		if now.Before(be.until) {
			// Failures during a ban (from connections already past the
			// gate) do not extend it: a ban must end even under attack
			// so a shared NAT address recovers.
			be.points += points
			return true
		}
		b.border.Remove(e)
		delete(b.bans, k)
	}
	var se *scoreEntry
	if e, ok := b.scores[k]; ok {
		se = e.Value.(*scoreEntry)
		b.order.MoveToFront(e)
		b.decay(se, now)
	} else {
		for b.order.Len() >= b.cfg.MaxEntries {
			old := b.order.Back()
			b.order.Remove(old)
			delete(b.scores, old.Value.(*scoreEntry).addr)
		}
		se = &scoreEntry{addr: k, last: now}
		b.scores[k] = b.order.PushFront(se)
	}
	se.points += points
	if se.points < b.cfg.Threshold {
		return false
	}
	b.order.Remove(b.scores[k])
	delete(b.scores, k)
	for b.border.Len() >= b.cfg.MaxBans {
		old := b.border.Back()
		b.border.Remove(old)
		delete(b.bans, old.Value.(*banEntry).addr)
	}
	b.bans[k] = b.border.PushFront(&banEntry{addr: k, points: se.points, until: now.Add(b.cfg.BanFor)})
	return true
}

// decay forgets one point per elapsed Decay interval.
func (b *Bans) decay(se *scoreEntry, now time.Time) {
	n := int(now.Sub(se.last) / b.cfg.Decay)
	if n <= 0 {
		return
	}
	se.points = max(se.points-n, 0)
	se.last = se.last.Add(time.Duration(n) * b.cfg.Decay)
}

// Points returns ip's current score (after decay; the ban score if banned).
func (b *Bans) Points(ip netip.Addr) int {
	k := b.key(ip)
	now := b.cfg.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if e, ok := b.bans[k]; ok && now.Before(e.Value.(*banEntry).until) {
		return e.Value.(*banEntry).points
	}
	if e, ok := b.scores[k]; ok {
		se := e.Value.(*scoreEntry)
		b.decay(se, now)
		return se.points
	}
	return 0
}

// List returns active bans, soonest-ending first, and drops expired ones.
func (b *Bans) List() []Ban {
	now := b.cfg.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Ban, 0, len(b.bans))
	for k, e := range b.bans {
		be := e.Value.(*banEntry)
		if !now.Before(be.until) {
			b.border.Remove(e)
			delete(b.bans, k)
			continue
		}
		out = append(out, Ban{Addr: be.addr, Points: be.points, Until: be.until})
	}
	slices.SortFunc(out, func(a, c Ban) int { return a.Until.Compare(c.Until) })
	return out
}

// Impose bans ip until the given time, as another server of the site
// decided (a ban published through the site store). An active ban that
// already lasts at least as long is kept; an until in the past is
// ignored. It reports whether ip is banned afterwards.
func (b *Bans) Impose(ip netip.Addr, until time.Time) bool {
	if !ip.IsValid() {
		return false
	}
	k := b.key(ip)
	now := b.cfg.Now()
	if !now.Before(until) {
		return b.Banned(ip)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if e, ok := b.bans[k]; ok {
		be := e.Value.(*banEntry)
		if !be.until.Before(until) {
			return true
		}
		be.until = until
		return true
	}
	points := b.cfg.Threshold
	if e, ok := b.scores[k]; ok {
		points = max(points, e.Value.(*scoreEntry).points)
		b.order.Remove(e)
		delete(b.scores, k)
	}
	for b.border.Len() >= b.cfg.MaxBans {
		old := b.border.Back()
		b.border.Remove(old)
		delete(b.bans, old.Value.(*banEntry).addr)
	}
	b.bans[k] = b.border.PushFront(&banEntry{addr: k, points: points, until: until})
	return true
}

// Lift ends ip's ban and forgets its score; it reports whether a ban was
// active.
func (b *Bans) Lift(ip netip.Addr) bool {
	k := b.key(ip)
	now := b.cfg.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if e, ok := b.scores[k]; ok {
		b.order.Remove(e)
		delete(b.scores, k)
	}
	e, ok := b.bans[k]
	if !ok {
		return false
	}
	b.border.Remove(e)
	delete(b.bans, k)
	return now.Before(e.Value.(*banEntry).until)
}

// Len returns the number of tracked addresses (scores plus bans), for
// metrics and the memory-bound test.
func (b *Bans) Len() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.scores) + len(b.bans)
}
