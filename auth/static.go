package auth

import (
	"context"
	"crypto/subtle"
	"fmt"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// StaticUser is a lab or demo account with a bcrypt password hash.
type StaticUser struct {
	Name   string
	Hash   string // bcrypt ($2a$/$2b$/$2y$)
	Groups []string
}

// StaticUsers authenticates a fixed list of bcrypt users. It exists for
// labs and the embedded demo; production sign-in goes through the IdP.
type StaticUsers struct {
	users map[string]StaticUser
	// dummyHash is compared against when the user does not exist, so an
	// unknown user costs the same bcrypt work as a wrong password and
	// timing does not reveal which names exist. Its cost is the highest
	// of the configured hashes.
	dummyHash []byte
}

// NewStaticUsers checks every entry and returns the authenticator; the
// error lists every bad entry.
func NewStaticUsers(users []StaticUser) (*StaticUsers, error) {
	s := &StaticUsers{users: make(map[string]StaticUser, len(users))}
	var bad []string
	for i, u := range users {
		switch {
		case u.Name == "":
			bad = append(bad, fmt.Sprintf("user %d: empty name", i))
		case s.users[u.Name].Name != "":
			bad = append(bad, fmt.Sprintf("user %d: duplicate name %q", i, u.Name))
		}
		if _, err := bcrypt.Cost([]byte(u.Hash)); err != nil {
			bad = append(bad, fmt.Sprintf("user %d (%s): not a bcrypt hash", i, u.Name))
		}
		s.users[u.Name] = u
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("auth: static users: %s", strings.Join(bad, "; "))
	}
	cost := bcrypt.MinCost
	for _, u := range users {
		if c, _ := bcrypt.Cost([]byte(u.Hash)); c > cost {
			cost = c
		}
	}
	var err error
	if s.dummyHash, err = bcrypt.GenerateFromPassword([]byte("underpass-dummy"), cost); err != nil {
		return nil, fmt.Errorf("auth: static users: %w", err)
	}
	return s, nil
}

// Authenticate checks Username and Password.
func (s *StaticUsers) Authenticate(_ context.Context, c Credentials) (*Identity, error) {
	if c.Username == "" || c.Password == "" {
		return nil, ErrNotApplicable
	}
	u, ok := s.users[c.Username]
	hash := []byte(u.Hash)
	if !ok {
		hash = s.dummyHash
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(c.Password))
	if !ok || err != nil || subtle.ConstantTimeCompare([]byte(u.Name), []byte(c.Username)) != 1 {
		return nil, fmt.Errorf("%w: wrong user name or password", ErrInvalidCredentials)
	}
	return &Identity{User: u.Name, Groups: append([]string(nil), u.Groups...), DeviceID: c.DeviceID, Method: "static"}, nil
}
