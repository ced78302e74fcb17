package tunnel

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// tokens is a test authenticator for bearer tokens: token -> user.
type tokens map[string]string

func (tk tokens) Authenticate(_ context.Context, c auth.Credentials) (*auth.Identity, error) {
	if c.BearerToken == "" {
		return nil, auth.ErrNotApplicable
	}
	u, ok := tk[c.BearerToken]
	if !ok {
		return nil, auth.ErrInvalidCredentials
	}
	return &auth.Identity{User: u, Method: "token", Expiry: time.Now().Add(time.Hour)}, nil
}

// rawPost sends an init POST with extra headers and returns the response.
func rawPost(t *testing.T, addr string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	c := tlsDial(t, addr)
	defer c.Close()
	req, _ := http.NewRequest(http.MethodPost, "https://gw/", strings.NewReader(initXML))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4096)
	n, _ := resp.Body.Read(b)
	return resp, string(b[:n])
}

func TestBearerFlow(t *testing.T) {
	_, addr := startGateway(t, func(c *Config) {
		c.OfferBearer = true
		c.Authenticator = auth.Chain{tokens{"good-token": "carol"}, passwords{"alice": "secret"}}
	})
	// openconnect advertises HTTP auth: it is offered Bearer with fallback.
	resp, _ := rawPost(t, addr, map[string]string{"X-Support-HTTP-Auth": "true"})
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != "Bearer" || resp.Header.Get("X-HTTP-Auth-Support") != "fallback" {
		t.Fatalf("offer: %d %v", resp.StatusCode, resp.Header)
	}
	// openconnect parses X-HTTP-Auth-Support case-sensitively: check the
	// bytes on the wire, not the canonicalised header.
	c := tlsDial(t, addr)
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: gw\r\nX-Support-HTTP-Auth: true\r\nContent-Length: %d\r\n\r\n%s", len(initXML), initXML)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var head strings.Builder
	br := bufio.NewReader(c)
	for !strings.HasSuffix(head.String(), "\r\n\r\n") {
		line, err := br.ReadString('\n')
		head.WriteString(line)
		if err != nil {
			break
		}
	}
	c.Close()
	if h := head.String(); !strings.HasPrefix(h, "HTTP/1.1 401") || !strings.Contains(h, "\r\nX-HTTP-Auth-Support: fallback\r\n") {
		t.Fatalf("raw 401: %q", h)
	}
	resp, body := rawPost(t, addr, map[string]string{"X-Support-HTTP-Auth": "true", "Authorization": "Bearer good-token"})
	if resp.StatusCode != 200 || !strings.Contains(body, `type="complete"`) {
		t.Fatalf("bearer sign-in: %d %s", resp.StatusCode, body)
	}
	var cookie string
	for _, c := range resp.Cookies() {
		if c.Name == "webvpn" {
			cookie = c.Value
		}
	}
	if tc, st := connectTunnel(t, addr, cookie); tc == nil {
		t.Fatalf("CONNECT with the bearer session: %d", st)
	}
	resp, body = rawPost(t, addr, map[string]string{"Authorization": "Bearer forged"})
	if resp.StatusCode != 200 || !strings.Contains(body, "Login failed") {
		t.Fatalf("bad token: %d %s", resp.StatusCode, body)
	}
	// Without X-Support-HTTP-Auth (a client with no token) the form comes.
	if _, body := rawPost(t, addr, nil); !strings.Contains(body, `type="auth-request"`) {
		t.Fatalf("fallback form: %s", body)
	}
	// openconnect's fallback after the offer: GET the form, POST it
	// URL-encoded. Browsers still get a 404 for GET.
	for ua, want := range map[string]string{"Open AnyConnect VPN Agent v9.01-3": `type="auth-request"`, "Mozilla/5.0": "404 page not found"} {
		c := tlsDial(t, addr)
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: gw\r\nUser-Agent: %s\r\n\r\n", ua)
		req, _ := http.NewRequest(http.MethodGet, "https://gw/", nil)
		resp, err := http.ReadResponse(bufio.NewReader(c), req)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 2048)
		n, _ := resp.Body.Read(b)
		c.Close()
		if !strings.Contains(string(b[:n]), want) {
			t.Errorf("GET / as %q: %s", ua, b[:n])
		}
	}
	c = tlsDial(t, addr)
	form := "username=alice&password=secret"
	fmt.Fprintf(c, "POST /auth HTTP/1.1\r\nHost: gw\r\nUser-Agent: Open AnyConnect VPN Agent v9.01-3\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s", len(form), form)
	req, _ := http.NewRequest(http.MethodPost, "https://gw/auth", nil)
	fresp, err := http.ReadResponse(bufio.NewReader(c), req)
	c.Close()
	if err != nil || len(fresp.Cookies()) == 0 {
		t.Fatalf("URL-encoded sign-in: %v", err)
	}
	// Passwords still work alongside.
	if c, body := signIn(t, addr, "alice", "secret"); c == "" {
		t.Fatalf("password sign-in next to bearer: %s", body)
	}
}

func TestPolicyAtSignInAndResume(t *testing.T) {
	var denyAlice atomic.Bool
	_, addr := startGateway(t, func(c *Config) {
		c.Policy = auth.PolicyFunc(func(_ context.Context, id *auth.Identity) error {
			if id.User == "bob" || (id.User == "alice" && denyAlice.Load()) {
				return &auth.DeniedError{Reason: "not in group vpn-users"}
			}
			return nil
		})
	})
	if c, body := signIn(t, addr, "bob", "hunter2"); c != "" || !strings.Contains(body, "Access denied: not in group vpn-users") {
		t.Fatalf("bob: cookie %q body %s", c, body)
	}
	cookie, body := signIn(t, addr, "alice", "secret")
	if cookie == "" {
		t.Fatalf("alice: %s", body)
	}
	tc, _ := connectTunnel(t, addr, cookie)
	if tc == nil {
		t.Fatal("alice CONNECT refused")
	}
	tc.Close()
	denyAlice.Store(true) // e.g. removed from the group meanwhile
	if tc, st := connectTunnel(t, addr, cookie); tc != nil || st != 401 {
		t.Fatalf("resume after policy change: status %d, want 401", st)
	}
}

func TestBansRefuseBeforeTLS(t *testing.T) {
	ban := auth.NewBans(auth.BanConfig{Threshold: 3 * auth.FailurePoints, BanFor: time.Minute})
	_, addr := startGateway(t, func(c *Config) { c.Bans = ban })
	for i := 0; i < 3; i++ {
		if c, _ := signIn(t, addr, "alice", "wrong"); c != "" {
			t.Fatal("wrong password accepted")
		}
	}
	if bans := ban.List(); len(bans) != 1 || bans[0].Addr.String() != "127.0.0.1" {
		t.Fatalf("bans: %+v", bans)
	}
	if c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}); err == nil {
		c.Close()
		t.Fatal("banned address completed a TLS handshake")
	}
	if !ban.Lift(mustAddr("127.0.0.1")) {
		t.Fatal("Lift")
	}
	if c, body := signIn(t, addr, "alice", "secret"); c == "" {
		t.Fatalf("after lifting the ban: %s", body)
	}
}

func TestSealedCookieResumesOnAnotherGateway(t *testing.T) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	sealer := func() *auth.Sealer {
		s, err := auth.NewSealer(nil, key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	g1, addr1 := startGateway(t, func(c *Config) { c.Sealer = sealer() })
	_, addr2 := startGateway(t, func(c *Config) { c.Sealer = sealer() })
	cookie, body := signIn(t, addr1, "alice", "secret")
	if cookie == "" {
		t.Fatalf("sign-in: %s", body)
	}
	tc, _ := connectTunnel(t, addr2, cookie) // the other server of the site
	if tc == nil {
		t.Fatal("sealed cookie not resumed by a second gateway")
	}
	tc.Close()
	if tc, st := connectTunnel(t, addr2, cookie+"x"); tc != nil || st != 401 {
		t.Fatalf("tampered cookie: %d", st)
	}
	// Revocation: the session ended by the operator cannot be resumed.
	tc1, _ := connectTunnel(t, addr1, cookie)
	if tc1 == nil {
		t.Fatal("CONNECT on the first gateway")
	}
	ss := g1.Sessions()
	if len(ss) != 1 {
		t.Fatalf("sessions: %+v", ss)
	}
	if err := g1.Disconnect(ss[0].ID); err != nil {
		t.Fatal(err)
	}
	if tc, st := connectTunnel(t, addr1, cookie); tc != nil || st != 401 {
		t.Fatalf("revoked cookie: %d", st)
	}
}

func TestClientCertificateSignIn(t *testing.T) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	cliKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cliTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "dave"},
		EmailAddresses: []string{"dave@corp.example"},
		NotBefore:      time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	cliDER, _ := x509.CreateCertificate(rand.Reader, cliTmpl, ca, &cliKey.PublicKey, caKey)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	certs, err := auth.NewCertificates(auth.CertConfig{CAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	g, addr := startGateway(t, func(c *Config) { c.ClientCerts = certs })
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true,
		Certificates: []tls.Certificate{{Certificate: [][]byte{cliDER}, PrivateKey: cliKey}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, body := post(t, c, bufio.NewReader(c), "/", "", initXML)
	if resp.StatusCode != 200 || !strings.Contains(body, `type="complete"`) {
		t.Fatalf("init with a client certificate: %d %s", resp.StatusCode, body)
	}
	var cookie string
	for _, ck := range resp.Cookies() {
		if ck.Name == "webvpn" {
			cookie = ck.Value
		}
	}
	tc, _ := connectTunnel(t, addr, cookie)
	if tc == nil {
		t.Fatal("CONNECT after certificate sign-in")
	}
	if s, ok := g.WhoIs(tc.tunAddr); !ok || s.User != "dave@corp.example" {
		t.Fatalf("identity from the certificate: %+v", s)
	}
	// Without a certificate the form is still offered (optional mode).
	if c, body := signIn(t, addr, "alice", "secret"); c == "" {
		t.Fatalf("password next to optional certificates: %s", body)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestNoSecretsInLogs: passwords, tokens and cookies never reach the log,
// even at debug level and on failures.
func TestNoSecretsInLogs(t *testing.T) {
	var logs testenv.LogBuffer
	_, addr := startGateway(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.OfferBearer = true
		c.Authenticator = auth.Chain{tokens{"tok-SECRET-1": "carol"}, passwords{"alice": "pw-SECRET-2"}}
	})
	cookie, _ := signIn(t, addr, "alice", "pw-SECRET-2")
	_, _ = signIn(t, addr, "alice", "pw-SECRET-3")
	rawPost(t, addr, map[string]string{"Authorization": "Bearer tok-SECRET-1"})
	rawPost(t, addr, map[string]string{"Authorization": "Bearer tok-SECRET-4"})
	tc, _ := connectTunnel(t, addr, cookie)
	if tc == nil {
		t.Fatal("CONNECT")
	}
	tc.Close()
	waitFor(t, func() bool { return strings.Contains(logs.String(), "op=disconnect") }, "disconnect telemetry")
	out := logs.String()
	for _, secret := range []string{"SECRET", cookie} {
		if strings.Contains(out, secret) {
			t.Fatalf("log contains a secret (%q):\n%s", secret, out)
		}
	}
	for _, want := range []string{"op=connect", "client_ip=127.0.0.1", "assigned_ip=169.254.0.", "user=alice", "bytes_in="} {
		if !strings.Contains(out, want) {
			t.Errorf("telemetry lacks %q:\n%s", want, out)
		}
	}
}
