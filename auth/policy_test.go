package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestRules(t *testing.T) {
	r := &Rules{
		AllowGroups: []string{"vpn-users"},
		AllowUsers:  []string{"Contractor@Example.com"},
		DenyUsers:   []string{"mallory"},
		DenyGroups:  []string{"suspended"},
		RequireClaims: []ClaimRule{
			{Claim: "compliant", Values: []string{"true"}, Methods: []string{"token", "password"}, Reason: "this device is not marked compliant"},
			{Claim: "tier", Values: []string{"gold", "silver"}, Methods: []string{"token"}},
		},
	}
	tok := func(c map[string]any) map[string]any {
		if c == nil {
			c = map[string]any{}
		}
		if _, ok := c["compliant"]; !ok {
			c["compliant"] = true
		}
		if _, ok := c["tier"]; !ok {
			c["tier"] = "gold"
		}
		return c
	}
	tests := []struct {
		name   string
		id     *Identity
		reason string // "" = allowed
	}{
		{"group member", &Identity{User: "alice", Groups: []string{"vpn-users"}, Method: "token", Claims: tok(nil)}, ""},
		{"allowed user, any case, via email", &Identity{User: "c1", Email: "contractor@example.com", Method: "token", Claims: tok(nil)}, ""},
		{"not in group", &Identity{User: "bob", Groups: []string{"staff"}, Method: "token", Claims: tok(nil)}, "not in a group allowed"},
		{"denied user", &Identity{User: "Mallory", Groups: []string{"vpn-users"}, Method: "token", Claims: tok(nil)}, "blocked"},
		{"denied group wins", &Identity{User: "alice", Groups: []string{"vpn-users", "suspended"}, Method: "token", Claims: tok(nil)}, `"suspended"`},
		{"not compliant", &Identity{User: "alice", Groups: []string{"vpn-users"}, Method: "token", Claims: tok(map[string]any{"compliant": false})}, "not marked compliant"},
		{"compliance claim missing", &Identity{User: "alice", Groups: []string{"vpn-users"}, Method: "password", Claims: map[string]any{}}, "not marked compliant"},
		{"one-of claim", &Identity{User: "alice", Groups: []string{"vpn-users"}, Method: "token", Claims: tok(map[string]any{"tier": "silver"})}, ""},
		{"one-of claim miss", &Identity{User: "alice", Groups: []string{"vpn-users"}, Method: "token", Claims: tok(map[string]any{"tier": "bronze"})}, `"tier"`},
		{"list claim", &Identity{User: "alice", Groups: []string{"vpn-users"}, Method: "token", Claims: tok(map[string]any{"tier": []any{"bronze", "gold"}})}, ""},
		{"certificate user skips token rules", &Identity{User: "alice", Groups: []string{"vpn-users"}, Method: "certificate"}, ""},
		{"nil identity", nil, "not signed in"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := r.Check(context.Background(), tt.id)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("denied: %v", err)
				}
				return
			}
			var de *DeniedError
			if !errors.As(err, &de) || !errors.Is(err, ErrDenied) || !strings.Contains(de.Reason, tt.reason) {
				t.Fatalf("got %v, want reason containing %q", err, tt.reason)
			}
		})
	}
	if got := r.ClaimNames(); len(got) != 2 || got[0] != "compliant" {
		t.Errorf("ClaimNames = %v", got)
	}
}

func TestRulesEmptyAllowsAll(t *testing.T) {
	if err := (&Rules{}).Check(context.Background(), &Identity{User: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := (&Rules{RequireClaims: []ClaimRule{{Claim: "deviceid"}}}).Check(context.Background(), &Identity{User: "x", Claims: map[string]any{"deviceid": "d"}}); err != nil {
		t.Fatalf("presence-only rule: %v", err)
	}
}

func TestAllPolicies(t *testing.T) {
	deny := PolicyFunc(func(context.Context, *Identity) error { return &DeniedError{Reason: "custom"} })
	p := AllPolicies{nil, &Rules{}, deny}
	if err := p.Check(context.Background(), &Identity{User: "x"}); err == nil || !strings.Contains(err.Error(), "custom") {
		t.Fatalf("got %v", err)
	}
	if err := (AllPolicies{&Rules{}}).Check(context.Background(), &Identity{User: "x"}); err != nil {
		t.Fatal(err)
	}
}
