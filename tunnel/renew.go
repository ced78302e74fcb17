package tunnel

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/underpass/underpass/auth"
)

// renewTimeout bounds a renewal the reaper starts: one IdP round trip
// (auth.SSO.Refresh bounds that by 20 s) plus the policy check.
const renewTimeout = 30 * time.Second

// renewDue reports whether an identity's sign-in must be renewed at now:
// it carries a refresh token (auth.Identity.Refresh) and its ID token has
// expired.
func renewDue(id *auth.Identity, now time.Time) bool {
	return id.Refresh != "" && !id.Expiry.IsZero() && !now.Before(id.Expiry)
}

// renew renews s's sign-in if it is due (auth.SSO.Refresh) and re-checks
// the access policy on the renewed identity (R-A4), which then becomes the
// session's. It returns why the session must end (EndRenewalFailed,
// EndPolicyDenied) and the error saying so, or endNone and nil. Renewals
// of one session run one at a time; a second caller finds the first's
// result.
func (g *Gateway) renew(ctx context.Context, s *session) (EndReason, error) {
	s.renewMu.Lock()
	defer s.renewMu.Unlock()
	id := s.identity()
	if !renewDue(id, time.Now()) {
		return endNone, nil
	}
	c := g.conf()
	if c.SSO == nil {
		return EndRenewalFailed, &auth.SSOError{Reason: "browser sign-in is no longer configured; sign in again"}
	}
	nid, err := c.SSO.Refresh(ctx, id)
	if err != nil {
		return EndRenewalFailed, err
	}
	if c.Policy != nil {
		if err := c.Policy.Check(ctx, nid); err != nil {
			return EndPolicyDenied, err
		}
	}
	s.mu.Lock()
	s.renewed = nid
	s.mu.Unlock()
	g.log.Info("sign-in renewed", "session", s.id, "user", s.ident.User, "token_expiry", nid.Expiry)
	return endNone, nil
}

// renewRefusal is what a client whose resume failed a renewal is told
// (X-Reason; openconnect prints it).
func renewRefusal(r EndReason, err error) *refusal {
	reason := "access denied"
	var se *auth.SSOError
	var de *auth.DeniedError
	switch {
	case errors.As(err, &se):
		reason = "sign-in renewal failed: " + se.Reason
	case errors.As(err, &de):
		reason = "access denied: " + de.Reason
	case r == EndRenewalFailed:
		reason = "sign-in renewal failed"
	}
	return &refusal{http.StatusUnauthorized, reason}
}

// renewInBackground starts a renewal of s if one is due and none is
// running (the reaper's check: a connected session is renewed while it
// runs); a failed renewal ends the session with its reason. The gateway
// stopping is not a failure.
func (g *Gateway) renewInBackground(s *session, now time.Time) {
	if !renewDue(s.identity(), now) || !s.renewing.CompareAndSwap(false, true) {
		return
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		defer s.renewing.Store(false)
		ctx, cancel := context.WithTimeout(g.ctx, renewTimeout)
		defer cancel()
		r, err := g.renew(ctx, s)
		if err == nil || g.ctx.Err() != nil {
			return
		}
		g.log.Info("session renewal failed", "session", s.id, "user", s.ident.User, "reason", r.String(), "err", err)
		g.endSession(s, r)
	}()
}
