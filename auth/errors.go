package auth

import "errors"

// ErrUnavailable means the credentials could not be judged because a
// dependency (the identity provider, its signing keys) is unreachable or
// misconfigured. It is not the client's fault: callers should not add ban
// points for it.
var ErrUnavailable = errors.New("auth: identity provider unavailable")

// Token failure kinds. A *TokenError wraps ErrInvalidCredentials and exactly
// one of these, so callers can test with errors.Is.
var (
	ErrTokenMalformed   = errors.New("malformed token")
	ErrTokenAlgorithm   = errors.New("signing algorithm not allowed")
	ErrTokenUnknownKey  = errors.New("token signed with an unknown key")
	ErrTokenSignature   = errors.New("bad token signature")
	ErrTokenIssuer      = errors.New("token from another issuer")
	ErrTokenAudience    = errors.New("token for another application")
	ErrTokenExpired     = errors.New("token expired")
	ErrTokenNotYetValid = errors.New("token not yet valid")
	ErrTokenClaims      = errors.New("token lacks a required claim")
)

// TokenError is a rejected token. Its message is safe to show the user: it
// names the failure, never the token.
type TokenError struct {
	Kind   error  // one of the ErrToken* values
	Detail string // optional, safe for users (claim names, algorithm names)
}

func (e *TokenError) Error() string {
	if e.Detail != "" {
		return "auth: invalid token: " + e.Kind.Error() + " (" + e.Detail + ")"
	}
	return "auth: invalid token: " + e.Kind.Error()
}

// Unwrap lets errors.Is match both ErrInvalidCredentials and the kind.
func (e *TokenError) Unwrap() []error { return []error{ErrInvalidCredentials, e.Kind} }

// UnavailableError says what was unavailable; it wraps ErrUnavailable and
// the cause. Error() omits the cause (it may name internal URLs); log
// Cause if needed.
type UnavailableError struct {
	What  string
	Cause error
}

func (e *UnavailableError) Error() string { return "auth: identity provider unavailable: " + e.What }

// Unwrap implements errors.Unwrap for ErrUnavailable and the cause.
func (e *UnavailableError) Unwrap() []error {
	if e.Cause == nil {
		return []error{ErrUnavailable}
	}
	return []error{ErrUnavailable, e.Cause}
}
