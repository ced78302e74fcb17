package auth

import (
	"context"
	"errors"
)

// Chain tries authenticators in order; the first one that does not return
// ErrNotApplicable decides (success or failure). If none applies, the result
// is ErrNotApplicable.
type Chain []Authenticator

// Authenticate implements Authenticator.
func (c Chain) Authenticate(ctx context.Context, cr Credentials) (*Identity, error) {
	for _, a := range c {
		if a == nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		id, err := a.Authenticate(ctx, cr)
		if errors.Is(err, ErrNotApplicable) {
			continue
		}
		return id, err
	}
	return nil, ErrNotApplicable
}

// AuthenticatorFunc adapts a function to Authenticator.
type AuthenticatorFunc func(ctx context.Context, c Credentials) (*Identity, error)

// Authenticate implements Authenticator.
func (f AuthenticatorFunc) Authenticate(ctx context.Context, c Credentials) (*Identity, error) {
	return f(ctx, c)
}
