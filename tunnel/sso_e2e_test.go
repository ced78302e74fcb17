package tunnel_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/testinfra/dextest"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// forwardTCP accepts on l (in one network namespace) and relays every
// connection to addr dialled from the test process (the root namespace),
// so the client namespace's browser reaches Dex at the same URL as the
// gateway does. It stops when the test ends.
func forwardTCP(t *testing.T, l net.Listener, addr string) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(u, c); u.Close() }()
			go func() { defer wg.Done(); _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
}

// TestOpenconnectSSO: the stock openconnect signs in with
// --external-browser, where the browser is headless Chromium (driven by
// internal/testinfra/ssobrowser) on Dex's real login page, and connects;
// the session shows method "sso" and the IdP's user and groups. A user
// outside the allowed groups, and a browser leg that arrives after the
// login link expired, end openconnect with the reason and exit status 1.
// The password (/password) and bearer routes still work beside SSO.
func TestOpenconnectSSO(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "openconnect", "ocproxy", "curl", "chromium")
	tp := testenv.Topology(t)
	public := "https://" + testenv.GWAddr.String()
	d := dextest.StartWith(t, dextest.Options{RedirectURIs: []string{public + "/sso/callback"}})
	du, _ := url.Parse(d.Issuer)
	dl, err := tp.Client.Listen("tcp", du.Host)
	if err != nil {
		t.Fatal(err)
	}
	forwardTCP(t, dl, du.Host)
	web := tp.ServeHTTP(t, 8080)
	cert := testenv.NewCert(t, testenv.GWAddr.String())
	prog := testenv.BuildBinary(t, "./internal/testinfra/ssobrowser")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute) // the whole scenario, generously
	defer cancel()

	o, err := auth.NewOIDC(ctx, auth.OIDCConfig{Issuer: d.Issuer, ClientID: d.ClientID, ClientSecret: d.ClientSecret, Scopes: d.Scopes})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	grant, _ := o.PasswordGrant()
	key, _ := auth.ParseSealerKey(auth.GenerateSealerKey())
	sealer, _ := auth.NewSealer(nil, key)
	rules := &auth.Rules{AllowGroups: []string{"vpn-users"}}
	var logs testenv.LogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sso, err := auth.NewSSO(auth.SSOConfig{OIDC: o, PublicURL: public, Sealer: sealer, Policy: rules, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := tunnel.New(tunnel.Config{
		Certificate: mustLoad(t, cert), Authenticator: auth.Chain{o, grant}, OfferBearer: true,
		Policy: rules, Sealer: sealer, SSO: sso,
		SplitInclude: []netip.Prefix{testenv.CorpNet}, Dialer: nsDialer{tp.GW}, Logger: logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	listen := testenv.GWAddr.String() + ":443"
	l, err := tp.GW.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	go gw.Serve(l)

	browserEnv := func(t *testing.T, u dextest.User) ([]string, string) {
		logFile := filepath.Join(t.TempDir(), "browser.log")
		return []string{"UNDERPASS_SSO_USER=" + u.Email, "UNDERPASS_SSO_PASSWORD=" + u.Password, "UNDERPASS_SSO_LOG=" + logFile}, logFile
	}
	fetch := func(s *testenv.OCSession) {
		t.Helper()
		body, err := testenv.CurlViaSocks(ctx, tp.Client, s.SocksPort, web+"/")
		if err != nil || body != testenv.CorpPage {
			t.Fatalf("corp page: %q, %v", body, err)
		}
	}

	t.Run("browser sign-in and connect", func(t *testing.T) {
		env, logFile := browserEnv(t, dextest.Alice)
		s, err := testenv.TryOpenconnect(t, tp.Client, testenv.OCOptions{
			Server: listen, ServerCertPin: cert.Pin, User: "unused", Password: "unused",
			ExtraArgs: []string{"--external-browser=" + prog}, Env: env, Timeout: 2 * time.Minute,
		})
		if err != nil {
			b, _ := os.ReadFile(logFile)
			t.Fatalf("%v\nbrowser log:\n%s\ngateway log:\n%s", err, b, logs.String())
		}
		fetch(s)
		ss := gw.Sessions()
		i := slices.IndexFunc(ss, func(s tunnel.SessionInfo) bool { return s.Connected })
		if i < 0 || ss[i].Method != "sso" || ss[i].User != "alice" || !slices.Contains(ss[i].Groups, "vpn-users") {
			t.Fatalf("sessions: %+v", ss)
		}
		s.Close()
	})
	// refused runs openconnect --authenticate with the browser signing in
	// as u and requires exit status 1 with want on stderr, within a bound
	// (openconnect itself would wait forever for a browser leg).
	refused := func(t *testing.T, server string, u dextest.User, want string) {
		env, logFile := browserEnv(t, u)
		octx, ocancel := context.WithTimeout(ctx, 2*time.Minute)
		defer ocancel()
		cmd := tp.Client.Exec(octx, "openconnect", "--non-inter", "--servercert", cert.Pin, "--authenticate",
			"--external-browser="+prog, "https://"+server+"/")
		cmd.Env = append(cmd.Env, env...)
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = io.Discard, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if octx.Err() != nil || !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), want) {
			b, _ := os.ReadFile(logFile)
			t.Fatalf("%v (ctx %v), want exit 1 and %q\nopenconnect:\n%s\nbrowser log:\n%s", err, octx.Err(), want, stderr.String(), b)
		}
	}
	t.Run("user outside the allowed groups", func(t *testing.T) {
		refused(t, listen, dextest.Bob, "Access denied: your account is not in a group allowed to use this VPN")
	})
	t.Run("expired browser leg", func(t *testing.T) {
		// A second gateway whose login links expire before any browser
		// can arrive: the refusal still reaches openconnect's listener.
		quick, err := auth.NewSSO(auth.SSOConfig{OIDC: o, PublicURL: public + ":8443", Sealer: sealer, LoginTTL: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		gw2, err := tunnel.New(tunnel.Config{Certificate: mustLoad(t, cert), Authenticator: o, Sealer: sealer, SSO: quick, Dialer: nsDialer{tp.GW}})
		if err != nil {
			t.Fatal(err)
		}
		defer gw2.Close()
		l2, err := tp.GW.Listen("tcp", testenv.GWAddr.String()+":8443")
		if err != nil {
			t.Fatal(err)
		}
		go gw2.Serve(l2)
		refused(t, testenv.GWAddr.String()+":8443", dextest.Alice, "Login failed: the sign-in link expired; start again")
	})
	t.Run("password beside SSO", func(t *testing.T) {
		s := testenv.Openconnect(t, tp.Client, testenv.OCOptions{
			Server: listen, Path: "/password", ServerCertPin: cert.Pin, User: dextest.Alice.Email, Password: dextest.Alice.Password,
		})
		fetch(s)
		s.Close()
	})
	t.Run("bearer beside SSO", func(t *testing.T) {
		idTok, _ := d.Token(t, dextest.Alice.Email, dextest.Alice.Password)
		s := testenv.Openconnect(t, tp.Client, testenv.OCOptions{
			Server: listen, ServerCertPin: cert.Pin, User: "unused", Password: "unused",
			ExtraArgs: []string{"--token-mode=oidc", "--token-secret=" + idTok, "--http-auth=Bearer"},
		})
		fetch(s)
		s.Close()
	})
}
