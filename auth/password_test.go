package auth

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

func TestPasswordGrant(t *testing.T) {
	f := newFakeIdP(t)
	var logs bytes.Buffer
	o := newTestOIDC(t, f, func(c *OIDCConfig) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	pg, err := o.PasswordGrant()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tests := []struct {
		name, user, pass string
		want             error
		wantMsg          string
	}{
		{"ok", "alice@example.com", "alice-pw", nil, ""},
		{"wrong password", "alice@example.com", "wrong-pw-123", ErrInvalidCredentials, "wrong user name or password"},
		{"unknown user", "mallory@example.com", "mallory-pw", ErrInvalidCredentials, "wrong user name or password"},
		{"no password", "alice@example.com", "", ErrNotApplicable, ""},
		{"token in password", "x", f.sign("rsa1", f.claims(time.Now())), ErrNotApplicable, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := pg.Authenticate(ctx, Credentials{Username: tt.user, Password: tt.pass})
			if tt.want == nil {
				if err != nil || id.User != "alice@example.com" || id.Method != "password" || id.Groups[0] != "vpn-users" {
					t.Fatalf("%+v, %v", id, err)
				}
				return
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("got %v, want %v %q", err, tt.want, tt.wantMsg)
			}
		})
	}
	for _, secret := range []string{"alice-pw", "wrong-pw-123", "mallory-pw"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("log contains password %q:\n%s", secret, logs.String())
		}
	}
}

func TestPasswordGrantIdPFailures(t *testing.T) {
	f := newFakeIdP(t)
	t.Run("bad client secret", func(t *testing.T) {
		o := newTestOIDC(t, f, func(c *OIDCConfig) { c.ClientSecret = "nope" })
		pg, _ := o.PasswordGrant()
		_, err := pg.Authenticate(context.Background(), Credentials{Username: "alice@example.com", Password: "alice-pw"})
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrInvalidCredentials) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("id token for another audience", func(t *testing.T) {
		f.set(func(f *fakeIdP) { f.aud = "other-app" })
		defer f.set(func(f *fakeIdP) { f.aud = testClient })
		o := newTestOIDC(t, f, nil)
		pg, _ := o.PasswordGrant()
		_, err := pg.Authenticate(context.Background(), Credentials{Username: "alice@example.com", Password: "alice-pw"})
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("IdP 500", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "boom", http.StatusInternalServerError)
		}))
		defer srv.Close()
		err := classifyGrantError(fakeRetrieve(t, srv.URL))
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("no client id", func(t *testing.T) {
		o := newTestOIDC(t, f, func(c *OIDCConfig) { c.ClientID = ""; c.Audiences = []string{"x"} })
		if _, err := o.PasswordGrant(); err == nil {
			t.Fatal("want error")
		}
	})
}

// fakeRetrieve performs a password grant against url and returns its error.
func fakeRetrieve(t *testing.T, url string) error {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	g := &PasswordGrant{o: &OIDC{cfg: OIDCConfig{HTTPClient: &http.Client{Transport: tr}}, log: discardLogger}}
	g.conf.Endpoint.TokenURL = url
	g.conf.ClientID = "c"
	_, err := g.conf.PasswordCredentialsToken(context.WithValue(context.Background(), oauth2.HTTPClient, g.o.cfg.HTTPClient), "u", "p")
	if err == nil {
		t.Fatal("want error")
	}
	return err
}
