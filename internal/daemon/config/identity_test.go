package config

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/internal/testinfra/dextest"
)

func TestIdentityValidation(t *testing.T) {
	key := auth.GenerateSealerKey()
	tests := []struct {
		name, doc string
		want      []string
	}{
		{"bad issuer", "identity: {oidc: {issuer: 'not a url', client_id: gw}}\n", []string{"gw.yaml:1: identity", "oidc.issuer"}},
		{"no client id", "identity: {oidc: {issuer: 'https://idp.example'}}\n", []string{"client_id"}},
		{"password grant without secret", "identity: {oidc: {issuer: 'https://idp.example', client_id: gw, password_grant: true}}\n", []string{"client_secret"}},
		{"missing CA", "identity: {client_certs: {ca: nope.pem}}\n", []string{"client_certs.ca", "nope.pem"}},
		{"bad identity_from", "identity: {client_certs: {ca: ca.pem, identity_from: [upn, sid]}}\n", []string{`"sid"`}},
		{"claim rule", "identity: {policy: {require_claims: [{claim: compliant}]}}\n", []string{"require_claims[0]"}},
		{"negative bans", "identity: {bans: {threshold: -1}}\n", []string{"bans"}},
		{"bad session key", "identity: {session_key: short}\n", []string{"session_key"}},
		{"unknown key", "identity: {oidc: {issuer: 'https://idp.example', client_id: gw, colour: blue}}\n", []string{"colour"}},
		{"entra multi-tenant alias", "\n\nidentity: {oidc: {issuer: 'https://idp.example', client_id: gw, entra_tenant: organizations}}\n", []string{"gw.yaml:3: identity", `oidc.entra_tenant "organizations" accepts tokens of any tenant`}},
		{"entra tenant not a GUID", "identity: {oidc: {issuer: 'https://idp.example', client_id: gw, entra_tenant: contoso.com}}\n", []string{"gw.yaml:1: identity", `oidc.entra_tenant "contoso.com": want the tenant ID, a GUID`}},
		{"negative skew", "identity: {oidc: {issuer: 'https://idp.example', client_id: gw, skew: -1m}}\n", []string{"gw.yaml:1: identity", "oidc.skew -1m0s"}},
		{"skew over an hour", "identity: {oidc: {issuer: 'https://idp.example', client_id: gw, skew: 2h}}\n", []string{"oidc.skew 2h0m0s: want 0 (default 1m) up to 1h0m0s"}},
		{"skew not a duration", "identity: {oidc: {issuer: 'https://idp.example', client_id: gw, skew: 5}}\n", []string{"gw.yaml: line 1:", `"5" is not a duration`}},
		{"sso without issuer", "identity: {sso: {client_id: gw}, session_key: " + key + "}\n", []string{"gw.yaml:1: identity", "sso.issuer"}},
		{"sso without client id", "identity: {sso: {issuer: 'https://idp.example'}, session_key: " + key + "}\n", []string{"sso.client_id"}},
		{"sso without session key", "identity: {oidc: {issuer: 'https://idp.example', client_id: gw}, sso: {}}\n", []string{"sso needs session_key"}},
		{"sso negative ttl", "identity: {sso: {issuer: 'https://idp.example', client_id: gw, login_ttl: -1m}, session_key: " + key + "}\n", []string{"sso.login_ttl"}},
		{"sso http public url", "identity: {sso: {issuer: 'https://idp.example', client_id: gw, public_url: 'http://vpn'}, session_key: " + key + "}\n", []string{"sso.public_url"}},
		{"sso refresh and cap", "\nidentity:\n  sso: {issuer: 'https://idp.example', client_id: gw, refresh: true, cap_at_token_expiry: true}\n  session_key: " + key + "\n", []string{"gw.yaml:2: identity", "sso.refresh and sso.cap_at_token_expiry exclude each other"}},
		{"sso refresh not a bool", "identity:\n  sso: {issuer: 'https://idp.example', client_id: gw, refresh: sometimes}\n  session_key: " + key + "\n", []string{"gw.yaml: line 2:", "sometimes", "into bool"}},
		{"sso unknown key", "\n\nidentity:\n  sso: {issuer: 'https://idp.example', client_id: gw, colour: blue}\n", []string{"gw.yaml:", "colour"}},
	}
	dir := t.TempDir()
	ca, _, err := certutil.SelfSigned([]string{"ca"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(filepath.Join(dir, "gw.yaml"), []byte(tt.doc))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("want *Error, got %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
	ok := fmt.Sprintf("identity:\n  client_certs: {ca: ca.pem, identity_from: [email], device: true}\n  session_key: %q\n  policy: {allow_groups: [vpn-users]}\n  bans: {threshold: 10, ban_for: 5m}\n", auth.GenerateSealerKey())
	c, err := Parse(filepath.Join(dir, "gw.yaml"), []byte(ok))
	if err != nil {
		t.Fatalf("valid identity section: %v", err)
	}
	release, err := c.BuildIdentity(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	id := &c.Tunnel
	if id.ClientCerts == nil || !id.ClientCerts.DeviceMode() || id.Sealer == nil || id.Policy == nil || id.Bans == nil || id.Authenticator == nil {
		t.Fatalf("identity not built: %+v", id)
	}
}

// TestCertificateAndUser: with required: true and a user method the
// certificate names the device and the user signs in too (issue 13 item
// 4); without a user method, or without required, a certificate signs in
// alone; device: true asks for both explicitly.
func TestCertificateAndUser(t *testing.T) {
	dir := t.TempDir()
	ca, _, err := certutil.SelfSigned([]string{"device-ca"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca, 0o600); err != nil {
		t.Fatal(err)
	}
	users := "users:\n  - {name: alice, password_hash: \"" + hash + "\"}\n"
	for _, tt := range []struct {
		name, doc  string
		deviceMode bool
	}{
		{"required with users", users + "identity:\n  client_certs: {ca: ca.pem, required: true}\n", true},
		{"required, no user method", "identity:\n  client_certs: {ca: ca.pem, required: true}\n", false},
		{"optional with users", users + "identity:\n  client_certs: {ca: ca.pem}\n", false},
		{"device: true", "identity:\n  client_certs: {ca: ca.pem, device: true}\n", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(filepath.Join(dir, "gw.yaml"), []byte(tt.doc))
			if err != nil {
				t.Fatal(err)
			}
			release, err := c.BuildIdentity(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			if got := c.Tunnel.ClientCerts.DeviceMode(); got != tt.deviceMode {
				t.Errorf("device mode %v, want %v", got, tt.deviceMode)
			}
		})
	}
}

// TestOIDCKeys: entra_tenant, roles_claim and skew reach the verifier's
// configuration, in the oidc section and in the sso section that shares
// its IdP.
func TestOIDCKeys(t *testing.T) {
	const tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	c, err := Parse("gw.yaml", []byte("identity:\n  oidc: {issuer: 'https://idp.example', client_id: gw, entra_tenant: "+tenant+", roles_claim: app_roles, skew: 5m}\n"))
	if err != nil {
		t.Fatal(err)
	}
	oc := c.IdentityFile.OIDC.config()
	if oc.EntraTenant != tenant || oc.RolesClaim != "app_roles" || oc.Skew != 5*time.Minute || oc.Audiences[0] != "gw" {
		t.Fatalf("oidc config: %+v", oc)
	}
	// The sso section inherits them; the tenant only for the same issuer.
	sc := c.ssoOIDCConfig(&SSOFile{})
	if sc.EntraTenant != tenant || sc.RolesClaim != "app_roles" || sc.Skew != 5*time.Minute || sc.Issuer != "https://idp.example" {
		t.Fatalf("sso config: %+v", sc)
	}
	if sc := c.ssoOIDCConfig(&SSOFile{Issuer: "https://other.example"}); sc.EntraTenant != "" || sc.RolesClaim != "app_roles" {
		t.Fatalf("sso config for another IdP: %+v", sc)
	}
}

// buildIdentity parses doc and builds its identity section, released
// when the test ends.
func buildIdentity(t *testing.T, ctx context.Context, doc string) *Config {
	t.Helper()
	c, err := Parse("gw.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	release, err := c.BuildIdentity(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	return c
}

// TestOIDCKeysWithDex: with roles_claim the policy's roles come from the
// named claim of a real IdP's token (Dex's groups here), and with
// entra_tenant a token without that tenant (Dex's) is refused.
func TestOIDCKeysWithDex(t *testing.T) {
	d := dextest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	build := func(extra string) (*auth.Identity, error) {
		c := buildIdentity(t, ctx, fmt.Sprintf("identity:\n  oidc: {issuer: %q, client_id: %q, client_secret: %q, password_grant: true, %s}\n", d.Issuer, d.ClientID, d.ClientSecret, extra))
		return c.Tunnel.Authenticator.Authenticate(ctx, auth.Credentials{Username: dextest.Alice.Email, Password: dextest.Alice.Password})
	}
	if id, err := build("roles_claim: groups, skew: 5m"); err != nil || !slices.Contains(id.Roles, "vpn-users") {
		t.Fatalf("roles from the groups claim: %+v %v", id, err)
	}
	// Dex's token names no tenant: refused as another tenant's.
	var te *auth.TokenError
	if id, err := build("entra_tenant: 72f988bf-86f1-41af-91ab-2d7cd011db47"); !errors.As(err, &te) || te.Detail != "another tenant" {
		t.Fatalf("a token of no Entra tenant: %+v %v", id, err)
	}
}

// TestIdentityWithDex builds the OIDC sign-in from a config file against a
// real IdP: Alice signs in with her password at the IdP, Bob is denied by
// the policy, a wrong password is a wrong password.
func TestIdentityWithDex(t *testing.T) {
	d := dextest.Start(t)
	doc := fmt.Sprintf(`identity:
  oidc: {issuer: %q, client_id: %q, client_secret: %q, scopes: [openid, email, groups, profile], password_grant: true}
  policy: {allow_groups: [vpn-users]}
`, d.Issuer, d.ClientID, d.ClientSecret)
	c, err := Parse("gw.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	release, err := c.BuildIdentity(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	id := &c.Tunnel
	if !id.OfferBearer {
		t.Error("OIDC should offer bearer sign-in by default")
	}
	alice, err := id.Authenticator.Authenticate(ctx, auth.Credentials{Username: dextest.Alice.Email, Password: dextest.Alice.Password})
	if err != nil {
		t.Fatalf("alice: %v", err)
	}
	if err := id.Policy.Check(ctx, alice); err != nil {
		t.Fatalf("alice denied: %v", err)
	}
	bob, err := id.Authenticator.Authenticate(ctx, auth.Credentials{Username: dextest.Bob.Email, Password: dextest.Bob.Password})
	if err != nil {
		t.Fatalf("bob: %v", err)
	}
	if err := id.Policy.Check(ctx, bob); !errors.Is(err, auth.ErrDenied) {
		t.Fatalf("bob: %v, want denied", err)
	}
	if _, err := id.Authenticator.Authenticate(ctx, auth.Credentials{Username: dextest.Alice.Email, Password: "wrong"}); !errors.Is(err, auth.ErrInvalidCredentials) {
		t.Fatalf("wrong password: %v", err)
	}
}

// TestSSOFromConfig builds browser sign-in from the identity.sso section
// against a real IdP, its public URL from site.host, the listen port and
// secret_path; without site.host nor public_url it is a clear error.
func TestSSOFromConfig(t *testing.T) {
	d := dextest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	doc := fmt.Sprintf(`listen: ":8443"
secret_path: /vpn-4f9c
pre_login_banner: "Authorised use only."
site: {host: vpn.example.com}
identity:
  oidc: {issuer: %q, client_id: %q, client_secret: %q}
  sso: {scopes: [openid, email, groups, profile], login_ttl: 5m, refresh: true}
  session_key: %q
`, d.Issuer, d.ClientID, d.ClientSecret, auth.GenerateSealerKey())
	c := buildIdentity(t, ctx, doc)
	if c.Tunnel.PreLoginBanner != "Authorised use only." {
		t.Fatalf("pre_login_banner: %q", c.Tunnel.PreLoginBanner)
	}
	s := c.Tunnel.SSO
	if s == nil || !s.Handles("/vpn-4f9c/sso/login") || s.Handles("/sso/login") {
		t.Fatalf("SSO not built under the secret path: %+v", s)
	}
	priv, _ := ecdh.P256().GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(priv.PublicKey())
	k, _ := auth.ParseSTRAPKey(base64.StdEncoding.EncodeToString(der))
	f, err := s.Begin(k)
	if err != nil || !strings.HasPrefix(f.LoginURL, "https://vpn.example.com:8443/vpn-4f9c/sso/login?t=") {
		t.Fatalf("%+v %v", f, err)
	}
	// refresh: true asks the IdP for a refresh token.
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, strings.TrimPrefix(f.LoginURL, "https://vpn.example.com:8443"), nil))
	loc, err := url.Parse(rec.Header().Get("Location"))
	if err != nil || rec.Code != http.StatusFound || !slices.Contains(strings.Fields(loc.Query().Get("scope")), auth.ScopeOfflineAccess) {
		t.Fatalf("login redirect without offline_access: %d %q", rec.Code, rec.Header().Get("Location"))
	}

	c, err = Parse("gw.yaml", []byte(strings.Replace(doc, "site: {host: vpn.example.com}\n", "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.BuildIdentity(ctx, nil); err == nil || !strings.Contains(err.Error(), "identity.sso: needs site.host or sso.public_url") {
		t.Fatalf("no public URL: %v", err)
	}
}
