package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/oauth2"
)

// PasswordGrant signs users in with name and password by exchanging them
// at the IdP's token endpoint (OAuth2 resource-owner password grant) and
// verifying the returned token like any other (R-A2).
type PasswordGrant struct {
	o    *OIDC
	conf oauth2.Config
}

// PasswordGrant returns the password authenticator sharing this verifier.
// It needs OIDCConfig.ClientID.
func (o *OIDC) PasswordGrant() (*PasswordGrant, error) {
	if o.cfg.ClientID == "" {
		return nil, errors.New("auth: oidc: password sign-in needs a client ID")
	}
	ep := o.provider.Endpoint()
	ep.AuthStyle = oauth2.AuthStyle(o.authStyle)
	return &PasswordGrant{o: o, conf: oauth2.Config{
		ClientID:     o.cfg.ClientID,
		ClientSecret: o.cfg.ClientSecret,
		Endpoint:     ep,
		Scopes:       o.cfg.Scopes,
	}}, nil
}

// chooseAuthStyle picks how the client authenticates at the token endpoint
// from discovery, so a wrong password costs exactly one request (the
// library's auto-detection retries on every failure, doubling IdP load and
// lockout counts).
func chooseAuthStyle(methods []string, secret string) int {
	switch {
	case secret == "":
		return int(oauth2.AuthStyleInParams)
	case len(methods) == 0 || slices.Contains(methods, "client_secret_basic"):
		return int(oauth2.AuthStyleInHeader) // the RFC 6749 default
	case slices.Contains(methods, "client_secret_post"):
		return int(oauth2.AuthStyleInParams)
	}
	return int(oauth2.AuthStyleInHeader)
}

// Authenticate implements Authenticator for Username + Password. A
// JWT-shaped password is left to the token verifier (ErrNotApplicable).
// A refused password is ErrInvalidCredentials; an unreachable or
// misconfigured IdP is *UnavailableError (no ban points for those).
func (g *PasswordGrant) Authenticate(ctx context.Context, c Credentials) (*Identity, error) {
	if c.Username == "" || c.Password == "" || LooksLikeJWT(c.Password) {
		return nil, ErrNotApplicable
	}
	hctx := context.WithValue(ctx, oauth2.HTTPClient, g.o.cfg.HTTPClient)
	tok, err := g.conf.PasswordCredentialsToken(hctx, c.Username, c.Password)
	if err != nil {
		err = classifyGrantError(err)
		g.o.log.Info("auth: password sign-in failed", "client", c.RemoteAddr, "user", c.Username, "err", err)
		return nil, err
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" && LooksLikeJWT(tok.AccessToken) {
		raw = tok.AccessToken
	}
	if raw == "" {
		return nil, &UnavailableError{What: "the identity provider returned no verifiable token"}
	}
	id, err := g.o.VerifyToken(ctx, raw)
	if err != nil {
		g.o.log.Warn("auth: token from the password grant rejected", "user", c.Username, "err", err)
		if errors.Is(err, ErrInvalidCredentials) {
			// The IdP accepted the password, so this is a gateway/IdP
			// configuration mismatch (audience, issuer, algorithm).
			return nil, &UnavailableError{What: "the identity provider's token was not accepted", Cause: err}
		}
		return nil, err
	}
	id.Method = "password"
	return id, nil
}

// classifyGrantError maps a token-endpoint failure to a safe error.
func classifyGrantError(err error) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		return &UnavailableError{What: "token endpoint unreachable", Cause: err}
	}
	switch re.ErrorCode {
	case "invalid_grant", "access_denied": // RFC 6749 says invalid_grant; Dex sends access_denied
		// Entra reports conditions the user can act on with AADSTS codes.
		switch {
		case strings.Contains(re.ErrorDescription, "AADSTS50076"), strings.Contains(re.ErrorDescription, "AADSTS50079"):
			return fmt.Errorf("%w: multi-factor authentication is required; sign in with a token", ErrInvalidCredentials)
		case strings.Contains(re.ErrorDescription, "AADSTS50053"):
			return fmt.Errorf("%w: account locked", ErrInvalidCredentials)
		case strings.Contains(re.ErrorDescription, "AADSTS50055"):
			return fmt.Errorf("%w: password expired", ErrInvalidCredentials)
		}
		return fmt.Errorf("%w: wrong user name or password", ErrInvalidCredentials)
	case "invalid_client", "unauthorized_client", "unsupported_grant_type", "invalid_scope":
		return &UnavailableError{What: "the identity provider refused the gateway's client (" + re.ErrorCode + ")", Cause: err}
	}
	if re.Response != nil && re.Response.StatusCode >= 500 {
		return &UnavailableError{What: "identity provider error", Cause: err}
	}
	// Other 4xx: treat as a rejected sign-in, the safe default.
	return fmt.Errorf("%w: sign-in refused by the identity provider", ErrInvalidCredentials)
}
