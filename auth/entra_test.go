package auth

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

const (
	testTenant  = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	otherTenant = "11111111-2222-3333-4444-555555555555"
)

// TestEntraTokens: Entra ID token shapes from an in-process issuer
// (issue 13 item 5): v1 and v2 issuers pinned to one tenant, identity
// from oid + tid, the 5-minute skew with nbf 30 s ahead, app roles in the
// policy, and groups overage refused with its reason and logged.
func TestEntraTokens(t *testing.T) {
	f := newFakeIdP(t)
	var logs testenv.LogBuffer
	o := newTestOIDC(t, f, func(c *OIDCConfig) {
		c.EntraTenant = testTenant
		c.Skew = 5 * time.Minute
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	now := time.Now()
	v2 := "https://login.microsoftonline.com/" + testTenant + "/v2.0"
	v1 := "https://sts.windows.net/" + testTenant + "/"
	entra := func(mod func(c map[string]any)) string {
		c := map[string]any{
			"iss": v2, "aud": testClient, "sub": "pairwise-sub", "tid": testTenant, "oid": "00000000-0000-0000-0000-0000000000aa",
			"preferred_username": "alice@contoso.com", "groups": []string{"g-vpn"},
			"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		}
		if mod != nil {
			mod(c)
		}
		return f.sign("rsa1", c)
	}
	tests := []struct {
		name  string
		token string
		want  error
	}{
		{"v2 issuer", entra(nil), nil},
		{"v1 issuer", entra(func(c map[string]any) { c["iss"] = v1 }), nil},
		{"the configured issuer", entra(func(c map[string]any) { c["iss"] = f.srv.URL }), nil},
		{"another tenant's v2 issuer", entra(func(c map[string]any) { c["iss"] = "https://login.microsoftonline.com/" + otherTenant + "/v2.0" }), ErrTokenIssuer},
		{"another tenant's v1 issuer", entra(func(c map[string]any) { c["iss"] = "https://sts.windows.net/" + otherTenant + "/" }), ErrTokenIssuer},
		{"tid of another tenant", entra(func(c map[string]any) { c["tid"] = otherTenant }), ErrTokenIssuer},
		{"no tid", entra(func(c map[string]any) { delete(c, "tid") }), ErrTokenIssuer},
		{"no oid", entra(func(c map[string]any) { delete(c, "oid") }), ErrTokenClaims},
		{"nbf 30s ahead within the 5m skew", entra(func(c map[string]any) { c["nbf"] = now.Add(30 * time.Second).Unix() }), nil},
		{"nbf 4m ahead within the 5m skew", entra(func(c map[string]any) { c["nbf"] = now.Add(4 * time.Minute).Unix() }), nil},
		{"nbf 6m ahead", entra(func(c map[string]any) { c["nbf"] = now.Add(6 * time.Minute).Unix() }), ErrTokenNotYetValid},
		{"expired 4m ago within the skew", entra(func(c map[string]any) { c["exp"] = now.Add(-4 * time.Minute).Unix() }), nil},
		{"expired 6m ago", entra(func(c map[string]any) { c["exp"] = now.Add(-6 * time.Minute).Unix() }), ErrTokenExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := o.VerifyToken(context.Background(), tt.token)
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("got %v, want %v", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.Subject != testTenant+"/00000000-0000-0000-0000-0000000000aa" || id.User != "alice@contoso.com" {
				t.Fatalf("identity %+v", id)
			}
		})
	}

	ctx := context.Background()
	t.Run("roles usable like groups", func(t *testing.T) {
		id, err := o.VerifyToken(ctx, entra(func(c map[string]any) { delete(c, "groups"); c["roles"] = []string{"VPN.User"} }))
		if err != nil {
			t.Fatal(err)
		}
		if err := (&Rules{AllowGroups: []string{"VPN.User"}}).Check(ctx, id); err != nil {
			t.Fatalf("role in allow_groups: %v", err)
		}
		if err := (&Rules{DenyGroups: []string{"VPN.User"}}).Check(ctx, id); !errors.Is(err, ErrDenied) {
			t.Fatalf("role in deny_groups: %v", err)
		}
	})
	t.Run("groups overage", func(t *testing.T) {
		overage := entra(func(c map[string]any) {
			delete(c, "groups")
			c["_claim_names"] = map[string]any{"groups": "src1"}
			c["_claim_sources"] = map[string]any{"src1": map[string]any{"endpoint": "https://graph.windows.net/" + testTenant + "/users/x/getMemberObjects"}}
		})
		id, err := o.VerifyToken(ctx, overage)
		if err != nil {
			t.Fatal(err)
		}
		if !id.GroupsOverage {
			t.Fatalf("overage not seen: %+v", id)
		}
		var de *DeniedError
		for _, r := range []*Rules{{AllowGroups: []string{"g-vpn"}}, {DenyGroups: []string{"g-contractors"}}} {
			if err := r.Check(ctx, id); !errors.As(err, &de) || de.Reason != "groups overage: configure group filtering or an app role" {
				t.Fatalf("%+v: got %v", r, err)
			}
		}
		if !strings.Contains(logs.String(), "groups overage") {
			t.Fatalf("overage not logged:\n%s", logs.String())
		}
		// An app role still admits, and a sealed session keeps the mark.
		id.Roles = []string{"VPN.User"}
		if err := (&Rules{AllowGroups: []string{"VPN.User"}}).Check(ctx, id); err != nil {
			t.Fatalf("role despite overage: %v", err)
		}
		if back := NewSessionClaims(id, nil, now, now.Add(time.Hour)).Identity(); !back.GroupsOverage || back.Subject != id.Subject {
			t.Fatalf("session claims lost overage or subject: %+v", back)
		}
	})
	t.Run("multi-tenant alias refused", func(t *testing.T) {
		_, err := NewOIDC(ctx, OIDCConfig{Issuer: f.srv.URL, ClientID: testClient, EntraTenant: "common"})
		if err == nil || !strings.Contains(err.Error(), "configure your tenant ID") {
			t.Fatalf("got %v", err)
		}
	})
}

func TestEntraTenantFromIssuer(t *testing.T) {
	for in, want := range map[string]string{
		"https://login.microsoftonline.com/" + testTenant + "/v2.0": testTenant,
		"https://sts.windows.net/" + testTenant + "/":               testTenant,
		"https://login.microsoftonline.com/common/v2.0":             "common",
		"https://login.microsoftonline.com/" + testTenant:           "",
		"https://accounts.google.com":                               "",
		"https://sts.windows.net/a/b/":                              "",
	} {
		if got := entraTenant(in); got != want {
			t.Errorf("%s: got %q, want %q", in, got, want)
		}
	}
}
