package auth

import (
	"context"
	"errors"
	"testing"
)

func TestChain(t *testing.T) {
	na := AuthenticatorFunc(func(context.Context, Credentials) (*Identity, error) { return nil, ErrNotApplicable })
	bad := AuthenticatorFunc(func(context.Context, Credentials) (*Identity, error) { return nil, ErrInvalidCredentials })
	ok := AuthenticatorFunc(func(context.Context, Credentials) (*Identity, error) { return &Identity{User: "u"}, nil })
	if id, err := (Chain{na, nil, ok, bad}).Authenticate(context.Background(), Credentials{}); err != nil || id.User != "u" {
		t.Fatalf("%v %v", id, err)
	}
	if _, err := (Chain{na, bad, ok}).Authenticate(context.Background(), Credentials{}); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("first applicable must decide: %v", err)
	}
	if _, err := (Chain{na}).Authenticate(context.Background(), Credentials{}); !errors.Is(err, ErrNotApplicable) {
		t.Fatalf("none applicable: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := (Chain{ok}).Authenticate(ctx, Credentials{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: %v", err)
	}
}

func TestLooksLikeJWT(t *testing.T) {
	for s, want := range map[string]bool{
		"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln": true,
		"eyJhbGciOiJub25lIn0.eyJ9.":                 true,
		"password":                                  false,
		"eyJ.no":                                    false,
		"eyJa.b.c d":                                false,
		"abc.def.ghi":                               false,
	} {
		if LooksLikeJWT(s) != want {
			t.Errorf("%q: want %v", s, want)
		}
	}
}
