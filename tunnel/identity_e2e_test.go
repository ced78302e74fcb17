package tunnel_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/testinfra/dextest"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// nsDialer re-originates flows from inside a network namespace (the
// gateway's), as an embedding program's own Dialer would.
type nsDialer struct{ ns *testenv.Netns }

func (d nsDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return d.ns.Dial(ctx, network, addr)
}

// clientCert writes a CA-signed client certificate for email to dir and
// returns the CA pool and the cert/key file names.
func clientCert(t *testing.T, dir, email string) (*x509.CertPool, string, string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "corp device CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "laptop-42"},
		EmailAddresses: []string{email},
		NotBefore:      time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	cf, kf := filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key")
	if err := os.WriteFile(cf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kf, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, cf, kf
}

// dexScene is what the Dex end-to-end tests start with: root, the tools,
// Dex, the namespace topology with a corporate web server, the gateway's
// certificate and a context bounding the whole scenario.
type dexScene struct {
	d    *dextest.Dex
	tp   *testenv.Topo
	web  string // the corporate web server's base URL
	cert *testenv.Cert
	ctx  context.Context
}

func newDexScene(t *testing.T, o dextest.Options, tools ...string) *dexScene {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, append([]string{"openconnect", "ocproxy", "curl"}, tools...)...)
	sc := &dexScene{d: dextest.StartWith(t, o), tp: testenv.Topology(t)}
	sc.web = sc.tp.ServeHTTP(t, 8080)
	sc.cert = testenv.NewCert(t, testenv.GWAddr.String())
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute) // the whole scenario, generously
	t.Cleanup(cancel)
	sc.ctx = ctx
	return sc
}

// fetch gets the corporate page through openconnect's SOCKS port.
func (sc *dexScene) fetch(t *testing.T, s *testenv.OCSession) {
	t.Helper()
	body, err := testenv.CurlViaSocks(sc.ctx, sc.tp.Client, s.SocksPort, sc.web+"/")
	if err != nil || body != testenv.CorpPage {
		t.Fatalf("corp page: %q, %v", body, err)
	}
}

// serveInNS serves a gateway made from cfg on addr ("ip:port") inside
// ns until the test ends.
func serveInNS(t *testing.T, ns *testenv.Netns, addr string, cfg tunnel.Config) *tunnel.Gateway {
	t.Helper()
	gw, err := tunnel.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gw.Close() })
	l, err := ns.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go gw.Serve(l)
	return gw
}

// TestOpenconnectWithDex: the stock openconnect client signs in to a
// gateway (the library, serving in the gw namespace) backed by a real OIDC
// provider (Dex): password through the IdP, an IdP token in the password
// field, a client certificate; a user outside the allowed group
// is refused with the reason; a cookie resumes and is re-checked against
// the policy; wrong passwords earn a ban; no secret reaches the log.
func TestOpenconnectWithDex(t *testing.T) {
	sc := newDexScene(t, dextest.Options{})
	d, tp, cert, ctx := sc.d, sc.tp, sc.cert, sc.ctx

	oidc, err := auth.NewOIDC(ctx, auth.OIDCConfig{
		Issuer: d.Issuer, Audiences: []string{d.ClientID}, ClientID: d.ClientID, ClientSecret: d.ClientSecret, Scopes: d.Scopes,
	})
	if err != nil {
		t.Fatalf("OIDC discovery at Dex: %v", err)
	}
	defer oidc.Close()
	grant, err := oidc.PasswordGrant()
	if err != nil {
		t.Fatal(err)
	}
	pool, certFile, keyFile := clientCert(t, t.TempDir(), dextest.Alice.Email)
	certs, err := auth.NewCertificates(auth.CertConfig{CAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	rules := &auth.Rules{AllowGroups: []string{"vpn-users"}}
	var revokeAlice atomic.Bool // "alice left the group" for the resume re-check
	policy := auth.PolicyFunc(func(ctx context.Context, id *auth.Identity) error {
		if revokeAlice.Load() && id.Email == dextest.Alice.Email {
			return &auth.DeniedError{Reason: "removed from vpn-users"}
		}
		if id.Method == "certificate" { // device certificates carry no groups
			return nil
		}
		return rules.Check(ctx, id)
	})
	var logs testenv.LogBuffer
	bans := auth.NewBans(auth.BanConfig{Threshold: 3 * auth.FailurePoints, BanFor: time.Minute})
	listen := testenv.GWAddr.String() + ":443"
	serveInNS(t, tp.GW, listen, tunnel.Config{
		Certificate:   mustLoad(t, cert),
		Authenticator: auth.Chain{oidc, grant},
		OfferBearer:   true,
		Policy:        policy,
		Bans:          bans,
		ClientCerts:   certs,
		SplitInclude:  []netip.Prefix{testenv.CorpNet},
		Dialer:        nsDialer{tp.GW},
		Logger:        slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})

	opts := func(user, pass string) testenv.OCOptions {
		return testenv.OCOptions{Server: listen, ServerCertPin: cert.Pin, User: user, Password: pass, Mode: testenv.ModeOcproxy}
	}
	fetch := func(s *testenv.OCSession) { sc.fetch(t, s) }
	var secrets []string

	t.Run("password through the IdP", func(t *testing.T) {
		s := testenv.Openconnect(t, tp.Client, opts(dextest.Alice.Email, dextest.Alice.Password))
		fetch(s)
		s.Close()
	})
	t.Run("IdP token in the password field", func(t *testing.T) {
		idTok, accessTok := d.Token(t, dextest.Alice.Email, dextest.Alice.Password)
		secrets = append(secrets, idTok, accessTok)
		s := testenv.Openconnect(t, tp.Client, opts("alice", idTok))
		fetch(s)
		s.Close()
	})
	t.Run("IdP token in openconnect's OIDC token mode", func(t *testing.T) {
		idTok, _ := d.Token(t, dextest.Alice.Email, dextest.Alice.Password)
		secrets = append(secrets, idTok)
		o := opts("unused", "unused")
		// openconnect 9.01 walks its HTTP auth methods in order and gives
		// up at Basic (disabled by default) before reaching Bearer unless
		// the methods are named: --http-auth=Bearer.
		o.ExtraArgs = []string{"--token-mode=oidc", "--token-secret=" + idTok, "--http-auth=Bearer"}
		s := testenv.Openconnect(t, tp.Client, o)
		fetch(s)
		s.Close()
	})
	t.Run("user outside the allowed group", func(t *testing.T) {
		_, err := testenv.TryOpenconnect(t, tp.Client, opts(dextest.Bob.Email, dextest.Bob.Password))
		if err == nil || !strings.Contains(err.Error(), "Access denied: your account is not in a group allowed") {
			t.Fatalf("bob: %v", err)
		}
	})
	t.Run("client certificate", func(t *testing.T) {
		o := opts("unused", "unused")
		o.ExtraArgs = []string{"-c", certFile, "-k", keyFile}
		s := testenv.Openconnect(t, tp.Client, o)
		fetch(s)
		s.Close()
	})
	t.Run("cookie resume and policy re-check", func(t *testing.T) {
		ar, err := testenv.AuthenticateFull(t, tp.Client, opts(dextest.Alice.Email, dextest.Alice.Password))
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, ar.Cookie)
		o := opts("", "")
		o.Cookie = ar.Cookie
		s := testenv.Openconnect(t, tp.Client, o)
		fetch(s)
		addr := s.Env()["INTERNAL_IP4_ADDRESS"]
		if err := s.CloseKeepSession(); err != nil {
			t.Fatal(err)
		}
		s = testenv.Openconnect(t, tp.Client, o)
		if got := s.Env()["INTERNAL_IP4_ADDRESS"]; got != addr || addr == "" {
			t.Fatalf("resumed with %q, want %q", got, addr)
		}
		if err := s.CloseKeepSession(); err != nil {
			t.Fatal(err)
		}
		revokeAlice.Store(true)
		defer revokeAlice.Store(false)
		if _, err := testenv.TryOpenconnect(t, tp.Client, o); err == nil {
			t.Fatal("resume allowed after the policy changed")
		}
	})
	t.Run("wrong passwords earn a ban", func(t *testing.T) {
		for i := 0; i < 3; i++ {
			if _, err := testenv.TryOpenconnect(t, tp.Client, opts(dextest.Alice.Email, "wrong-"+dextest.Alice.Password)); err == nil {
				t.Fatal("wrong password accepted")
			}
		}
		if list := bans.List(); len(list) != 1 || list[0].Addr != testenv.ClientAddr {
			t.Fatalf("bans %+v", list)
		}
		_, err := testenv.TryOpenconnect(t, tp.Client, opts(dextest.Alice.Email, dextest.Alice.Password))
		if err == nil {
			t.Fatal("banned client connected")
		}
		bans.Lift(testenv.ClientAddr)
	})
	out := logs.String()
	for _, s := range append(secrets, dextest.Alice.Password, dextest.Bob.Password) {
		if s != "" && strings.Contains(out, s) {
			t.Fatalf("a secret reached the gateway log")
		}
	}
	if !strings.Contains(out, "op=connect") {
		t.Errorf("no telemetry in the log:\n%s", out)
	}
}

func mustLoad(t testing.TB, c *testenv.Cert) *tls.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return &pair
}
