// Package auth decides who may open a tunnel: authenticators turn the
// credentials a client presents (password, bearer token, client certificate)
// into an Identity, and a Policy decides whether that identity is admitted.
//
// Authenticators never log credentials; errors they return are safe to show
// to the user (they name the reason, never the secret).
package auth

import (
	"context"
	"crypto/x509"
	"errors"
	"net/netip"
	"time"
)

// Credentials is what a client presented at sign-in. Empty fields were not
// presented.
type Credentials struct {
	Username    string
	Password    string
	BearerToken string
	// PeerCertificates is the verified client certificate chain (leaf
	// first) from mutual TLS, if any.
	PeerCertificates []*x509.Certificate
	RemoteAddr       netip.Addr
	DeviceID         string
	UserAgent        string
}

// Identity is an authenticated principal.
type Identity struct {
	User  string
	Email string
	// Subject is the stable principal ID: "<tid>/<oid>" for Entra ID
	// tokens (their user name can change), the token's sub otherwise;
	// empty for non-token methods.
	Subject string
	Groups  []string
	// Roles are the token's app roles (Entra's "roles" claim); the
	// built-in policy matches them like groups.
	Roles []string
	// GroupsOverage means the IdP left the groups out because there were
	// too many (Entra: no "groups", only "_claim_names.groups"), so group
	// rules cannot be judged.
	GroupsOverage bool
	DeviceID      string
	// Claims holds the raw token claims (nil for non-token methods).
	Claims map[string]any
	// Expiry is when the credential stops being valid (zero: never; the
	// session timeout still applies).
	Expiry time.Time
	// Method names how the identity was established: "password",
	// "token", "sso", "certificate", "static".
	Method string
	// Refresh, when set, is the IdP's refresh token sealed with the site
	// key (SSOConfig.Refresh): opaque outside this package, only
	// SSO.Refresh opens it. Such an identity is renewed when Expiry
	// passes instead of ending there.
	Refresh string
}

// Authenticator verifies credentials.
//
// It returns ErrNotApplicable when the credentials carry nothing it can
// judge (so a chain can try the next one), and an error wrapping
// ErrInvalidCredentials when they are wrong.
type Authenticator interface {
	Authenticate(ctx context.Context, c Credentials) (*Identity, error)
}

var (
	// ErrInvalidCredentials means the credentials were judged and rejected.
	ErrInvalidCredentials = errors.New("auth: invalid credentials")
	// ErrNotApplicable means the authenticator has nothing to say about
	// these credentials.
	ErrNotApplicable = errors.New("auth: credentials not applicable")
)
