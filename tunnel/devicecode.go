package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// DeviceCodeConfig configures DeviceCodeTokenSource: sign-in on a machine
// without a browser by the OAuth2 device authorization grant (RFC 8628).
// The user opens a URL on another device and types a short code; the
// IdP's own page does MFA and conditional access. Entra ID can block this
// grant by conditional access (and Microsoft recommends blocking it where
// it is not needed), so it is one option beside tokens and passwords,
// never the only route (shared/docs/sso.md §8).
type DeviceCodeConfig struct {
	// Issuer is the IdP's issuer URL; its discovery document must name a
	// device_authorization_endpoint. Required.
	Issuer string
	// ClientID is the OAuth2 client the IdP registered for this device
	// flow, usually a public (native) client; the gateway must accept it
	// as an audience. ClientSecret is empty for a public client.
	ClientID, ClientSecret string
	// Scopes requested. Default openid email groups profile.
	Scopes []string
	// Prompt shows the user where to go and what to type: uri and code,
	// and complete (RFC 8628 §3.3.1 verification_uri_complete; may be
	// empty) with the code already filled in. It must not block; an error
	// aborts the sign-in. Required.
	Prompt func(ctx context.Context, uri, code, complete string) error
	// HTTPClient talks to the IdP. Default: a client with a 15 s timeout.
	HTTPClient *http.Client
}

// tokenMargin: a cached ID token is reused while it stays valid this much
// longer, so the gateway does not receive one that expires in flight.
const tokenMargin = time.Minute

// DeviceCodeTokenSource returns a ClientConfig.TokenSource that signs the
// user in with the device authorization grant on first use, and again
// whenever the token it got is about to expire (no refresh tokens are
// kept). It returns the IdP's ID token. Discovery is fetched on first use (ctx bounds each call,
// including the wait for the user, which the IdP bounds with the code's
// expiry).
func DeviceCodeTokenSource(cfg DeviceCodeConfig) (func(context.Context) (string, error), error) {
	if cfg.Issuer == "" || cfg.ClientID == "" {
		return nil, errors.New("tunnel: device code: Issuer and ClientID are required")
	}
	if cfg.Prompt == nil {
		return nil, errors.New("tunnel: device code: Prompt is required (the user must see the code)")
	}
	if len(cfg.Scopes) == 0 {
		cfg.Scopes = []string{oidc.ScopeOpenID, "email", "groups", "profile"}
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 15 * time.Second} // an IdP round trip, generously
	}
	d := &deviceCode{cfg: cfg}
	return d.token, nil
}

type deviceCode struct {
	cfg DeviceCodeConfig

	mu     sync.Mutex // one sign-in at a time
	conf   *oauth2.Config
	idTok  string
	expiry time.Time
}

func (d *deviceCode) token(ctx context.Context) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.idTok != "" && time.Until(d.expiry) > tokenMargin {
		return d.idTok, nil
	}
	ctx = oidc.ClientContext(ctx, d.cfg.HTTPClient)
	if d.conf == nil {
		p, err := oidc.NewProvider(ctx, d.cfg.Issuer)
		if err != nil {
			return "", fmt.Errorf("tunnel: device code: discovery: %w", err)
		}
		ep := p.Endpoint()
		if ep.DeviceAuthURL == "" {
			return "", errors.New("tunnel: device code: the IdP offers no device authorization endpoint")
		}
		d.conf = &oauth2.Config{ClientID: d.cfg.ClientID, ClientSecret: d.cfg.ClientSecret, Endpoint: ep, Scopes: d.cfg.Scopes}
	}
	da, err := d.conf.DeviceAuth(ctx)
	if err != nil {
		return "", fmt.Errorf("tunnel: device code: %w", err)
	}
	if err := d.cfg.Prompt(ctx, da.VerificationURI, da.UserCode, da.VerificationURIComplete); err != nil {
		return "", fmt.Errorf("tunnel: device code: %w", err)
	}
	tok, err := d.conf.DeviceAccessToken(ctx, da)
	if err != nil {
		return "", fmt.Errorf("tunnel: device code: %w", err)
	}
	idt, _ := tok.Extra("id_token").(string)
	if idt == "" {
		return "", errors.New("tunnel: device code: the IdP returned no ID token (is openid among the scopes?)")
	}
	// The token response's expiry (expires_in) stands in for the ID
	// token's exp: IdPs issue both for the same lifetime, and the gateway
	// verifies the real exp anyway. None given: no caching.
	d.idTok, d.expiry = idt, tok.Expiry
	return idt, nil
}
