package tunnel_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/testinfra/dextest"
	"github.com/underpass/underpass/tunnel"
)

// renewWait bounds waiting for the reaper (it looks every second) to renew
// or end a session whose 2-second ID token expired: a few seconds, with
// room for a loaded machine. Only an upper bound, never asserted.
const renewWait = 40 * time.Second

// ssoSignIn signs u in through the SSO v2 flow on gateway i of site (the
// in-process client and HTTP-only browser) and returns the webvpn cookie
// and the session.
func ssoSignIn(t *testing.T, site *ssoSite, i int, u dextest.User) (string, tunnel.SessionInfo) {
	t.Helper()
	oc := newOCSide(t)
	form := oc.init(t, site.addrs[i])
	tok := oc.token(t, newBrowser(t, site.addrs[i]).signIn(t, form.SSOLogin, u))
	resp, m := oc.reply(t, site.addrs[i], form.Opaque, tok)
	if m.Type != "complete" {
		t.Fatalf("reply: %+v", m)
	}
	i2 := slices.IndexFunc(resp.Cookies(), func(c *http.Cookie) bool { return c.Name == "webvpn" })
	if i2 < 0 {
		t.Fatal("no webvpn cookie")
	}
	ss := site.gws[i].Sessions()
	if len(ss) != 1 || ss[0].Method != "sso" || ss[0].User != u.Username {
		t.Fatalf("sessions: %+v", ss)
	}
	return resp.Cookies()[i2].Value, ss[0]
}

// sessionByID returns gateway gw's session id, if it has it.
func sessionByID(gw *tunnel.Gateway, id string) (tunnel.SessionInfo, bool) {
	for _, s := range gw.Sessions() {
		if s.ID == id {
			return s, true
		}
	}
	return tunnel.SessionInfo{}, false
}

// waitEnded waits for session id of site to end and returns why.
func waitEnded(t *testing.T, site *ssoSite, id string) tunnel.EndReason {
	t.Helper()
	var why tunnel.EndReason
	waitFor(t, renewWait, "the session to end", func() bool {
		var ended bool
		why, ended = site.ended(id)
		return ended
	})
	return why
}

// TestSSORefresh runs SSO sessions with refresh (offline_access) against
// a real Dex whose ID tokens last 2 seconds: a session outlives many ID
// tokens, renewed by the IdP each time (its token expiry moves on, its
// groups stay, it still resumes); a refresh token Dex refuses ends the
// session (EndRenewalFailed), and a resume with its cookie on another
// server of the site is refused with the reason; the access policy is
// re-checked at each renewal, so a user it no longer admits loses the
// session without reconnecting (EndPolicyDenied).
func TestSSORefresh(t *testing.T) {
	refresh := func(_ int, c *auth.SSOConfig) { c.Refresh = true }

	t.Run("expired ID tokens renewed", func(t *testing.T) {
		site := startSSOSiteWith(t, dextest.Options{IDTokenTTL: "2s"}, nil, 1, refresh)
		cookie, s := ssoSignIn(t, site, 0, dextest.Alice)
		first := s.TokenExpiry
		if first.IsZero() || time.Until(first) > time.Minute {
			t.Fatalf("token expiry %v: want Dex's 2-second ID token's", first)
		}
		if time.Until(s.Expires) < 50*time.Minute {
			t.Fatalf("SSO session with refresh ends in %v: capped at the ID token", time.Until(s.Expires))
		}
		// Three renewals at least: each new ID token expires 2 s after
		// the previous one expired.
		var now tunnel.SessionInfo
		waitFor(t, renewWait, "three renewals", func() bool {
			var ok bool
			now, ok = sessionByID(site.gws[0], s.ID)
			return !ok || !now.TokenExpiry.Before(first.Add(6*time.Second))
		})
		if why, ended := site.ended(s.ID); ended {
			t.Fatalf("session ended: %s", why)
		}
		if !slices.Contains(now.Groups, "vpn-users") {
			t.Fatalf("renewed groups: %v", now.Groups)
		}
		if st, reason := tunnel.CSTPAnswerForTest(site.addrs[0], cookie); st != http.StatusOK {
			t.Fatalf("resume after renewals: %d %q", st, reason)
		}
	})

	t.Run("refresh the IdP refuses ends the session", func(t *testing.T) {
		// Dex refuses refresh tokens older than 1 s: the first renewal,
		// at the 2-second ID token's expiry, is refused.
		site := startSSOSiteWith(t, dextest.Options{IDTokenTTL: "2s", RefreshTokenLifetime: "1s"}, nil, 2, refresh)
		cookie, s := ssoSignIn(t, site, 0, dextest.Alice)
		why := waitEnded(t, site, s.ID)
		if why != tunnel.EndRenewalFailed {
			t.Fatalf("ended with %q, want %q", why, tunnel.EndRenewalFailed)
		}
		if st, _ := tunnel.CSTPAnswerForTest(site.addrs[0], cookie); st != http.StatusUnauthorized {
			t.Fatalf("resume on the same server: %d", st)
		}
		// Another server of the site opens the sealed cookie, finds the
		// ID token expired and asks Dex, which refuses.
		st, reason := tunnel.CSTPAnswerForTest(site.addrs[1], cookie)
		if st != http.StatusUnauthorized || !strings.Contains(reason, "sign-in renewal failed: the identity provider refused to renew the sign-in") {
			t.Fatalf("resume on another server: %d %q", st, reason)
		}
	})

	t.Run("policy re-checked at renewal", func(t *testing.T) {
		var removed atomic.Bool
		groups := &auth.Rules{AllowGroups: []string{"vpn-users"}}
		policy := auth.PolicyFunc(func(ctx context.Context, id *auth.Identity) error {
			if removed.Load() {
				// What the policy says once the user left vpn-users.
				return &auth.DeniedError{Reason: "your account is not in a group allowed to use this VPN"}
			}
			return groups.Check(ctx, id)
		})
		site := startSSOSiteWith(t, dextest.Options{IDTokenTTL: "2s"}, policy, 1, refresh)
		_, s := ssoSignIn(t, site, 0, dextest.Alice)
		removed.Store(true)
		why := waitEnded(t, site, s.ID)
		if why != tunnel.EndPolicyDenied {
			t.Fatalf("ended with %q, want %q", why, tunnel.EndPolicyDenied)
		}
	})
}
