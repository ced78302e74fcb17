package auth

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// SSO is the browser sign-in of AnyConnect clients (SSO v2, external
// browser; openconnect --external-browser; R-A6), with the gateway as an
// OIDC relying party: authorization code + PKCE S256 + nonce
// (shared/docs/sso.md). The steps:
//
//  1. Begin, at the client's init: a sealed login ticket (the login URL)
//     and a sealed opaque for the form, both carrying the client's STRAP
//     key.
//  2. GET <PublicURL>/sso/login?t=TICKET (the browser): a sealed state
//     cookie and a redirect to the IdP's authorize endpoint.
//  3. GET <PublicURL>/sso/callback (the browser, back from the IdP): code
//     exchange, ID token verification (the OIDC verifier's rules), nonce,
//     access policy; then a sealed one-time token, encrypted to the
//     client's STRAP key, is delivered by redirecting the browser to the
//     client's listener http://[::1]:29786/api/sso/<blob>. Refusals and IdP
//     errors travel the same way, so the client always wakes up.
//  4. Finish, at the client's auth-reply: the token, bound to the same
//     STRAP key and opaque, yields the Identity (Method "sso").
//
// All state is sealed with the site key (SSOConfig.Sealer), so any server
// of a site can serve any step; each server keeps only a replay cache of
// used login links, callbacks and tokens. A link or token replayed on
// another server within its short lifetime is not detected there.
type SSO struct {
	cfg     SSOConfig
	conf    oauth2.Config
	base    *url.URL // PublicURL, no trailing slash
	log     *slog.Logger
	replays replayCache
}

// SSOConfig configures browser sign-in.
type SSOConfig struct {
	// OIDC verifies the IdP's ID token (the same rules as bearer tokens)
	// and supplies the endpoints, client ID and client secret. Required;
	// its OIDCConfig.ClientID is required.
	OIDC *OIDC
	// PublicURL is the site's public base URL, e.g.
	// "https://vpn.example.com" or, behind a secret path,
	// "https://vpn.example.com/vpn-4f9c". Every URL the gateway hands out
	// is built from it, never from a request's Host header. The IdP must
	// accept PublicURL + "/sso/callback" as a redirect URI. Required,
	// https.
	PublicURL string
	// Sealer seals every piece of sign-in state with the site key.
	// Required.
	Sealer *Sealer
	// Policy, if set, is checked at the callback, so a refusal reaches
	// the client's listener with its reason.
	Policy Policy
	// Scopes requested at the IdP. Default: the OIDC verifier's scopes.
	Scopes []string
	// LoginTTL bounds a sign-in from the client's init to the IdP's
	// callback (the user's time at the IdP, MFA included). Default 10m.
	LoginTTL time.Duration
	// CapAtTokenExpiry ends an SSO session when the IdP's ID token
	// expires. Off by default: the ID token only proves the sign-in
	// (OpenID Connect Core §2: exp bounds accepting the token, not the
	// session), Entra's lasts 60-90 minutes, and capping would send users
	// to the browser every hour. The session then lasts the gateway's
	// maximum session age (tunnel.Config.SessionTimeout, R-C5), and the
	// access policy is re-checked whenever it resumes.
	CapAtTokenExpiry bool
	// Refresh asks the IdP for a refresh token (the offline_access scope,
	// OpenID Connect Core §11, added to Scopes) and renews the sign-in
	// with it each time the ID token expires (SSO.Refresh, RFC 6749 §6):
	// the IdP judges the user again (a disabled account or a revoked grant
	// is refused), and the caller re-checks the access policy on the
	// renewed groups and claims (R-A4). A renewal that fails ends the
	// session. The refresh token is sealed with the site key wherever it
	// goes (the one-time token, Identity.Refresh, the session cookie); the
	// client never sees it in clear. It cannot be combined with
	// CapAtTokenExpiry.
	Refresh bool
	// Logger receives operational messages (never codes or tokens).
	// Default: discard.
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

const (
	// SSOCapability is the auth-method an init advertises when the client
	// can run an external browser (openconnect 9.01 auth.c).
	SSOCapability = "single-sign-on-external-browser"
	// SSOListener is where openconnect waits for the browser leg: IPv6
	// loopback only, port 29786 (sso.md §3).
	SSOListener = "http://[::1]:29786"
	// ssoTokenTTL: the one-time token lives about a minute (sso.md §7):
	// the client posts it within milliseconds of receiving it.
	ssoTokenTTL = 60 * time.Second
	// defaultLoginTTL leaves room for MFA and password resets at the IdP.
	defaultLoginTTL = 10 * time.Minute
	// ssoExchangeTimeout bounds the code exchange (one IdP round trip).
	ssoExchangeTimeout = 20 * time.Second
	// maxSSOToken bounds the hex token so that the browser's request line
	// to the client stays within openconnect's 4096 bytes: hex doubles,
	// the container adds 131 bytes, base64 adds a third and escaping a
	// little more; 2000 hex characters give a line of about 3000.
	maxSSOToken = 2000
	// ssoStateCookie is the state cookie's name.
	ssoStateCookie = "underpass_sso"
)

// Seal purposes: a value sealed for one never opens as another.
const (
	purposeTicket  = "underpass sso ticket v1"
	purposeOpaque  = "underpass sso opaque v1"
	purposeState   = "underpass sso state v1"
	purposeToken   = "underpass sso token v1"
	purposeRefresh = "underpass sso refresh v1"
)

// ScopeOfflineAccess asks an OIDC IdP for a refresh token (OpenID Connect
// Core §11).
const ScopeOfflineAccess = "offline_access"

// NewSSO checks cfg and prepares the OAuth2 client.
func NewSSO(cfg SSOConfig) (*SSO, error) {
	if cfg.OIDC == nil {
		return nil, errors.New("auth: sso: an OIDC verifier is required")
	}
	if cfg.OIDC.cfg.ClientID == "" {
		return nil, errors.New("auth: sso: the OIDC client ID is required")
	}
	if cfg.Sealer == nil {
		return nil, errors.New("auth: sso: a sealer (the site key) is required")
	}
	u, err := url.Parse(strings.TrimSuffix(cfg.PublicURL, "/"))
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("auth: sso: public URL %q: want https://host[/path] without query", cfg.PublicURL)
	}
	if cfg.LoginTTL <= 0 {
		cfg.LoginTTL = defaultLoginTTL
	}
	if cfg.Refresh && cfg.CapAtTokenExpiry {
		return nil, errors.New("auth: sso: refresh and capping the session at the ID token's expiry exclude each other")
	}
	if len(cfg.Scopes) == 0 {
		cfg.Scopes = cfg.OIDC.cfg.Scopes
	}
	if cfg.Refresh && !slices.Contains(cfg.Scopes, ScopeOfflineAccess) {
		cfg.Scopes = append(slices.Clip(cfg.Scopes), ScopeOfflineAccess)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ep := cfg.OIDC.provider.Endpoint()
	ep.AuthStyle = oauth2.AuthStyle(cfg.OIDC.authStyle)
	s := &SSO{
		cfg: cfg, base: u, log: orDiscard(cfg.Logger),
		conf: oauth2.Config{
			ClientID: cfg.OIDC.cfg.ClientID, ClientSecret: cfg.OIDC.cfg.ClientSecret,
			Endpoint: ep, Scopes: cfg.Scopes, RedirectURL: u.String() + "/sso/callback",
		},
	}
	s.replays.now = cfg.Now
	return s, nil
}

// SSOForm is what the gateway puts in the SSO form for one client.
type SSOForm struct {
	LoginURL string // <sso-v2-login>: what the browser opens
	FinalURL string // <sso-v2-login-final>
	Opaque   string // <opaque>, echoed back at the auth-reply
}

// ssoTicket is the sealed login link: the client's STRAP key and the
// sign-in's ID.
type ssoTicket struct {
	ID  string    `json:"i"`
	Key []byte    `json:"k"` // STRAP SPKI DER
	Exp time.Time `json:"x"`
}

// ssoOpaque binds the auth-reply to the sign-in and the STRAP key.
type ssoOpaque struct {
	ID      string    `json:"i"`
	KeyHash []byte    `json:"h"`
	Exp     time.Time `json:"x"`
}

// ssoState is the state cookie: everything the callback needs.
type ssoState struct {
	ID       string    `json:"i"`
	Key      []byte    `json:"k"`
	State    string    `json:"s"`
	Nonce    string    `json:"n"`
	Verifier string    `json:"v"`
	Exp      time.Time `json:"x"`
}

// ssoToken is the one-time token: an identity or a refusal.
type ssoToken struct {
	ID       string         `json:"i"` // the sign-in's ID
	TokenID  string         `json:"t"`
	KeyHash  []byte         `json:"h"`
	Exp      time.Time      `json:"x"`
	Identity *SessionClaims `json:"id,omitempty"`
	Refusal  string         `json:"r,omitempty"`
	Kind     string         `json:"k,omitempty"` // refusal kind: denied, failed, unavailable
	// Refresh is the IdP's refresh token (SSOConfig.Refresh), in clear
	// inside this sealed token: sealing it twice would cost the
	// listener's request line about 150 bytes.
	Refresh string `json:"rt,omitempty"`
}

// ssoRefresh is a sealed refresh token (Identity.Refresh).
type ssoRefresh struct {
	Token   string `json:"t"`
	Subject string `json:"s"` // Identity.Subject, else User, at sign-in: a renewal must name the same principal
}

// SSOError is a failed browser sign-in. Reason is safe to show the user.
// It wraps ErrInvalidCredentials, or ErrUnavailable when the IdP could not
// be used.
type SSOError struct {
	Reason      string
	Unavailable bool
}

func (e *SSOError) Error() string { return "auth: sso: " + e.Reason }

// Unwrap lets errors.Is match ErrInvalidCredentials or ErrUnavailable.
func (e *SSOError) Unwrap() error {
	if e.Unavailable {
		return ErrUnavailable
	}
	return ErrInvalidCredentials
}

// Begin starts a sign-in for the client holding key.
func (s *SSO) Begin(key *STRAPKey) (*SSOForm, error) {
	now := s.cfg.Now()
	id := RandomID()
	exp := now.Add(s.cfg.LoginTTL)
	h := key.Hash()
	t, err := s.seal(purposeTicket, &ssoTicket{ID: id, Key: key.der, Exp: exp})
	if err != nil {
		return nil, err
	}
	// The opaque outlives the ticket by the token's life: a sign-in that
	// ends at the last moment still finishes.
	o, err := s.seal(purposeOpaque, &ssoOpaque{ID: id, KeyHash: h[:], Exp: exp.Add(ssoTokenTTL)})
	if err != nil {
		return nil, err
	}
	return &SSOForm{LoginURL: s.url("/sso/login") + "?t=" + t, FinalURL: s.url("/sso/done"), Opaque: o}, nil
}

// Finish completes a sign-in at the client's auth-reply: opaque is the
// echoed <opaque>, token the <sso-token>, key the STRAP key of this
// request. Each token works once. Errors are *SSOError, or *DeniedError
// when the access policy refused the user at the callback.
func (s *SSO) Finish(_ context.Context, key *STRAPKey, opaque, token string) (*Identity, error) {
	now := s.cfg.Now()
	var o ssoOpaque
	if err := s.open(purposeOpaque, opaque, &o); err != nil {
		return nil, &SSOError{Reason: "sign-in state invalid; start again"}
	}
	if !now.Before(o.Exp) {
		return nil, &SSOError{Reason: "sign-in expired; start again"}
	}
	h := key.Hash()
	if subtle.ConstantTimeCompare(o.KeyHash, h[:]) != 1 {
		return nil, &SSOError{Reason: "sign-in belongs to another client"}
	}
	raw, err := hex.DecodeString(token)
	if err != nil || len(token) > maxSSOToken {
		return nil, &SSOError{Reason: "sign-in token invalid"}
	}
	pt, err := s.cfg.Sealer.openBytes([]byte(purposeToken), raw)
	var t ssoToken
	if err != nil || json.Unmarshal(pt, &t) != nil {
		return nil, &SSOError{Reason: "sign-in token invalid"}
	}
	if t.ID != o.ID || subtle.ConstantTimeCompare(t.KeyHash, h[:]) != 1 {
		return nil, &SSOError{Reason: "sign-in token belongs to another client"}
	}
	if !now.Before(t.Exp) {
		return nil, &SSOError{Reason: "sign-in token expired; start again"}
	}
	if s.replays.seen("token:"+t.TokenID, t.Exp) {
		return nil, &SSOError{Reason: "sign-in token already used"}
	}
	switch {
	case t.Refusal != "" && t.Kind == "denied":
		return nil, &DeniedError{Reason: t.Refusal}
	case t.Refusal != "":
		return nil, &SSOError{Reason: t.Refusal, Unavailable: t.Kind == "unavailable"}
	case t.Identity == nil:
		return nil, &SSOError{Reason: "sign-in token invalid"}
	}
	id := t.Identity.Identity()
	id.Method = "sso"
	switch {
	case t.Refresh != "":
		// Expiry stays: it says when to renew (Identity.Refresh).
		r, err := s.seal(purposeRefresh, &ssoRefresh{Token: t.Refresh, Subject: principal(id)})
		if err != nil {
			return nil, err
		}
		id.Refresh = r
	case !s.cfg.CapAtTokenExpiry:
		id.Expiry = time.Time{} // the session timeout alone bounds the session
	}
	return id, nil
}

// principal names whom an identity is: the stable Subject if the IdP gave
// one, else the user name.
func principal(id *Identity) string {
	if id.Subject != "" {
		return id.Subject
	}
	return id.User
}

// Refresh renews an SSO sign-in with its refresh token (SSOConfig.Refresh;
// RFC 6749 §6; OpenID Connect Core §12): id is the session's identity,
// whose Refresh holds the sealed refresh token. The IdP's new ID token goes
// through the same verifier as at sign-in and must name the same principal
// (Subject, else User). The result is the renewed identity (groups, roles
// and claims as the IdP now states them; Expiry the new ID token's; the
// device ID kept; Refresh the possibly rotated token, sealed again) for
// the caller's access-policy re-check (R-A4). Refresh does not check the
// policy itself. Errors are *SSOError: the IdP refused (wrapping
// ErrInvalidCredentials, e.g. invalid_grant for an expired or revoked
// refresh token or a disabled user) or could not be used
// (ErrUnavailable). Each call is one IdP round trip, bounded by 20 s.
func (s *SSO) Refresh(ctx context.Context, id *Identity) (*Identity, error) {
	var r ssoRefresh
	if id == nil || s.open(purposeRefresh, id.Refresh, &r) != nil {
		return nil, &SSOError{Reason: "the sign-in cannot be renewed (no valid refresh token); sign in again"}
	}
	ctx, cancel := context.WithTimeout(ctx, ssoExchangeTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, s.cfg.OIDC.cfg.HTTPClient)
	// An empty access token makes the token source refresh at once.
	tok, err := s.conf.TokenSource(ctx, &oauth2.Token{RefreshToken: r.Token}).Token()
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			s.log.Info("auth: sso: renewal refused by the identity provider", "user", id.User, "error", clip(re.ErrorCode, 64))
			return nil, &SSOError{Reason: "the identity provider refused to renew the sign-in (" + clip(re.ErrorCode, 64) + "); sign in again"}
		}
		s.log.Warn("auth: sso: renewal failed", "user", id.User, "err", classifyGrantError(err))
		return nil, &SSOError{Reason: "the identity provider could not be reached to renew the sign-in", Unavailable: true}
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return nil, &SSOError{Reason: "the identity provider renewed the sign-in without an ID token", Unavailable: true}
	}
	nid, err := s.cfg.OIDC.VerifyToken(ctx, raw)
	if err != nil {
		s.log.Warn("auth: sso: renewed ID token rejected", "user", id.User, "err", err)
		return nil, &SSOError{Reason: "the identity provider's renewed token was not accepted", Unavailable: !errors.Is(err, ErrInvalidCredentials)}
	}
	if principal(nid) != r.Subject {
		s.log.Warn("auth: sso: renewal names another user", "user", id.User, "renewed_user", nid.User)
		return nil, &SSOError{Reason: "the identity provider renewed the sign-in for another user"}
	}
	rt := tok.RefreshToken // the old one when the IdP did not rotate it (the token source keeps it)
	if nid.Refresh, err = s.seal(purposeRefresh, &ssoRefresh{Token: rt, Subject: r.Subject}); err != nil {
		return nil, err
	}
	nid.Method, nid.DeviceID = "sso", id.DeviceID
	return nid, nil
}

// BasePath is PublicURL's path ("" or e.g. "/vpn-4f9c"): the browser
// endpoints live under BasePath + "/sso/".
func (s *SSO) BasePath() string { return s.base.Path }

// Handles reports whether path is one of the browser endpoints
// (<PublicURL path>/sso/...).
func (s *SSO) Handles(path string) bool {
	return strings.HasPrefix(path, s.base.Path+"/sso/")
}

// ServeHTTP serves the browser's steps: GET /sso/login, /sso/callback and
// /sso/done under PublicURL's path. Other methods are refused: a HEAD (a
// link preview) must not use up a one-time login link.
func (s *SSO) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	switch strings.TrimPrefix(r.URL.Path, s.base.Path) {
	case "/sso/login":
		s.login(w, r)
	case "/sso/callback":
		s.callback(w, r)
	case "/sso/done":
		page(w, http.StatusOK, "Sign-in finished. You can close this window; the VPN client shows the result.")
	default:
		http.NotFound(w, r)
	}
}

func (s *SSO) login(w http.ResponseWriter, r *http.Request) {
	var t ssoTicket
	if err := s.open(purposeTicket, r.URL.Query().Get("t"), &t); err != nil {
		page(w, http.StatusBadRequest, "This sign-in link is not valid. Start the sign-in again from the VPN client.")
		return
	}
	key, err := parseSTRAPDER(t.Key)
	if err != nil {
		page(w, http.StatusBadRequest, "This sign-in link is not valid.")
		return
	}
	if !s.cfg.Now().Before(t.Exp) {
		s.refuse(w, key, t.ID, "failed", "the sign-in link expired; start again")
		return
	}
	if s.replays.seen("login:"+t.ID, t.Exp) {
		s.log.Info("auth: sso: login link reused", "client", r.RemoteAddr)
		page(w, http.StatusBadRequest, "This sign-in link was already used. Start the sign-in again from the VPN client.")
		return
	}
	st := &ssoState{ID: t.ID, Key: t.Key, State: RandomID(), Nonce: RandomID(), Verifier: oauth2.GenerateVerifier(), Exp: t.Exp}
	c, err := s.seal(purposeState, st)
	if err != nil {
		page(w, http.StatusInternalServerError, "Internal error.")
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: ssoStateCookie, Value: c, Path: s.base.Path + "/sso/",
		Expires: t.Exp, Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	})
	http.Redirect(w, r, s.conf.AuthCodeURL(st.State, oidc.Nonce(st.Nonce), oauth2.S256ChallengeOption(st.Verifier),
		oauth2.SetAuthURLParam("response_mode", "query")), http.StatusFound)
}

func (s *SSO) callback(w http.ResponseWriter, r *http.Request) {
	ck, err := r.Cookie(ssoStateCookie)
	var st ssoState
	if err != nil || s.open(purposeState, ck.Value, &st) != nil {
		s.log.Info("auth: sso: callback without a valid state cookie", "client", r.RemoteAddr)
		page(w, http.StatusBadRequest, "Sign-in state missing. Start the sign-in again from the VPN client, in the same browser.")
		return
	}
	key, err := parseSTRAPDER(st.Key)
	if err != nil {
		page(w, http.StatusBadRequest, "Sign-in state invalid.")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: ssoStateCookie, Value: "", Path: s.base.Path + "/sso/", MaxAge: -1,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	q := r.URL.Query()
	if !s.cfg.Now().Before(st.Exp) {
		s.refuse(w, key, st.ID, "failed", "the sign-in took too long; start again")
		return
	}
	if subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(st.State)) != 1 {
		s.refuse(w, key, st.ID, "failed", "the identity provider's answer does not match this sign-in")
		return
	}
	if s.replays.seen("callback:"+st.ID, st.Exp) {
		page(w, http.StatusBadRequest, "This sign-in was already completed.")
		return
	}
	if e := q.Get("error"); e != "" {
		reason := "the identity provider refused the sign-in: " + clip(e, 64)
		if d := q.Get("error_description"); d != "" {
			reason += " (" + clip(d, 200) + ")"
		}
		s.log.Info("auth: sso: identity provider error", "client", r.RemoteAddr, "error", clip(e, 64))
		s.refuse(w, key, st.ID, "failed", reason)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), ssoExchangeTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, s.cfg.OIDC.cfg.HTTPClient)
	tok, err := s.conf.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(st.Verifier))
	if err != nil {
		s.log.Warn("auth: sso: code exchange failed", "err", classifyGrantError(err))
		s.refuse(w, key, st.ID, "unavailable", "the identity provider did not complete the sign-in")
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		s.refuse(w, key, st.ID, "unavailable", "the identity provider returned no ID token")
		return
	}
	id, err := s.cfg.OIDC.VerifyToken(ctx, raw)
	if err != nil {
		s.log.Warn("auth: sso: ID token rejected", "err", err)
		s.refuse(w, key, st.ID, "unavailable", "the identity provider's token was not accepted")
		return
	}
	if n, _ := id.Claims["nonce"].(string); subtle.ConstantTimeCompare([]byte(n), []byte(st.Nonce)) != 1 {
		s.refuse(w, key, st.ID, "failed", "the identity provider's token does not match this sign-in (nonce)")
		return
	}
	id.Method = "sso"
	if s.cfg.Policy != nil {
		if err := s.cfg.Policy.Check(ctx, id); err != nil {
			var de *DeniedError
			reason := "access denied"
			if errors.As(err, &de) {
				reason = de.Reason
			}
			s.log.Info("auth: sso: denied by policy", "user", id.User, "reason", reason)
			s.refuse(w, key, st.ID, "denied", reason)
			return
		}
	}
	t := &ssoToken{ID: st.ID}
	if s.cfg.Refresh {
		if t.Refresh = tok.RefreshToken; t.Refresh == "" {
			s.log.Warn("auth: sso: no refresh token from the identity provider; does it grant offline_access to this client?", "user", id.User)
			s.refuse(w, key, st.ID, "unavailable", "the identity provider issued no refresh token (offline_access) for renewing the sign-in")
			return
		}
	}
	now := s.cfg.Now()
	t.Identity = NewSessionClaims(id, s.claimNames(), now, now.Add(ssoTokenTTL))
	s.log.Info("auth: sso: signed in at the identity provider", "user", id.User)
	s.deliver(w, key, t)
}

// claimNames: the claims the policy reads, kept in the token so the
// gateway's re-check at the auth-reply sees them.
func (s *SSO) claimNames() []string {
	if cn, ok := s.cfg.Policy.(interface{ ClaimNames() []string }); ok {
		return cn.ClaimNames()
	}
	return nil
}

// refuse delivers a refusal to the client's listener, so the client prints
// reason and exits instead of waiting forever.
func (s *SSO) refuse(w http.ResponseWriter, key *STRAPKey, id, kind, reason string) {
	s.deliver(w, key, &ssoToken{ID: id, Refusal: reason, Kind: kind})
}

// deliver mints the one-time token and redirects the browser to the
// client's listener with it, encrypted to the client's STRAP key.
func (s *SSO) deliver(w http.ResponseWriter, key *STRAPKey, t *ssoToken) {
	h := key.Hash()
	t.TokenID, t.KeyHash, t.Exp = RandomID(), h[:], s.cfg.Now().Add(ssoTokenTTL)
	tok, err := s.sealToken(t)
	if err == nil && len(tok) > maxSSOToken && t.Identity != nil {
		// Too many groups or claims (or too long a refresh token) for
		// openconnect's request line.
		t.Identity, t.Refresh, t.Refusal, t.Kind = nil, "", "the sign-in carries too many groups or claims for the VPN client", "unavailable"
		s.log.Warn("auth: sso: token too large for the client's listener; keep fewer groups or claims (or turn off refresh)")
		tok, err = s.sealToken(t)
	}
	var blob []byte
	if err == nil {
		blob, err = sealToSTRAP(key, []byte(tok))
	}
	if err != nil {
		s.log.Error("auth: sso: minting the token", "err", err)
		page(w, http.StatusInternalServerError, "Internal error.")
		return
	}
	// Standard base64, query-escaped: the client URL-decodes the path and
	// turns '+' into a space (sso.md §3).
	loc := SSOListener + "/api/sso/" + url.QueryEscape(base64.StdEncoding.EncodeToString(blob)) + "?return=" + s.url("/sso/done")
	w.Header().Set("Location", loc)
	w.WriteHeader(http.StatusFound)
}

// sealToken seals t; hex keeps it alphanumeric, as openconnect requires.
func (s *SSO) sealToken(t *ssoToken) (string, error) {
	pt, err := json.Marshal(t)
	if err != nil {
		return "", err
	}
	raw, err := s.cfg.Sealer.sealBytes([]byte(purposeToken), pt)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(raw), nil
}

func (s *SSO) url(p string) string { return s.base.String() + p }

func (s *SSO) seal(purpose string, v any) (string, error) {
	pt, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	raw, err := s.cfg.Sealer.sealBytes([]byte(purpose), pt)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(raw), nil
}

func (s *SSO) open(purpose, v string, out any) error {
	if v == "" || len(v) > maxSealed {
		return ErrSessionInvalid
	}
	raw, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil {
		return ErrSessionInvalid
	}
	pt, err := s.cfg.Sealer.openBytes([]byte(purpose), raw)
	if err != nil {
		return err
	}
	if json.Unmarshal(pt, out) != nil {
		return ErrSessionInvalid
	}
	return nil
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func page(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, "<!doctype html><title>VPN sign-in</title><p id=\"msg\">%s</p>\n", html.EscapeString(msg))
}

// maxReplays bounds the replay cache: past it, new sign-ins are refused
// (seen reports true) until entries expire, so a flood cannot grow memory
// without bound. 100k entries of ~100 bytes is ~10 MB.
const maxReplays = 100_000

// replayCache remembers used one-time values until they expire.
type replayCache struct {
	mu   sync.Mutex
	m    map[string]time.Time
	now  func() time.Time
	last time.Time // last prune
}

// seen records id (valid until exp) and reports whether it was already
// recorded.
func (c *replayCache) seen(id string, exp time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.m == nil {
		c.m = make(map[string]time.Time)
	}
	if now.Sub(c.last) > time.Minute || len(c.m) >= maxReplays {
		for k, e := range c.m {
			if !now.Before(e) {
				delete(c.m, k)
			}
		}
		c.last = now
	}
	if _, ok := c.m[id]; ok || len(c.m) >= maxReplays {
		return true
	}
	c.m[id] = exp
	return false
}
