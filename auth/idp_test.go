package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// fakeIdP is an in-process OIDC provider: discovery, JWKS and a password
// grant token endpoint, with knobs for the failure tests.
type fakeIdP struct {
	srv *httptest.Server

	mu          sync.Mutex
	keys        map[string]signKey // kid -> key, published in the JWKS
	jwksDown    bool
	issuerInDoc string // "" = the real issuer
	jwksHits    atomic.Int32
	// users for the password grant: name -> password; groups per user.
	users  map[string]string
	groups map[string][]string
	aud    string
	// codes for the authorization-code grant: code -> what it redeems.
	codes map[string]fakeCode
	// refresh tokens for the refresh grant: token -> user. Each use
	// rotates the token (the old one stops working), as Dex does;
	// refreshAs, if set, names another user in the renewed ID token.
	refresh   map[string]string
	refreshAs string
}

// fakeCode is an authorization code the test issued (the fake has no
// login page): the PKCE challenge it was bound to and the ID token's nonce.
type fakeCode struct {
	challenge, nonce, user string
	offline                bool // also issue a refresh token
}

type signKey struct {
	alg  jose.SignatureAlgorithm
	priv crypto.Signer
}

var (
	rsaKeyOnce sync.Once
	rsaKey1    *rsa.PrivateKey
	rsaKey2    *rsa.PrivateKey
)

// testRSAKeys generates two 2048-bit keys once per test binary (slow).
func testRSAKeys() (*rsa.PrivateKey, *rsa.PrivateKey) {
	rsaKeyOnce.Do(func() {
		rsaKey1, _ = rsa.GenerateKey(rand.Reader, 2048)
		rsaKey2, _ = rsa.GenerateKey(rand.Reader, 2048)
	})
	return rsaKey1, rsaKey2
}

const testClient = "underpass-gw"

func newFakeIdP(t testing.TB) *fakeIdP {
	t.Helper()
	r1, _ := testRSAKeys()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeIdP{
		keys:   map[string]signKey{"rsa1": {jose.RS256, r1}, "ec1": {jose.ES256, ec}},
		users:  map[string]string{"alice@example.com": "alice-pw", "bob@example.com": "bob-pw"},
		groups: map[string][]string{"alice@example.com": {"vpn-users"}, "bob@example.com": {"staff"}},
		aud:    testClient,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		iss := f.issuerInDoc
		f.mu.Unlock()
		if iss == "" {
			iss = f.srv.URL
		}
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                iss,
			"jwks_uri":                              f.srv.URL + "/keys",
			"token_endpoint":                        f.srv.URL + "/token",
			"authorization_endpoint":                f.srv.URL + "/auth",
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
			"token_endpoint_auth_methods_supported": []string{"client_secret_basic"},
		})
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		f.jwksHits.Add(1)
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.jwksDown {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		var set jose.JSONWebKeySet
		for kid, k := range f.keys {
			set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.priv.Public(), KeyID: kid, Algorithm: string(k.alg), Use: "sig"})
		}
		_ = json.NewEncoder(w).Encode(set)
	})
	mux.HandleFunc("/token", f.token)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// token implements the password grant.
func (f *fakeIdP) token(w http.ResponseWriter, r *http.Request) {
	id, secret, _ := r.BasicAuth()
	w.Header().Set("Content-Type", "application/json")
	if id != testClient || secret != "s3cret" {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
		return
	}
	switch r.FormValue("grant_type") {
	case "authorization_code":
		f.codeGrant(w, r)
		return
	case "refresh_token":
		f.refreshGrant(w, r)
		return
	}
	if r.FormValue("grant_type") != "password" {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"unsupported_grant_type"}`))
		return
	}
	user, pass := r.FormValue("username"), r.FormValue("password")
	f.mu.Lock()
	want, ok := f.users[user]
	groups := f.groups[user]
	f.mu.Unlock()
	if !ok || want != pass {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"Invalid username or password"}`))
		return
	}
	f.writeTokens(w, user, groups, nil)
}

// writeTokens answers a grant with an hour-long ID token for user (plus
// extra claims) and an opaque access token.
func (f *fakeIdP) writeTokens(w http.ResponseWriter, user string, groups []string, extra map[string]any) map[string]any {
	now := time.Now()
	claims := map[string]any{
		"iss": f.srv.URL, "aud": f.aud, "sub": "id-" + user, "email": user,
		"groups": groups, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	maps.Copy(claims, extra)
	resp := map[string]any{"access_token": "opaque-access", "token_type": "bearer", "expires_in": 3600, "id_token": f.sign("rsa1", claims)}
	if w != nil {
		_ = json.NewEncoder(w).Encode(resp)
	}
	return resp
}

// codeGrant redeems a code issued with f.issueCode, checking PKCE S256
// (RFC 7636 §4.6) and returning an ID token with the code's nonce.
func (f *fakeIdP) codeGrant(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	c, ok := f.codes[r.FormValue("code")]
	delete(f.codes, r.FormValue("code"))
	groups := f.groups[c.user]
	f.mu.Unlock()
	sum := sha256.Sum256([]byte(r.FormValue("code_verifier")))
	if !ok || base64.RawURLEncoding.EncodeToString(sum[:]) != c.challenge {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"invalid_grant"}`))
		return
	}
	resp := f.writeTokens(nil, c.user, groups, map[string]any{"nonce": c.nonce})
	if c.offline {
		resp["refresh_token"] = f.newRefresh(c.user)
	}
	_ = json.NewEncoder(w).Encode(resp)
}

// newRefresh issues a refresh token for user.
func (f *fakeIdP) newRefresh(user string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.refresh == nil {
		f.refresh = make(map[string]string)
	}
	rt := "rt-" + RandomID()
	f.refresh[rt] = user
	return rt
}

// refreshGrant redeems a refresh token once (RFC 6749 §6) for a new ID
// token and a rotated refresh token.
func (f *fakeIdP) refreshGrant(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	user, ok := f.refresh[r.FormValue("refresh_token")]
	delete(f.refresh, r.FormValue("refresh_token"))
	if f.refreshAs != "" {
		user = f.refreshAs
	}
	groups := f.groups[user]
	f.mu.Unlock()
	if !ok {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"refresh token unknown or used"}`))
		return
	}
	resp := f.writeTokens(nil, user, groups, nil)
	resp["refresh_token"] = f.newRefresh(user)
	_ = json.NewEncoder(w).Encode(resp)
}

// issueCode registers an authorization code, as the IdP's login page
// would after the user signed in.
func (f *fakeIdP) issueCode(code string, c fakeCode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.codes == nil {
		f.codes = make(map[string]fakeCode)
	}
	f.codes[code] = c
}

// sign returns a compact JWS of claims with key kid.
func (f *fakeIdP) sign(kid string, claims map[string]any) string {
	f.mu.Lock()
	k, ok := f.keys[kid]
	f.mu.Unlock()
	if !ok {
		panic("no key " + kid)
	}
	return signWith(k, kid, claims)
}

func signWith(k signKey, kid string, claims map[string]any) string {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: jose.JSONWebKey{Key: k.priv, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		panic(err)
	}
	p, _ := json.Marshal(claims)
	obj, err := s.Sign(p)
	if err != nil {
		panic(err)
	}
	out, err := obj.CompactSerialize()
	if err != nil {
		panic(err)
	}
	return out
}

func (f *fakeIdP) set(fn func(f *fakeIdP)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// claims returns a valid claim set for the test client.
func (f *fakeIdP) claims(now time.Time) map[string]any {
	return map[string]any{
		"iss": f.srv.URL, "aud": testClient, "sub": "u1",
		"preferred_username": "alice", "email": "alice@example.com",
		"groups": []string{"vpn-users", "staff"}, "deviceid": "dev-1",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
}

// newTestOIDC builds a verifier against f with a client that is cleaned up
// (its idle keep-alive goroutines would trip goleak).
func newTestOIDC(t testing.TB, f *fakeIdP, mod func(*OIDCConfig)) *OIDC {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	cfg := OIDCConfig{
		Issuer: f.srv.URL, ClientID: testClient, ClientSecret: "s3cret",
		HTTPClient: &http.Client{Transport: tr, Timeout: 5 * time.Second},
	}
	if mod != nil {
		mod(&cfg)
	}
	o, err := NewOIDC(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.Close)
	return o
}
