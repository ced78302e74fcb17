package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// TestSSOCallback drives the browser steps against an in-process IdP that
// checks PKCE S256 and puts the authorize request's nonce (or another one)
// in its ID token: the login redirect's parameters and state cookie, and
// the callback's refusals for a wrong nonce, a PKCE mismatch, a state
// mismatch and a policy denial.
func TestSSOCallback(t *testing.T) {
	f := newFakeIdP(t)
	o := newTestOIDC(t, f, nil)
	key, _ := ParseSealerKey(GenerateSealerKey())
	sealer, _ := NewSealer(nil, key)
	var logs testenv.LogBuffer
	s, err := NewSSO(SSOConfig{OIDC: o, PublicURL: "https://vpn.example.com/vpn-4f9c", Sealer: sealer,
		Policy: &Rules{AllowGroups: []string{"vpn-users"}}, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	priv, hdr := strapPair(t)
	k, _ := ParseSTRAPKey(hdr)

	// start begins a sign-in and opens its login link: the form, the state
	// cookie and the authorize request's parameters.
	start := func(t *testing.T, s *SSO) (*SSOForm, *http.Cookie, url.Values) {
		t.Helper()
		form, err := s.Begin(k)
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, form.LoginURL, nil))
		loc, err := url.Parse(rec.Header().Get("Location"))
		if rec.Code != http.StatusFound || err != nil || !strings.HasPrefix(loc.String(), f.srv.URL+"/auth?") {
			t.Fatalf("login: %d %q", rec.Code, rec.Header().Get("Location"))
		}
		q := loc.Query()
		if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("nonce") == "" || q.Get("state") == "" ||
			q.Get("redirect_uri") != "https://vpn.example.com/vpn-4f9c/sso/callback" || q.Get("response_mode") != "query" || q.Get("response_type") != "code" {
			t.Fatalf("authorize request: %v", q)
		}
		cs := rec.Result().Cookies()
		if len(cs) != 1 || !cs[0].Secure || !cs[0].HttpOnly || cs[0].SameSite != http.SameSiteLaxMode || cs[0].Path != "/vpn-4f9c/sso/" {
			t.Fatalf("state cookie: %+v", cs)
		}
		return form, cs[0], q
	}
	// callback returns the IdP to the gateway and, if the browser is sent
	// to the client's listener, finishes the sign-in with what it carries.
	callback := func(t *testing.T, s *SSO, form *SSOForm, c *http.Cookie, q url.Values) (*Identity, error) {
		t.Helper()
		req := httptest.NewRequest(http.MethodGet, "https://vpn.example.com/vpn-4f9c/sso/callback?"+q.Encode(), nil)
		req.AddCookie(c)
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		loc, err := url.Parse(rec.Header().Get("Location"))
		if rec.Code != http.StatusFound || err != nil || loc.Host != "[::1]:29786" {
			t.Fatalf("callback: %d %q %s", rec.Code, rec.Header().Get("Location"), rec.Body)
		}
		blob, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(loc.Path, "/api/sso/"))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := OpenSTRAPBlob(priv, blob)
		if err != nil {
			t.Fatal(err)
		}
		return s.Finish(context.Background(), k, form.Opaque, string(tok))
	}
	var secrets []string // codes, states and nonces: never logged
	code := func(q url.Values, c fakeCode) url.Values {
		secrets = append(secrets, "code-"+q.Get("state"), q.Get("state"), q.Get("nonce"))
		f.issueCode("code-"+q.Get("state"), c)
		return url.Values{"code": {"code-" + q.Get("state")}, "state": {q.Get("state")}}
	}

	t.Run("signed in", func(t *testing.T) {
		form, c, q := start(t, s)
		id, err := callback(t, s, form, c, code(q, fakeCode{challenge: q.Get("code_challenge"), nonce: q.Get("nonce"), user: "alice@example.com"}))
		if err != nil || id.User != "alice@example.com" || id.Method != "sso" || len(id.Groups) != 1 {
			t.Fatalf("%+v %v", id, err)
		}
	})
	for _, tc := range []struct {
		name string
		mod  func(q url.Values) url.Values
		want string
	}{
		{"nonce of another sign-in", func(q url.Values) url.Values {
			return code(q, fakeCode{challenge: q.Get("code_challenge"), nonce: "another", user: "alice@example.com"})
		}, "nonce"},
		{"PKCE verifier that does not match", func(q url.Values) url.Values {
			return code(q, fakeCode{challenge: "not-the-challenge", nonce: q.Get("nonce"), user: "alice@example.com"})
		}, "did not complete the sign-in"},
		{"state of another sign-in", func(q url.Values) url.Values {
			v := code(q, fakeCode{challenge: q.Get("code_challenge"), nonce: q.Get("nonce"), user: "alice@example.com"})
			v.Set("state", "forged")
			return v
		}, "does not match this sign-in"},
		{"user outside the allowed groups", func(q url.Values) url.Values {
			return code(q, fakeCode{challenge: q.Get("code_challenge"), nonce: q.Get("nonce"), user: "bob@example.com"})
		}, "not in a group allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			form, c, q := start(t, s)
			id, err := callback(t, s, form, c, tc.mod(q))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %+v, %v; want %q", id, err, tc.want)
			}
			if tc.want == "not in a group allowed" && !errors.Is(err, ErrDenied) {
				t.Fatalf("policy refusal is not a denial: %v", err)
			}
		})
	}
	t.Run("refresh", func(t *testing.T) {
		sr, err := NewSSO(SSOConfig{OIDC: o, PublicURL: "https://vpn.example.com/vpn-4f9c", Sealer: sealer,
			Policy: &Rules{AllowGroups: []string{"vpn-users"}}, Refresh: true})
		if err != nil {
			t.Fatal(err)
		}
		signIn := func(t *testing.T, offline bool) (*Identity, error) {
			form, c, q := start(t, sr)
			if !strings.Contains(" "+q.Get("scope")+" ", " offline_access ") {
				t.Fatalf("scope without offline_access: %q", q.Get("scope"))
			}
			return callback(t, sr, form, c, code(q, fakeCode{challenge: q.Get("code_challenge"), nonce: q.Get("nonce"), user: "alice@example.com", offline: offline}))
		}
		id, err := signIn(t, true)
		if err != nil || id.Refresh == "" || id.Expiry.IsZero() {
			t.Fatalf("signed in: %+v %v", id, err)
		}
		f.mu.Lock()
		for rt := range f.refresh {
			if strings.Contains(id.Refresh, rt) {
				t.Fatal("refresh token in clear in the identity")
			}
		}
		f.mu.Unlock()
		// Two renewals: the second uses the token the first rotated in.
		for i := range 2 {
			nid, err := sr.Refresh(context.Background(), id)
			if err != nil || nid.User != id.User || nid.Method != "sso" || nid.Refresh == id.Refresh || len(nid.Groups) != 1 {
				t.Fatalf("renewal %d: %+v %v", i, nid, err)
			}
			id = nid
		}
		t.Run("refused by the IdP", func(t *testing.T) {
			f.set(func(f *fakeIdP) { clear(f.refresh) })
			_, err := sr.Refresh(context.Background(), id)
			var se *SSOError
			if !errors.As(err, &se) || !errors.Is(err, ErrInvalidCredentials) || !strings.Contains(se.Reason, "refused to renew the sign-in (invalid_grant)") {
				t.Fatalf("revoked refresh token: %v", err)
			}
		})
		t.Run("renewed as another user", func(t *testing.T) {
			id, err := signIn(t, true)
			if err != nil {
				t.Fatal(err)
			}
			f.set(func(f *fakeIdP) { f.refreshAs = "bob@example.com" })
			defer f.set(func(f *fakeIdP) { f.refreshAs = "" })
			if _, err := sr.Refresh(context.Background(), id); err == nil || !strings.Contains(err.Error(), "for another user") {
				t.Fatalf("renewal as bob: %v", err)
			}
		})
		t.Run("no refresh token from the IdP", func(t *testing.T) {
			if _, err := signIn(t, false); err == nil || !strings.Contains(err.Error(), "issued no refresh token") {
				t.Fatalf("sign-in without a refresh token: %v", err)
			}
		})
		t.Run("forged refresh state", func(t *testing.T) {
			if _, err := sr.Refresh(context.Background(), &Identity{User: "alice@example.com", Refresh: "forged"}); err == nil || !strings.Contains(err.Error(), "cannot be renewed") {
				t.Fatalf("forged: %v", err)
			}
		})
	})
	if out := logs.String(); !strings.Contains(out, "denied by policy") {
		t.Fatalf("no log lines:\n%s", out)
	} else {
		for _, v := range secrets {
			if strings.Contains(out, v) {
				t.Fatalf("log contains a code, state or nonce:\n%s", out)
			}
		}
	}
}
