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
	"github.com/underpass/underpass/internal/certutil"
	"github.com/underpass/underpass/tunnel"
)

// CorpNet is the stand-in corporate network (RFC 2544 benchmark range).
var CorpNet = netip.MustParsePrefix("198.18.0.0/16")

// CorpDialer dials 198.18.x.y:port as 127.0.0.1:port, so loopback
// listeners play corporate hosts. (Loopback itself cannot be a tunnel
// destination: a TCP/IP stack drops 127/8 arriving on an interface.)
type CorpDialer struct{}

// DialContext implements netstack.Dialer.
func (CorpDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if ap, err := netip.ParseAddrPort(address); err == nil && CorpNet.Contains(ap.Addr()) {
		address = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()).String()
	}
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// Corp maps a loopback listener address to its corporate stand-in.
func Corp(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("198.18.1.1"), ap.Port())
}

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
