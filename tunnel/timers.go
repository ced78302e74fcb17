package tunnel

// Every timer of a session and its connections, with what happens when it
// fires (after wireguard-go's device/timers.go):
//
//   - DPD (per connection, every DPD/2): after DPD of silence the gateway
//     probes (CSTP DPD request); after 2.5 DPD of silence the peer is dead
//     and the connection ends (EndDeadPeer). QUIC uses its own idle timeout
//     of the same 2.5 DPD (quicConfig).
//   - Idle (per connection, checked with DPD): no data for IdleTimeout ends
//     the session (EndIdleTimeout).
//   - Expiry (per connection, armed at the session's expiry): ends the
//     session (EndSessionTimeout, R-C5).
//   - Grace (per session, the reaper, every second): a session without a
//     connection for ReconnectGrace ends (EndGraceExpired), resetting its
//     flows; so does one past its expiry while disconnected.
//   - Revocations (the reaper): forgotten once the cookie would have expired.
//   - TLS session ticket keys (the reaper): with a Sealer, the keys move to
//     a new period's every ticketKeyPeriod (24 h; tickets.go).
//   - Renewal (per session, the reaper): an SSO sign-in with a refresh
//     token is renewed once its ID token has expired (renew.go); a failed
//     renewal ends the session (EndRenewalFailed, EndPolicyDenied).

import (
	"time"
)

// linkTimers are one connection's timers.
type linkTimers struct {
	b      *linkBase
	tick   *time.Ticker // DPD/2: DPD probes, dead peer, idle
	expiry *time.Timer
	idle   idleWatch
}

func newLinkTimers(b *linkBase) *linkTimers {
	return &linkTimers{
		b: b,
		// Checks at twice the DPD rate, so a probe goes out at most half
		// an interval late.
		tick:   time.NewTicker(b.cfg.DPD / 2),
		expiry: time.NewTimer(time.Until(b.s.expires)),
		idle:   newIdleWatch(b.s),
	}
}

func (t *linkTimers) stop() {
	t.tick.Stop()
	t.expiry.Stop()
}

// check runs the DPD and idle rules at now.
func (t *linkTimers) check(w wire, now time.Time) (EndReason, error) {
	silent := now.Sub(time.Unix(0, t.b.lastRx.Load()))
	if r, err := w.probe(silent); r != endNone || err != nil {
		return r, err
	}
	if t.idle.expired(now, t.b.cfg.IdleTimeout) {
		return EndIdleTimeout, nil
	}
	return endNone, nil
}

// deadPeerAfter is the silence after which a client is gone: openconnect
// declares the gateway dead after 2 DPD intervals, so a live client has
// reconnected by then; half an interval more covers a probe in flight.
func deadPeerAfter(dpd time.Duration) time.Duration { return 2*dpd + dpd/2 }

// idleWatch tells when a session has moved no data for the idle timeout.
type idleWatch struct {
	s    *session
	last uint64    // bytes in+out at the last change
	from time.Time // when they last changed
}

func newIdleWatch(s *session) idleWatch {
	return idleWatch{s: s, last: s.bytesIn.Load() + s.bytesOut.Load(), from: time.Now()}
}

// expired reports whether nothing moved for longer than limit (0: never).
func (w *idleWatch) expired(now time.Time, limit time.Duration) bool {
	if io := w.s.bytesIn.Load() + w.s.bytesOut.Load(); io != w.last {
		w.last, w.from = io, now
		return false
	}
	return limit > 0 && now.Sub(w.from) > limit
}

// reap ends sessions past their timeout and disconnected sessions past the
// reconnect grace.
func (g *Gateway) reap() {
	defer g.wg.Done()
	// Once a second is plenty: timeouts are minutes long.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case now := <-tick.C:
			g.pruneRevoked(now)
			g.tickets.rotate(now)
			for _, s := range g.sessions.all() {
				s.mu.Lock()
				detachedFor := time.Duration(0)
				if s.link == nil {
					detachedFor = now.Sub(s.detached)
				}
				s.mu.Unlock()
				switch {
				case now.After(s.expires):
					g.endSession(s, EndSessionTimeout)
				case detachedFor > g.conf().ReconnectGrace:
					g.endSession(s, EndGraceExpired)
				default:
					g.renewInBackground(s, now)
				}
			}
		}
	}
}
