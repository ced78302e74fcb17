// Package gwtest starts an in-process Underpass gateway on loopback for the
// examples' tests: TCP (AnyConnect) and UDP (QUIC) on one port, a static
// user, and a corporate network stood in for by loopback listeners.
package gwtest

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/internal/testinfra/dextest"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// CorpNet, CorpDialer and Corp are testenv's loopback corporate network,
// re-exported for the examples' tests.
var CorpNet = testenv.LoopCorpNet

// CorpDialer dials CorpNet's addresses on loopback (testenv.LoopCorpDialer).
type CorpDialer = testenv.LoopCorpDialer

// Corp maps a loopback listener address to its corporate stand-in.
func Corp(ap netip.AddrPort) netip.AddrPort { return testenv.LoopCorp(ap) }

// User and Password are the gateway's static user.
const (
	User     = "alice"
	Password = "correct horse"
)

// Gateway is a running test gateway.
type Gateway struct {
	*tunnel.Gateway
	Addr string // host:port, TCP and UDP
	Pin  string // pin-sha256 of its certificate
	Cert *tls.Certificate
}

// Start serves a gateway until the test ends; mod adjusts its config.
func Start(t testing.TB, mod func(*tunnel.Config)) *Gateway {
	t.Helper()
	certPEM, keyPEM, err := certutil.SelfSigned([]string{"127.0.0.1", "localhost"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(Password), bcrypt.MinCost) // tests: cheap hashing
	if err != nil {
		t.Fatal(err)
	}
	users, err := auth.NewStaticUsers([]auth.StaticUser{{Name: User, Hash: string(h)}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := tunnel.Config{
		Certificate: &cert, Authenticator: users, Dialer: CorpDialer{},
		SplitInclude: []netip.Prefix{CorpNet},
	}
	if mod != nil {
		mod(&cfg)
	}
	g, err := tunnel.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.ServeTCPAndUDP(l) }()
	t.Cleanup(func() {
		_ = g.Close()
		if err := <-done; !errors.Is(err, tunnel.ErrClosed) {
			t.Errorf("gateway serve: %v", err)
		}
	})
	pin, _ := certutil.Pin(&cert)
	return &Gateway{Gateway: g, Addr: l.Addr().String(), Pin: pin, Cert: &cert}
}

// StartOIDC serves a gateway that admits tokens from Dex d for audience
// (e.g. a public client's ID); mod adjusts its config further.
func StartOIDC(t testing.TB, d *dextest.Dex, audience string, mod func(*tunnel.Config)) *Gateway {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // discovery at a local Dex
	defer cancel()
	o, err := auth.NewOIDC(ctx, auth.OIDCConfig{Issuer: d.Issuer, ClientID: d.ClientID, Audiences: []string{audience}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.Close)
	return Start(t, func(c *tunnel.Config) {
		c.Authenticator = o
		if mod != nil {
			mod(c)
		}
	})
}
