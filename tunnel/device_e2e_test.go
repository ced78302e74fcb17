package tunnel_test

import (
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/testinfra/dextest"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// TestOpenconnectDeviceCertAndUser: with device certificates (R-A7) the
// stock openconnect needs both a valid certificate and the user's
// password at the IdP: valid certificate + right password connects (the
// session's device ID is the certificate's CN), valid certificate + wrong
// password and no certificate + right password are refused.
func TestOpenconnectDeviceCertAndUser(t *testing.T) {
	sc := newDexScene(t, dextest.Options{})
	d, tp, cert, ctx := sc.d, sc.tp, sc.cert, sc.ctx

	o, err := auth.NewOIDC(ctx, auth.OIDCConfig{Issuer: d.Issuer, ClientID: d.ClientID, ClientSecret: d.ClientSecret, Scopes: d.Scopes})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	grant, _ := o.PasswordGrant()
	pool, certFile, keyFile := clientCert(t, t.TempDir(), dextest.Alice.Email)
	certs, err := auth.NewCertificates(auth.CertConfig{CAs: pool, Device: true})
	if err != nil {
		t.Fatal(err)
	}
	var logs testenv.LogBuffer
	listen := testenv.GWAddr.String() + ":443"
	gw := serveInNS(t, tp.GW, listen, tunnel.Config{
		Certificate: mustLoad(t, cert), Authenticator: auth.Chain{o, grant}, ClientCerts: certs,
		// A policy the certificate identity (alice@example.com) would pass
		// on its own, so only the device rule stands between a
		// certificate and a session.
		Policy:       &auth.Rules{AllowUsers: []string{dextest.Alice.Email}},
		SplitInclude: []netip.Prefix{testenv.CorpNet}, Dialer: nsDialer{tp.GW},
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	opts := func(pass string, withCert bool) testenv.OCOptions {
		o := testenv.OCOptions{Server: listen, ServerCertPin: cert.Pin, User: dextest.Alice.Email, Password: pass}
		if withCert {
			o.ExtraArgs = []string{"-c", certFile, "-k", keyFile}
		}
		return o
	}

	t.Run("valid certificate and right password", func(t *testing.T) {
		s := testenv.Openconnect(t, tp.Client, opts(dextest.Alice.Password, true))
		sc.fetch(t, s)
		ss := gw.Sessions()
		if i := slices.IndexFunc(ss, func(s tunnel.SessionInfo) bool { return s.Connected }); i < 0 ||
			ss[i].User != "alice" || ss[i].Method != "password" || ss[i].DeviceID != "laptop-42" {
			t.Fatalf("sessions: %+v", ss)
		}
		s.Close()
	})
	t.Run("valid certificate and wrong password", func(t *testing.T) {
		_, err := testenv.TryOpenconnect(t, tp.Client, opts("wrong-"+dextest.Alice.Password, true))
		if err == nil {
			t.Fatal("a valid certificate with a wrong password was admitted")
		}
	})
	t.Run("right password without a certificate", func(t *testing.T) {
		_, err := testenv.TryOpenconnect(t, tp.Client, opts(dextest.Alice.Password, false))
		if err == nil || !strings.Contains(err.Error(), "a valid device certificate is required") {
			t.Fatalf("no certificate: %v", err)
		}
	})
}
