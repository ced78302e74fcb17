package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestOIDCVerifyToken(t *testing.T) {
	f := newFakeIdP(t)
	o := newTestOIDC(t, f, nil)
	now := time.Now()
	valid := f.sign("rsa1", f.claims(now))

	with := func(mod func(c map[string]any)) map[string]any {
		c := f.claims(now)
		mod(c)
		return c
	}
	// HS256 keyed with the RSA public key's PEM: the classic confusion attack.
	r1, _ := testRSAKeys()
	der, _ := x509.MarshalPKIXPublicKey(&r1.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	hsInput := b64(map[string]string{"alg": "HS256", "typ": "JWT", "kid": "rsa1"}) + "." + b64(f.claims(now))
	mac := hmac.New(sha256.New, pubPEM)
	mac.Write([]byte(hsInput))
	hs256 := hsInput + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))

	none := b64(map[string]string{"alg": "none", "typ": "JWT"}) + "." + b64(f.claims(now)) + "."

	parts := strings.Split(valid, ".")
	tampered := parts[0] + "." + b64(with(func(c map[string]any) { c["groups"] = []string{"admins"} })) + "." + parts[2]

	tests := []struct {
		name  string
		token string
		want  error // nil: valid
	}{
		{"valid RS256", valid, nil},
		{"valid ES256", f.sign("ec1", f.claims(now)), nil},
		{"aud list", f.sign("rsa1", with(func(c map[string]any) { c["aud"] = []string{"other", testClient} })), nil},
		{"expired within skew", f.sign("rsa1", with(func(c map[string]any) { c["exp"] = now.Add(-30 * time.Second).Unix() })), nil},
		{"expired", f.sign("rsa1", with(func(c map[string]any) { c["exp"] = now.Add(-2 * time.Minute).Unix() })), ErrTokenExpired},
		{"no exp", f.sign("rsa1", with(func(c map[string]any) { delete(c, "exp") })), ErrTokenClaims},
		{"not yet valid", f.sign("rsa1", with(func(c map[string]any) { c["nbf"] = now.Add(5 * time.Minute).Unix() })), ErrTokenNotYetValid},
		{"nbf within skew", f.sign("rsa1", with(func(c map[string]any) { c["nbf"] = now.Add(30 * time.Second).Unix() })), nil},
		{"issued in the future", f.sign("rsa1", with(func(c map[string]any) { c["iat"] = now.Add(time.Hour).Unix() })), ErrTokenNotYetValid},
		{"wrong audience", f.sign("rsa1", with(func(c map[string]any) { c["aud"] = "someone-else" })), ErrTokenAudience},
		{"no audience", f.sign("rsa1", with(func(c map[string]any) { delete(c, "aud") })), ErrTokenAudience},
		{"wrong issuer", f.sign("rsa1", with(func(c map[string]any) { c["iss"] = "https://evil.example" })), ErrTokenIssuer},
		{"issuer with trailing slash", f.sign("rsa1", with(func(c map[string]any) { c["iss"] = f.srv.URL + "/" })), ErrTokenIssuer},
		{"alg none", none, ErrTokenAlgorithm},
		{"HS256 with RSA public key", hs256, ErrTokenAlgorithm},
		{"tampered payload", tampered, ErrTokenSignature},
		{"garbage", "eyJhbGciOi.bm90.anNvbg", ErrTokenMalformed},
		{"no user claim", f.sign("rsa1", with(func(c map[string]any) {
			delete(c, "sub")
			delete(c, "preferred_username")
			delete(c, "email")
		})), ErrTokenClaims},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := o.VerifyToken(context.Background(), tt.token)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				if id.User != "alice" || id.Email != "alice@example.com" || id.DeviceID != "dev-1" || len(id.Groups) == 0 || id.Method != "token" || id.Expiry.IsZero() {
					t.Fatalf("identity %+v", id)
				}
				return
			}
			if !errors.Is(err, tt.want) || !errors.Is(err, ErrInvalidCredentials) {
				t.Fatalf("got %v, want %v and ErrInvalidCredentials", err, tt.want)
			}
			if strings.Contains(err.Error(), tt.token) {
				t.Fatal("error message contains the token")
			}
		})
	}
}

func TestOIDCAuthenticateRoutes(t *testing.T) {
	f := newFakeIdP(t)
	o := newTestOIDC(t, f, nil)
	tok := f.sign("rsa1", f.claims(time.Now()))
	for _, c := range []struct {
		name string
		cr   Credentials
		want error
	}{
		{"bearer", Credentials{BearerToken: tok}, nil},
		{"token in password field", Credentials{Username: "whatever", Password: tok}, nil},
		{"plain password", Credentials{Username: "alice", Password: "pw"}, ErrNotApplicable},
		{"nothing", Credentials{}, ErrNotApplicable},
		{"bad bearer", Credentials{BearerToken: tok + "x"}, ErrInvalidCredentials},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := o.Authenticate(context.Background(), c.cr)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

// TestOIDCKeyRotation: an unknown kid triggers one (rate-limited) JWKS
// refresh; once the IdP publishes the new key, tokens verify.
func TestOIDCKeyRotation(t *testing.T) {
	f := newFakeIdP(t)
	clk := newFakeClock()
	o := newTestOIDC(t, f, func(c *OIDCConfig) { c.Now = clk.Now; c.JWKSMinRefresh = 10 * time.Second })
	_, r2 := testRSAKeys()
	newKey := signKey{jose.RS256, r2}
	claims := f.claims(clk.Now())
	tok := signWith(newKey, "rsa2", claims)

	base := f.jwksHits.Load() // 1: the prefetch
	if _, err := o.VerifyToken(context.Background(), tok); !errors.Is(err, ErrTokenUnknownKey) {
		t.Fatalf("unknown kid: got %v", err)
	}
	if _, err := o.VerifyToken(context.Background(), tok); !errors.Is(err, ErrTokenUnknownKey) {
		t.Fatalf("unknown kid again: got %v", err)
	}
	if got := f.jwksHits.Load() - base; got != 0 {
		t.Fatalf("JWKS fetched %d times within the rate limit right after the prefetch, want 0", got)
	}
	clk.Add(11 * time.Second)
	_, _ = o.VerifyToken(context.Background(), tok)
	if got := f.jwksHits.Load() - base; got != 1 {
		t.Fatalf("JWKS fetched %d times after the rate limit, want 1", got)
	}
	// Rotation: the IdP publishes rsa2.
	f.set(func(f *fakeIdP) { f.keys["rsa2"] = newKey })
	clk.Add(11 * time.Second)
	id, err := o.VerifyToken(context.Background(), tok)
	if err != nil || id.User != "alice" {
		t.Fatalf("after rotation: %+v, %v", id, err)
	}
	// Many unknown kids in a burst: still at most one fetch.
	before := f.jwksHits.Load()
	for i := range 50 {
		_, _ = o.VerifyToken(context.Background(), signWith(newKey, "bogus"+string(rune('a'+i%26)), claims))
	}
	if got := f.jwksHits.Load() - before; got > 1 {
		t.Fatalf("burst of unknown kids caused %d fetches", got)
	}
}

func TestOIDCJWKSDown(t *testing.T) {
	t.Run("cached keys keep working", func(t *testing.T) {
		f := newFakeIdP(t)
		clk := newFakeClock()
		o := newTestOIDC(t, f, func(c *OIDCConfig) { c.Now = clk.Now; c.JWKSMaxAge = time.Minute })
		f.set(func(f *fakeIdP) { f.jwksDown = true })
		clk.Add(2 * time.Minute) // cache stale: a background refresh fails
		tok := f.sign("rsa1", f.claims(clk.Now()))
		for range 3 {
			if _, err := o.VerifyToken(context.Background(), tok); err != nil {
				t.Fatalf("with JWKS down and cached keys: %v", err)
			}
		}
	})
	t.Run("no keys is a clear error", func(t *testing.T) {
		f := newFakeIdP(t)
		f.set(func(f *fakeIdP) { f.jwksDown = true })
		o := newTestOIDC(t, f, func(c *OIDCConfig) { c.JWKSMinRefresh = time.Nanosecond })
		_, err := o.VerifyToken(context.Background(), f.sign("rsa1", f.claims(time.Now())))
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrInvalidCredentials) || !strings.Contains(err.Error(), "no signing keys") {
			t.Fatalf("got %v", err)
		}
		// The IdP comes back: keys are fetched on the next token.
		f.set(func(f *fakeIdP) { f.jwksDown = false })
		if _, err := o.VerifyToken(context.Background(), f.sign("rsa1", f.claims(time.Now()))); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
	})
}

func TestOIDCDiscovery(t *testing.T) {
	f := newFakeIdP(t)
	f.set(func(f *fakeIdP) { f.issuerInDoc = "https://login.evil.example/" })
	_, err := NewOIDC(context.Background(), OIDCConfig{Issuer: f.srv.URL, ClientID: testClient})
	if err == nil || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "discovery names issuer") {
		t.Fatalf("issuer mismatch: got %v", err)
	}
	_, err = NewOIDC(context.Background(), OIDCConfig{Issuer: "http://127.0.0.1:1", ClientID: testClient})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("unreachable: got %v", err)
	}
	for _, alg := range []string{"HS256", "none"} {
		if _, err := NewOIDC(context.Background(), OIDCConfig{Issuer: f.srv.URL, ClientID: testClient, Algorithms: []string{alg}}); err == nil {
			t.Errorf("algorithm %s accepted in config", alg)
		}
	}
	if _, err := NewOIDC(context.Background(), OIDCConfig{Issuer: f.srv.URL}); err == nil {
		t.Error("no audience accepted")
	}
}

func TestOIDCAlgorithmAllowList(t *testing.T) {
	f := newFakeIdP(t)
	o := newTestOIDC(t, f, func(c *OIDCConfig) { c.Algorithms = []string{"RS256"} })
	_, err := o.VerifyToken(context.Background(), f.sign("ec1", f.claims(time.Now())))
	if !errors.Is(err, ErrTokenAlgorithm) {
		t.Fatalf("ES256 with RS256-only: got %v", err)
	}
	// A key advertised for one algorithm cannot verify another: an ES256
	// token claiming the RSA key's kid finds no candidate key.
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	o2 := newTestOIDC(t, f, nil)
	_, err = o2.VerifyToken(context.Background(), signWith(signKey{jose.ES256, ec}, "rsa1", f.claims(time.Now())))
	if !errors.Is(err, ErrTokenUnknownKey) && !errors.Is(err, ErrTokenSignature) {
		t.Fatalf("alg/key mismatch: got %v", err)
	}
}

func TestOIDCClaimMapping(t *testing.T) {
	f := newFakeIdP(t)
	o := newTestOIDC(t, f, func(c *OIDCConfig) {
		c.UserClaims = []string{"upn", "sub"}
		c.GroupsClaim = "roles"
		c.DeviceIDClaim = "-"
		c.Audiences = []string{"api://underpass"}
	})
	c := f.claims(time.Now())
	c["aud"] = "api://underpass"
	c["upn"] = "alice@corp.example"
	c["roles"] = "vpn admin"
	id, err := o.VerifyToken(context.Background(), f.sign("rsa1", c))
	if err != nil {
		t.Fatal(err)
	}
	if id.User != "alice@corp.example" || id.DeviceID != "" || len(id.Groups) != 2 || id.Groups[1] != "admin" || id.Claims["upn"] != "alice@corp.example" {
		t.Fatalf("%+v", id)
	}
}

// BenchmarkOIDCVerifyToken is one token sign-in's verification with the
// keys cached (no network): the signature (RS256 and ES256, the two
// algorithms IdPs use), the claims and the identity. It allocates what a
// sign-in allocates, so allocs/op is per sign-in.
func BenchmarkOIDCVerifyToken(b *testing.B) {
	f := newFakeIdP(b)
	o := newTestOIDC(b, f, nil)
	for _, kid := range []string{"rsa1", "ec1"} {
		tok := f.sign(kid, f.claims(time.Now()))
		b.Run(string(f.keys[kid].alg), func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if _, err := o.VerifyToken(context.Background(), tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
