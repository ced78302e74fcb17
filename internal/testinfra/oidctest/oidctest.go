// Package oidctest pairs testenv's in-process token issuer with the
// auth.OIDC that verifies its tokens, for sign-in tests and benchmarks that
// need an IdP's tokens but not Dex's login (dextest has Dex).
package oidctest

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// Start serves a testenv.Issuer on a loopback port until the test ends
// and returns it with an auth.OIDC that accepts its tokens for audience
// (discovery and the key fetch happen here). The OIDC's HTTP client closes
// its idle connections at the end, so goroutine-leak checks stay quiet.
func Start(t testing.TB, audience string) (*testenv.Issuer, *auth.OIDC) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	idp := testenv.NewIssuer(t, l)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // discovery at a loopback IdP
	defer cancel()
	o, err := auth.NewOIDC(ctx, auth.OIDCConfig{Issuer: idp.URL, Audiences: []string{audience},
		HTTPClient: &http.Client{Transport: tr, Timeout: 5 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.Close)
	return idp, o
}
