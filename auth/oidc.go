package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
)

// OIDCConfig configures token verification (R-A1) and, with ClientID and
// ClientSecret, password sign-in through the IdP (R-A2).
type OIDCConfig struct {
	// Issuer is the exact issuer URL; discovery is fetched from
	// Issuer + "/.well-known/openid-configuration" and must name the same
	// issuer, and every token's iss must equal it.
	Issuer string
	// Audiences are the accepted aud values: the gateway's application ID
	// (Entra: the app's client ID or "api://..." URI). ClientID is always
	// accepted too. At least one of the two is required.
	Audiences []string
	// ClientID and ClientSecret are the gateway's OAuth2 client, used for
	// the password grant. The secret may be empty for a public client.
	ClientID     string
	ClientSecret string
	// Scopes for the password grant. Default openid email groups profile.
	Scopes []string
	// Algorithms allowed to sign tokens. Default: RS*, PS*, ES*, EdDSA.
	// "none" and HMAC (HS*) are always refused: a public key must never
	// double as a shared secret.
	Algorithms []string
	// Skew is the clock-skew allowance for exp, nbf and iat, each checked
	// once, here (go-oidc's own expiry check is off). Default 1m; Entra
	// deployments commonly use 5m.
	Skew time.Duration
	// EntraTenant is an Entra ID tenant ID (a GUID). With it, tokens from
	// both of the tenant's issuers are accepted,
	// https://login.microsoftonline.com/<tid>/v2.0 and
	// https://sts.windows.net/<tid>/ (v1 access tokens), besides Issuer;
	// the tid claim must name the tenant, and Identity.Subject is
	// "<tid>/<oid>". Default: taken from Issuer when it is one of those
	// two forms. The multi-tenant aliases (common, organizations,
	// consumers) are refused: a gateway pins one tenant.
	EntraTenant string
	// UserClaims are tried in order for Identity.User; the first non-empty
	// string wins. Default preferred_username, upn, email, sub.
	UserClaims []string
	// EmailClaim, GroupsClaim, RolesClaim and DeviceIDClaim name the
	// claims for those Identity fields. Defaults "email", "groups",
	// "roles" (Entra's app roles), "deviceid" (Entra's device claim). Set
	// to "-" to ignore one.
	EmailClaim    string
	GroupsClaim   string
	RolesClaim    string
	DeviceIDClaim string
	// JWKSMinRefresh is the least time between two JWKS fetches triggered
	// by unknown key IDs. Default 10s.
	JWKSMinRefresh time.Duration
	// JWKSMaxAge refreshes cached keys in the background after this long,
	// so keys the IdP withdrew stop working. Default 1h.
	JWKSMaxAge time.Duration
	// HTTPClient talks to the IdP. Default: a client with a 15s timeout.
	HTTPClient *http.Client
	// Logger receives operational messages (never credentials). Default:
	// discard.
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// defaultAlgorithms: every asymmetric JWS algorithm go-jose verifies.
var defaultAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// OIDC verifies tokens from one identity provider. Its Authenticate takes a
// token from Credentials.BearerToken or a JWT-shaped Password; PasswordGrant
// returns the authenticator for user name + password.
type OIDC struct {
	cfg       OIDCConfig
	audiences []string
	keys      *keySet
	// issuers: every issuer a token may name (the configured one, and
	// Entra's v1 and v2 forms of its tenant).
	issuers []string
	// verifierConfig: go-oidc's checks of a token whose signature keys
	// has already verified (see VerifyToken).
	verifierConfig *oidc.Config
	provider       *oidc.Provider
	authStyle      int // oauth2.AuthStyle chosen from discovery
	log            *slog.Logger
}

// NewOIDC performs discovery (ctx bounds it) and prefetches the signing
// keys. A discovery document naming another issuer is refused. A failed
// key prefetch is not fatal: keys are fetched again on first use.
func NewOIDC(ctx context.Context, cfg OIDCConfig) (*OIDC, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("auth: oidc: issuer required")
	}
	auds := slices.Clone(cfg.Audiences)
	if cfg.ClientID != "" && !slices.Contains(auds, cfg.ClientID) {
		auds = append(auds, cfg.ClientID)
	}
	if len(auds) == 0 {
		return nil, errors.New("auth: oidc: an audience (application ID) or client ID is required")
	}
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = defaultAlgorithms
	}
	var algs []jose.SignatureAlgorithm
	for _, a := range cfg.Algorithms {
		if !slices.Contains(defaultAlgorithms, a) {
			return nil, fmt.Errorf("auth: oidc: signing algorithm %q not allowed (asymmetric only)", a)
		}
		algs = append(algs, jose.SignatureAlgorithm(a))
	}
	if cfg.Skew <= 0 {
		cfg.Skew = time.Minute
	}
	if len(cfg.Scopes) == 0 {
		cfg.Scopes = []string{oidc.ScopeOpenID, "email", "groups", "profile"}
	}
	if len(cfg.UserClaims) == 0 {
		cfg.UserClaims = []string{"preferred_username", "upn", "email", "sub"}
	}
	cfg.EmailClaim = defaultStr(cfg.EmailClaim, "email")
	cfg.GroupsClaim = defaultStr(cfg.GroupsClaim, "groups")
	cfg.RolesClaim = defaultStr(cfg.RolesClaim, "roles")
	cfg.DeviceIDClaim = defaultStr(cfg.DeviceIDClaim, "deviceid")
	if cfg.JWKSMinRefresh <= 0 {
		cfg.JWKSMinRefresh = 10 * time.Second
	}
	if cfg.JWKSMaxAge <= 0 {
		cfg.JWKSMaxAge = time.Hour
	}
	if cfg.HTTPClient == nil {
		// 15s: the IdP answers in well under a second when healthy; a
		// stuck one must not hold sign-ins for long.
		cfg.HTTPClient = &http.Client{Timeout: 15 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := orDiscard(cfg.Logger)
	if cfg.EntraTenant == "" {
		cfg.EntraTenant = entraTenant(cfg.Issuer)
	}
	issuers := []string{cfg.Issuer}
	if t := cfg.EntraTenant; t != "" {
		switch strings.ToLower(t) {
		case "common", "organizations", "consumers":
			return nil, fmt.Errorf("auth: oidc: Entra tenant %q accepts tokens of any tenant; configure your tenant ID", t)
		}
		for _, iss := range entraIssuers(t) {
			if !slices.Contains(issuers, iss) {
				issuers = append(issuers, iss)
			}
		}
	}

	p, err := oidc.NewProvider(oidc.ClientContext(ctx, cfg.HTTPClient), cfg.Issuer)
	if err != nil {
		var mm *oidc.IssuerMismatchError
		if errors.As(err, &mm) {
			return nil, fmt.Errorf("auth: oidc: discovery names issuer %q, configured %q: %w", mm.Discovered, mm.Provided, err)
		}
		return nil, &UnavailableError{What: "discovery failed", Cause: err}
	}
	var meta struct {
		JWKSURI     string   `json:"jwks_uri"`
		AuthMethods []string `json:"token_endpoint_auth_methods_supported"`
	}
	if err := p.Claims(&meta); err != nil || meta.JWKSURI == "" {
		return nil, fmt.Errorf("auth: oidc: discovery document has no jwks_uri")
	}
	base, stop := context.WithCancel(context.Background())
	ks := &keySet{
		url: meta.JWKSURI, client: cfg.HTTPClient, algs: algs,
		minRefresh: cfg.JWKSMinRefresh, maxAge: cfg.JWKSMaxAge,
		now: cfg.Now, log: log, base: base, stop: stop,
	}
	o := &OIDC{cfg: cfg, audiences: auds, keys: ks, provider: p, log: log, authStyle: chooseAuthStyle(meta.AuthMethods, cfg.ClientSecret),
		issuers: issuers,
		verifierConfig: &oidc.Config{
			SkipClientIDCheck:    true, // several audiences: checked in checkClaims
			SupportedSigningAlgs: cfg.Algorithms,
			// exp and nbf are checked once, with Skew, in checkClaims:
			// go-oidc's own check (a fixed 5-minute nbf leeway on top of
			// a clock shifted by Skew) refused tokens within the skew.
			SkipExpiryCheck: true,
			Now:             cfg.Now,
		}}
	if err := ks.refresh(ctx, true); err != nil {
		log.Warn("auth: oidc: initial JWKS fetch failed; will retry on first token", "err", err)
	}
	return o, nil
}

func defaultStr(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// Close stops background key refreshes.
func (o *OIDC) Close() { o.keys.close() }

// Authenticate implements Authenticator for tokens: BearerToken, else a
// Password that looks like a JWT (the token-in-password-field route). It
// returns ErrNotApplicable when neither is present.
func (o *OIDC) Authenticate(ctx context.Context, c Credentials) (*Identity, error) {
	raw := c.BearerToken
	if raw == "" && LooksLikeJWT(c.Password) {
		raw = c.Password
	}
	if raw == "" {
		return nil, ErrNotApplicable
	}
	id, err := o.VerifyToken(ctx, raw)
	if err != nil {
		o.log.Info("auth: token rejected", "client", c.RemoteAddr, "err", err)
		return nil, err
	}
	return id, nil
}

// VerifyToken checks a raw JWT (ID or access token) and maps its claims to
// an Identity with Method "token". Errors are *TokenError (wrapping
// ErrInvalidCredentials) or *UnavailableError.
func (o *OIDC) VerifyToken(ctx context.Context, raw string) (*Identity, error) {
	payload, err := o.keys.verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	claims, err := decodeClaims(payload)
	if err != nil {
		return nil, &TokenError{Kind: ErrTokenMalformed, Detail: "claims"}
	}
	exp, err := o.checkClaims(claims)
	if err != nil {
		return nil, err
	}
	// Defence in depth: go-oidc re-checks the token's form, algorithm and
	// exact issuer the standard way. Its key set is this one token, whose
	// signature keys.verify has just checked: a second RSA or ECDSA
	// verification would double the sign-in's dominant cost.
	iss, _ := claims["iss"].(string)
	v := oidc.NewVerifier(iss, verifiedToken{raw: raw, payload: payload}, o.verifierConfig)
	if _, err := v.Verify(ctx, raw); err != nil {
		o.log.Warn("auth: go-oidc rejected a token the gateway's checks accepted", "err", err)
		return nil, &TokenError{Kind: ErrTokenMalformed}
	}
	id := o.identity(claims, exp)
	if id.User == "" {
		return nil, &TokenError{Kind: ErrTokenClaims, Detail: "no user name claim"}
	}
	if t := o.cfg.EntraTenant; t != "" {
		tid, _ := claims["tid"].(string)
		oid, _ := claims["oid"].(string)
		if !strings.EqualFold(tid, t) {
			return nil, &TokenError{Kind: ErrTokenIssuer, Detail: "another tenant"}
		}
		if oid == "" {
			return nil, &TokenError{Kind: ErrTokenClaims, Detail: "oid"}
		}
		id.Subject = tid + "/" + oid
	}
	if id.GroupsOverage {
		o.log.Warn("auth: oidc: groups overage: the token names no groups, only where to fetch them; configure group filtering (groups assigned to the application) or app roles",
			"user", id.User)
	}
	return id, nil
}

// verifiedToken is the oidc.KeySet of one token whose signature has been
// verified already: it hands go-oidc that token's payload and refuses any
// other token.
type verifiedToken struct {
	raw     string
	payload []byte
}

func (v verifiedToken) VerifySignature(_ context.Context, jwt string) ([]byte, error) {
	if jwt != v.raw {
		return nil, errors.New("auth: oidc: not the token whose signature was verified")
	}
	return v.payload, nil
}

func decodeClaims(p []byte) (map[string]any, error) {
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		return nil, err
	}
	return m, nil
}

// entraTenant returns the tenant of an Entra ID issuer URL (v2 or v1
// form), or "".
func entraTenant(issuer string) string {
	for _, f := range []struct{ pre, suf string }{
		{"https://login.microsoftonline.com/", "/v2.0"},
		{"https://sts.windows.net/", "/"},
	} {
		if t, ok := strings.CutPrefix(issuer, f.pre); ok {
			if t, ok := strings.CutSuffix(t, f.suf); ok && t != "" && !strings.Contains(t, "/") {
				return t
			}
		}
	}
	return ""
}

// entraIssuers are a tenant's v2 and v1 token issuers.
func entraIssuers(tenant string) []string {
	return []string{"https://login.microsoftonline.com/" + tenant + "/v2.0", "https://sts.windows.net/" + tenant + "/"}
}

// checkClaims enforces iss, aud, exp, nbf and iat; it returns exp.
func (o *OIDC) checkClaims(c map[string]any) (time.Time, error) {
	if iss, _ := c["iss"].(string); !slices.Contains(o.issuers, iss) {
		return time.Time{}, &TokenError{Kind: ErrTokenIssuer}
	}
	if !audienceOK(c["aud"], o.audiences) {
		return time.Time{}, &TokenError{Kind: ErrTokenAudience}
	}
	now := o.cfg.Now()
	exp, ok := numericDate(c["exp"])
	if !ok {
		return time.Time{}, &TokenError{Kind: ErrTokenClaims, Detail: "exp"}
	}
	if !now.Add(-o.cfg.Skew).Before(exp) {
		return time.Time{}, &TokenError{Kind: ErrTokenExpired}
	}
	if nbf, ok := numericDate(c["nbf"]); ok && now.Add(o.cfg.Skew).Before(nbf) {
		return time.Time{}, &TokenError{Kind: ErrTokenNotYetValid}
	}
	if iat, ok := numericDate(c["iat"]); ok && now.Add(o.cfg.Skew).Before(iat) {
		return time.Time{}, &TokenError{Kind: ErrTokenNotYetValid, Detail: "issued in the future"}
	}
	return exp, nil
}

func audienceOK(v any, want []string) bool {
	switch t := v.(type) {
	case string:
		return slices.Contains(want, t)
	case []any:
		for _, a := range t {
			if s, ok := a.(string); ok && slices.Contains(want, s) {
				return true
			}
		}
	}
	return false
}

func numericDate(v any) (time.Time, bool) {
	f, ok := v.(float64)
	if !ok {
		return time.Time{}, false
	}
	sec := int64(f)
	return time.Unix(sec, int64((f-float64(sec))*1e9)), true
}

func (o *OIDC) identity(c map[string]any, exp time.Time) *Identity {
	id := &Identity{Claims: c, Expiry: exp, Method: "token"}
	for _, n := range o.cfg.UserClaims {
		if s, _ := c[n].(string); s != "" {
			id.User = s
			break
		}
	}
	if o.cfg.EmailClaim != "-" {
		id.Email, _ = c[o.cfg.EmailClaim].(string)
	}
	if o.cfg.DeviceIDClaim != "-" {
		id.DeviceID, _ = c[o.cfg.DeviceIDClaim].(string)
	}
	if o.cfg.GroupsClaim != "-" {
		id.Groups = stringList(c[o.cfg.GroupsClaim])
		if _, ok := c[o.cfg.GroupsClaim]; !ok {
			// Entra's overage: "_claim_names": {"groups": "src1"}.
			names, _ := c["_claim_names"].(map[string]any)
			_, id.GroupsOverage = names[o.cfg.GroupsClaim]
		}
	}
	if o.cfg.RolesClaim != "-" {
		id.Roles = stringList(c[o.cfg.RolesClaim])
	}
	if sub, _ := c["sub"].(string); sub != "" {
		id.Subject = sub
	}
	return id
}

// stringList reads a claim that is a list of strings or one
// space-separated string.
func stringList(v any) []string {
	var out []string
	switch g := v.(type) {
	case string:
		out = strings.Fields(g)
	case []any:
		for _, e := range g {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}
