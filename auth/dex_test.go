package auth

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/dextest"
	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// TestRealDex runs sign-in against a real OIDC provider (Dex): password
// grant, token verification (bearer and password field), wrong password,
// a user outside the allowed group, and a scan of every log line for the
// secrets used.
func TestRealDex(t *testing.T) {
	d := dextest.Start(t)
	logs := &testenv.LogBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	ctx := context.Background()
	o, err := NewOIDC(ctx, OIDCConfig{
		Issuer: d.Issuer, ClientID: d.ClientID, ClientSecret: d.ClientSecret,
		HTTPClient: &http.Client{Transport: tr, Timeout: 10 * time.Second},
		Logger:     logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.Close)
	pg, err := o.PasswordGrant()
	if err != nil {
		t.Fatal(err)
	}
	authn := Chain{o, pg}
	policy := &Rules{AllowGroups: []string{"vpn-users"}}
	var secrets []string

	t.Run("password grant sign-in", func(t *testing.T) {
		secrets = append(secrets, dextest.Alice.Password)
		id, err := authn.Authenticate(ctx, Credentials{Username: dextest.Alice.Email, Password: dextest.Alice.Password})
		if err != nil {
			t.Fatal(err)
		}
		if id.User != "alice" || id.Email != dextest.Alice.Email || id.Method != "password" || !strings.Contains(strings.Join(id.Groups, ","), "vpn-users") {
			t.Fatalf("identity %+v", id)
		}
		if time.Until(id.Expiry) < time.Hour {
			t.Fatalf("expiry %v", id.Expiry)
		}
		if err := policy.Check(ctx, id); err != nil {
			t.Fatalf("policy: %v", err)
		}
	})
	t.Run("Dex token verified", func(t *testing.T) {
		idt, at := d.Token(t, dextest.Alice.Email, dextest.Alice.Password)
		secrets = append(secrets, idt, at)
		for name, c := range map[string]Credentials{
			"id token as bearer":     {BearerToken: idt},
			"access token as bearer": {BearerToken: at},
			"token in password":      {Username: "ignored", Password: idt},
		} {
			id, err := authn.Authenticate(ctx, c)
			if err != nil || id.User != "alice" || id.Method != "token" {
				t.Errorf("%s: %+v, %v", name, id, err)
			}
		}
		parts := strings.Split(idt, ".")
		forged := parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))
		if _, err := authn.Authenticate(ctx, Credentials{BearerToken: forged}); !errors.Is(err, ErrTokenSignature) {
			t.Errorf("forged Dex token: %v", err)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		secrets = append(secrets, "not-alices-password")
		_, err := authn.Authenticate(ctx, Credentials{Username: dextest.Alice.Email, Password: "not-alices-password"})
		if !errors.Is(err, ErrInvalidCredentials) || !strings.Contains(err.Error(), "wrong user name or password") {
			t.Fatalf("got %v", err)
		}
		_, err = authn.Authenticate(ctx, Credentials{Username: "nobody@example.com", Password: "not-alices-password"})
		if !errors.Is(err, ErrInvalidCredentials) {
			t.Fatalf("unknown user: got %v", err)
		}
	})
	t.Run("user outside the allowed group denied with reason", func(t *testing.T) {
		secrets = append(secrets, dextest.Bob.Password)
		id, err := authn.Authenticate(ctx, Credentials{Username: dextest.Bob.Email, Password: dextest.Bob.Password})
		if err != nil {
			t.Fatal(err)
		}
		err = policy.Check(ctx, id)
		var de *DeniedError
		if !errors.As(err, &de) || !strings.Contains(de.Reason, "not in a group allowed") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("logs carry no secrets", func(t *testing.T) {
		out := logs.String()
		if !strings.Contains(out, "password sign-in failed") {
			t.Fatalf("expected failure log lines, got:\n%s", out)
		}
		for _, s := range secrets {
			if s != "" && strings.Contains(out, s) {
				t.Errorf("log contains a secret (%s):\n%s", Redact(s), out)
			}
		}
	})
}
