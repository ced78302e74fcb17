package dextest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func claims(t *testing.T, jwt string) map[string]any {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %d parts", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestDexPasswordGrant(t *testing.T) {
	d := Start(t)
	idt, at := d.Token(t, Alice.Email, Alice.Password)
	c := claims(t, idt)
	if c["iss"] != d.Issuer || c["aud"] != d.ClientID || c["email"] != Alice.Email || c["preferred_username"] != "alice" {
		t.Fatalf("id token claims: %v", c)
	}
	if g, _ := c["groups"].([]any); len(g) != 2 || g[0] != "vpn-users" {
		t.Fatalf("groups: %v", c["groups"])
	}
	if ac := claims(t, at); ac["aud"] != d.ClientID {
		t.Fatalf("access token claims: %v", ac)
	}
	_, err := d.Grant(context.Background(), Alice.Email, "wrong")
	var ge *GrantError
	if !errors.As(err, &ge) || ge.Code != "invalid_grant" && ge.Code != "access_denied" {
		t.Fatalf("wrong password: %v", err)
	}
	t.Logf("wrong password: %v", err)
}
