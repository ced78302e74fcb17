package auth

import (
	"context"
	"errors"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func TestStaticUsers(t *testing.T) {
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	su, err := NewStaticUsers([]StaticUser{{Name: "alice", Hash: string(h), Groups: []string{"staff"}}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, user, pass string
		want             error
	}{
		{"ok", "alice", "s3cret", nil},
		{"wrong password", "alice", "nope", ErrInvalidCredentials},
		{"unknown user", "mallory", "s3cret", ErrInvalidCredentials},
		{"no password", "alice", "", ErrNotApplicable},
		{"nothing", "", "", ErrNotApplicable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := su.Authenticate(context.Background(), Credentials{Username: tt.user, Password: tt.pass})
			if !errors.Is(err, tt.want) || (err == nil && (id.User != "alice" || id.Groups[0] != "staff")) {
				t.Fatalf("got %+v, %v; want %v", id, err, tt.want)
			}
		})
	}
	for _, bad := range [][]StaticUser{
		{{Name: "", Hash: string(h)}},
		{{Name: "a", Hash: "plain"}},
		{{Name: "a", Hash: string(h)}, {Name: "a", Hash: string(h)}},
	} {
		if _, err := NewStaticUsers(bad); err == nil {
			t.Errorf("%+v: want error", bad)
		}
	}
}
