package config

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/daemon/outbound"
	"github.com/underpass/underpass/tunnel"
)

// IdentityFile is the `identity:` section: how clients sign in and who is
// admitted. Every part is optional; the top-level `users:` (static lab
// users) work alongside.
type IdentityFile struct {
	OIDC                       *OIDCFile   `yaml:"oidc"`
	SSO                        *SSOFile    `yaml:"sso"`
	ClientCerts                *CertsFile  `yaml:"client_certs"`
	Policy                     *PolicyFile `yaml:"policy"`
	Bans                       *BansFile   `yaml:"bans"`
	SessionKey                 string      `yaml:"session_key"` // base64, 32 bytes: sealed site-wide cookies
	KeepSessionPastTokenExpiry bool        `yaml:"keep_session_past_token_expiry"`
}

// OIDCFile configures token sign-in at the organisation's IdP.
type OIDCFile struct {
	Issuer        string   `yaml:"issuer"`
	Audiences     []string `yaml:"audiences"` // default: client_id
	ClientID      string   `yaml:"client_id"`
	ClientSecret  string   `yaml:"client_secret"`
	Scopes        []string `yaml:"scopes"`
	GroupsClaim   string   `yaml:"groups_claim"`
	EmailClaim    string   `yaml:"email_claim"`
	DeviceIDClaim string   `yaml:"device_id_claim"`
	PasswordGrant bool     `yaml:"password_grant"` // usernames and passwords are checked at the IdP
	OfferBearer   *bool    `yaml:"offer_bearer"`   // default true: openconnect --token-mode=oidc
	// EntraTenant pins an Entra ID tenant (its GUID): tokens of both its
	// issuers are accepted and must carry tid and oid. Default: taken from
	// an Entra issuer URL.
	EntraTenant string `yaml:"entra_tenant"`
	// RolesClaim names the app-roles claim the policy matches like groups
	// (default roles; "-" ignores it).
	RolesClaim string `yaml:"roles_claim"`
	// Skew is the clock-skew allowance for exp, nbf and iat (default 1m;
	// Entra deployments commonly use 5m; at most 1h).
	Skew Duration `yaml:"skew"`
}

// maxSkew bounds oidc.skew: a larger allowance would accept tokens that
// expired hours ago (Entra's own tokens live 60-90 minutes).
const maxSkew = Duration(time.Hour)

// entraTenantID is an Entra ID tenant ID: a GUID.
var entraTenantID = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// config is the verifier configuration these keys give (the caller adds
// the HTTP client and logger).
func (o *OIDCFile) config() auth.OIDCConfig {
	aud := o.Audiences
	if len(aud) == 0 {
		aud = []string{o.ClientID}
	}
	return auth.OIDCConfig{
		Issuer: o.Issuer, Audiences: aud, ClientID: o.ClientID, ClientSecret: o.ClientSecret, Scopes: o.Scopes,
		GroupsClaim: o.GroupsClaim, EmailClaim: o.EmailClaim, DeviceIDClaim: o.DeviceIDClaim,
		EntraTenant: o.EntraTenant, RolesClaim: o.RolesClaim, Skew: time.Duration(o.Skew),
	}
}

// SSOFile configures browser sign-in (SSO v2 external browser: openconnect
// --external-browser) with the gateway as the IdP's OIDC relying party.
// Issuer, client_id and client_secret default to the oidc section's. It
// needs session_key (the site key seals every step) and a public URL:
// public_url, else https://<site.host>[:<listen port>]<secret_path>.
type SSOFile struct {
	Issuer       string   `yaml:"issuer"`
	ClientID     string   `yaml:"client_id"`
	ClientSecret string   `yaml:"client_secret"`
	Scopes       []string `yaml:"scopes"`       // default openid email groups profile
	GroupsClaim  string   `yaml:"groups_claim"` // default groups
	LoginTTL     Duration `yaml:"login_ttl"`    // default 10m: init to the IdP's callback
	PublicURL    string   `yaml:"public_url"`   // the site's public https URL; it needs <public_url>/sso/callback registered at the IdP
	// CapAtTokenExpiry ends SSO sessions when the ID token expires; by
	// default they last session_timeout (the policy is re-checked on
	// every resume).
	CapAtTokenExpiry bool `yaml:"cap_at_token_expiry"`
	// Refresh asks the IdP for a refresh token (adds the offline_access
	// scope) and renews SSO sessions with it each time the ID token
	// expires, re-checking the access policy; a refused renewal ends the
	// session. Excludes cap_at_token_expiry.
	Refresh bool `yaml:"refresh"`
}

// CertsFile configures client-certificate sign-in.
type CertsFile struct {
	CA           string   `yaml:"ca"` // PEM bundle of the CAs that issue device certificates
	Required     bool     `yaml:"required"`
	IdentityFrom []string `yaml:"identity_from"` // upn, email, cn
	// Device: the certificate identifies the device (its CN becomes the
	// device ID) and the user must still sign in (SSO, password or
	// token); both must succeed. Implied by required: true when a user
	// method (users, identity.oidc or identity.sso) is configured, so a
	// valid certificate with a wrong password is refused (R-A7; ocserv's
	// test-pass-cert admits it). Certificate-only sign-in: required: true
	// with no user method, or certificates without required.
	Device bool `yaml:"device"`
}

// PolicyFile is the access policy.
type PolicyFile struct {
	AllowUsers    []string        `yaml:"allow_users"`
	AllowGroups   []string        `yaml:"allow_groups"`
	DenyUsers     []string        `yaml:"deny_users"`
	DenyGroups    []string        `yaml:"deny_groups"`
	RequireClaims []ClaimRuleFile `yaml:"require_claims"`
}

// ClaimRuleFile requires a token claim to hold one of Values.
type ClaimRuleFile struct {
	Claim  string   `yaml:"claim"`
	Values []string `yaml:"values"`
	Reason string   `yaml:"reason"`
}

// BansFile tunes ban points for failed sign-ins.
type BansFile struct {
	Threshold int      `yaml:"threshold"`
	BanFor    Duration `yaml:"ban_for"`
	Decay     Duration `yaml:"decay"`
}

// validateIdentity reports the section's problems (no network is used).
func validateIdentity(f *IdentityFile, rel func(string) string, bad func(key, format string, args ...any)) {
	if f == nil {
		return
	}
	if o := f.OIDC; o != nil {
		if u, err := url.Parse(o.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("identity", "oidc.issuer %q: want the IdP's issuer URL", o.Issuer)
		}
		if o.ClientID == "" {
			bad("identity", "oidc.client_id: required (the gateway's application ID)")
		}
		if o.PasswordGrant && o.ClientSecret == "" {
			bad("identity", "oidc.password_grant needs oidc.client_secret")
		}
		switch t := o.EntraTenant; {
		case t == "":
		case slices.Contains([]string{"common", "organizations", "consumers"}, strings.ToLower(t)):
			bad("identity", "oidc.entra_tenant %q accepts tokens of any tenant; set your tenant ID (a GUID)", t)
		case !entraTenantID.MatchString(t):
			bad("identity", "oidc.entra_tenant %q: want the tenant ID, a GUID like 72f988bf-86f1-41af-91ab-2d7cd011db47", t)
		}
		if o.Skew < 0 || o.Skew > maxSkew {
			bad("identity", "oidc.skew %v: want 0 (default 1m) up to %v", time.Duration(o.Skew), time.Duration(maxSkew))
		}
	}
	if s := f.SSO; s != nil {
		issuer, clientID := s.Issuer, s.ClientID
		if f.OIDC != nil {
			issuer, clientID = cmpOr(issuer, f.OIDC.Issuer), cmpOr(clientID, f.OIDC.ClientID)
		}
		if u, err := url.Parse(issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("identity", "sso.issuer %q: want the IdP's issuer URL (or set oidc.issuer)", issuer)
		}
		if clientID == "" {
			bad("identity", "sso.client_id: required (or set oidc.client_id)")
		}
		if s.LoginTTL < 0 {
			bad("identity", "sso.login_ttl: must not be negative")
		}
		if s.Refresh && s.CapAtTokenExpiry {
			bad("identity", "sso.refresh and sso.cap_at_token_expiry exclude each other: renew the sign-in, or end the session with the ID token")
		}
		if f.SessionKey == "" {
			bad("identity", "sso needs session_key (the site key that seals each sign-in step; 32 random bytes, base64)")
		}
		if s.PublicURL != "" {
			if u, err := url.Parse(s.PublicURL); err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" {
				bad("identity", "sso.public_url %q: want https://host[:port][/path]", s.PublicURL)
			}
		}
	}
	if c := f.ClientCerts; c != nil {
		if c.CA == "" {
			bad("identity", "client_certs.ca: required")
		} else if b, err := os.ReadFile(rel(c.CA)); err != nil {
			bad("identity", "client_certs.ca: %v", err)
		} else if _, err := auth.LoadCertPool(b); err != nil {
			bad("identity", "client_certs.ca: %v", err)
		}
		for _, s := range c.IdentityFrom {
			if s != "upn" && s != "email" && s != "cn" {
				bad("identity", "client_certs.identity_from: %q: want upn, email or cn", s)
			}
		}
	}
	if p := f.Policy; p != nil {
		for i, r := range p.RequireClaims {
			if r.Claim == "" || len(r.Values) == 0 {
				bad("identity", "policy.require_claims[%d]: claim and values are required", i)
			}
		}
	}
	if b := f.Bans; b != nil && (b.Threshold < 0 || b.BanFor < 0 || b.Decay < 0) {
		bad("identity", "bans: threshold, ban_for and decay must not be negative")
	}
	if f.SessionKey != "" {
		if _, err := auth.ParseSealerKey(f.SessionKey); err != nil {
			bad("identity", "session_key: %v", err)
		}
	}
}

// BuildIdentity makes the identity section's authenticators, access
// policy, bans, sealer and browser sign-in and sets them in c.Tunnel
// (Authenticator, OfferBearer, Policy when the section has one, Bans,
// ClientCerts, Sealer, SSO, KeepSessionPastTokenExpiry). It contacts the IdP (OIDC discovery), so it
// takes a ctx. release stops what it started (the OIDC key refresher):
// call it when the gateway no longer uses these, after a reload replaced
// them or at exit. On error c.Tunnel is unchanged.
func (c *Config) BuildIdentity(ctx context.Context, log *slog.Logger) (release func(), err error) {
	id := &c.Tunnel
	built := *id // filled here, copied into c.Tunnel only on success
	var closers []func()
	// stopAll, not the named result: an error return sets release to
	// nil before this defer runs.
	stopAll := func() {
		for _, f := range closers {
			f()
		}
	}
	release = stopAll
	defer func() {
		if err != nil {
			stopAll()
			release = nil
			return
		}
		*id = built
	}()
	out := &built
	out.Authenticator, out.OfferBearer, out.Bans, out.ClientCerts, out.Sealer, out.SSO = nil, false, nil, nil, nil, nil
	out.KeepSessionPastTokenExpiry = false
	var chain auth.Chain
	f := c.IdentityFile
	if f != nil && f.OIDC != nil {
		o := f.OIDC
		hc, err := outbound.Client(c.ExtraRootsDir)
		if err != nil {
			return nil, fmt.Errorf("identity.oidc: %w", err)
		}
		oc := o.config()
		oc.HTTPClient, oc.Logger = hc, log
		v, err := auth.NewOIDC(ctx, oc)
		if err != nil {
			return nil, fmt.Errorf("identity.oidc: %w", err)
		}
		closers = append(closers, v.Close)
		chain = append(chain, v)
		if o.PasswordGrant {
			pg, err := v.PasswordGrant()
			if err != nil {
				return nil, fmt.Errorf("identity.oidc.password_grant: %w", err)
			}
			chain = append(chain, pg)
		}
		out.OfferBearer = o.OfferBearer == nil || *o.OfferBearer
	}
	if len(c.Users) > 0 || len(chain) == 0 {
		users := make([]auth.StaticUser, 0, len(c.Users))
		for _, u := range c.Users {
			users = append(users, auth.StaticUser{Name: u.Name, Hash: u.PasswordHash, Groups: u.Groups})
		}
		su, err := auth.NewStaticUsers(users)
		if err != nil {
			return nil, err
		}
		chain = append(chain, su)
	}
	out.Authenticator = chain
	if f == nil {
		return release, nil
	}
	if cf := f.ClientCerts; cf != nil {
		b, err := os.ReadFile(c.rel(cf.CA))
		if err == nil {
			var pool *x509.CertPool
			if pool, err = auth.LoadCertPool(b); err == nil {
				userMethod := len(c.Users) > 0 || f.OIDC != nil || f.SSO != nil
				out.ClientCerts, err = auth.NewCertificates(auth.CertConfig{CAs: pool, Required: cf.Required, IdentityFrom: cf.IdentityFrom,
					Device: cf.Device || (cf.Required && userMethod)})
			}
		}
		if err != nil {
			return nil, fmt.Errorf("identity.client_certs: %w", err)
		}
	}
	if p := f.Policy; p != nil {
		r := &auth.Rules{AllowUsers: p.AllowUsers, AllowGroups: p.AllowGroups, DenyUsers: p.DenyUsers, DenyGroups: p.DenyGroups}
		for _, cr := range p.RequireClaims {
			r.RequireClaims = append(r.RequireClaims, auth.ClaimRule{Claim: cr.Claim, Values: cr.Values, Reason: cr.Reason})
		}
		out.Policy = r
	}
	if bf := f.Bans; bf != nil {
		out.Bans = auth.NewBans(auth.BanConfig{Threshold: bf.Threshold, BanFor: time.Duration(bf.BanFor), Decay: time.Duration(bf.Decay)})
	}
	if f.SessionKey != "" {
		key, err := auth.ParseSealerKey(f.SessionKey)
		if err == nil {
			out.Sealer, err = auth.NewSealer(nil, key)
		}
		if err != nil {
			return nil, fmt.Errorf("identity.session_key: %w", err)
		}
	}
	if sf := f.SSO; sf != nil {
		sso, stop, err := c.buildSSO(ctx, sf, out, log)
		if err != nil {
			return nil, fmt.Errorf("identity.sso: %w", err)
		}
		closers = append(closers, stop)
		out.SSO = sso
	}
	out.KeepSessionPastTokenExpiry = f.KeepSessionPastTokenExpiry
	return release, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// ssoOIDCConfig is the sso section's verifier configuration: its own
// keys, else the oidc section's (claims, roles claim and skew always; the
// Entra tenant when both name the same issuer).
func (c *Config) ssoOIDCConfig(sf *SSOFile) auth.OIDCConfig {
	oc := auth.OIDCConfig{Issuer: sf.Issuer, ClientID: sf.ClientID, ClientSecret: sf.ClientSecret, Scopes: sf.Scopes, GroupsClaim: sf.GroupsClaim}
	if o := c.IdentityFile.OIDC; o != nil {
		oc.Issuer, oc.ClientID = cmpOr(oc.Issuer, o.Issuer), cmpOr(oc.ClientID, o.ClientID)
		if sf.ClientID == "" {
			oc.ClientSecret = cmpOr(oc.ClientSecret, o.ClientSecret)
		}
		if len(oc.Scopes) == 0 {
			oc.Scopes = o.Scopes
		}
		oc.GroupsClaim = cmpOr(oc.GroupsClaim, o.GroupsClaim)
		oc.EmailClaim, oc.DeviceIDClaim = o.EmailClaim, o.DeviceIDClaim
		oc.RolesClaim, oc.Skew = o.RolesClaim, time.Duration(o.Skew)
		if oc.Issuer == o.Issuer {
			oc.EntraTenant = o.EntraTenant // the tenant of the same IdP
		}
	}
	return oc
}

// buildSSO makes the browser sign-in: its own OIDC verifier (the sso
// section's IdP and client, defaulting to the oidc section's), sealed with
// the site key, checked against the section's policy.
func (c *Config) buildSSO(ctx context.Context, sf *SSOFile, t *tunnel.Config, log *slog.Logger) (*auth.SSO, func(), error) {
	oc := c.ssoOIDCConfig(sf)
	oc.Logger = log
	hc, err := outbound.Client(c.ExtraRootsDir)
	if err != nil {
		return nil, nil, err
	}
	oc.HTTPClient = hc
	v, err := auth.NewOIDC(ctx, oc)
	if err != nil {
		return nil, nil, err
	}
	public := sf.PublicURL
	if public == "" {
		public, err = c.publicURL()
		if err != nil {
			v.Close()
			return nil, nil, err
		}
	}
	sso, err := auth.NewSSO(auth.SSOConfig{OIDC: v, PublicURL: public, Sealer: t.Sealer, Policy: t.Policy,
		LoginTTL: time.Duration(sf.LoginTTL), CapAtTokenExpiry: sf.CapAtTokenExpiry, Refresh: sf.Refresh, Logger: log})
	if err != nil {
		v.Close()
		return nil, nil, err
	}
	return sso, v.Close, nil
}

// publicURL is https://<site.host>[:<listen port>]<secret_path>: where
// clients reach this site.
func (c *Config) publicURL() (string, error) {
	if c.Site.Host == "" {
		return "", fmt.Errorf("needs site.host or sso.public_url (the public name clients dial)")
	}
	host := c.Site.Host
	if _, port, err := net.SplitHostPort(c.Tunnel.ListenAddr); err == nil && port != "" && port != "443" {
		host = net.JoinHostPort(host, port)
	} else if strings.Contains(host, ":") {
		host = "[" + host + "]" // an IPv6 address
	}
	return "https://" + host + c.Tunnel.SecretPath, nil
}
