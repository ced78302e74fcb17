package testenv

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Issuer is an in-process OIDC provider for sign-in benchmarks and load
// runs, where Dex would measure Dex: discovery and a JWKS with one
// RSA-2048 key (RS256, as Entra ID and Dex sign), and tokens it signs on
// request. It has no login or token endpoint.
type Issuer struct {
	URL string // the issuer, "http://host:port"
	key *rsa.PrivateKey
	sig jose.Signer
}

// NewIssuer serves an Issuer on l until the test ends.
func NewIssuer(t testing.TB, l net.Listener) *Issuer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: k, KeyID: "k1"}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	is := &Issuer{URL: "http://" + l.Addr().String(), key: k, sig: sig}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer": is.URL, "jwks_uri": is.URL + "/keys",
			"authorization_endpoint": is.URL + "/auth", "token_endpoint": is.URL + "/token",
			"id_token_signing_alg_values_supported": []string{"RS256"},
		})
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
			{Key: k.Public(), KeyID: "k1", Algorithm: string(jose.RS256), Use: "sig"}}})
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second} // slowloris guard; clients send headers at once
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return is
}

// Token signs an access token for user and audience, valid for an hour.
func (is *Issuer) Token(t testing.TB, user, audience string) string {
	t.Helper()
	now := time.Now()
	c, _ := json.Marshal(map[string]any{
		"iss": is.URL, "aud": audience, "sub": "sub-" + user,
		"preferred_username": user, "groups": []string{"vpn-users"},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	})
	obj, err := is.sig.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(fmt.Errorf("testenv: token: %w", err))
	}
	return tok
}
