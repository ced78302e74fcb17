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
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/testinfra/dextest"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// forwardTCP relays every connection l (in one network namespace) accepts
// to addr dialled from the test process (the root namespace), so the
// client namespace's browser reaches Dex at the same URL as the gateway
// does. It stops when the test ends.
func forwardTCP(t *testing.T, l net.Listener, addr string) {
	testenv.ServeListener(t, l, func(c net.Conn) {
		u, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return
		}
		done := make(chan struct{})
		go func() { _, _ = io.Copy(u, c); u.Close(); close(done) }()
		_, _ = io.Copy(c, u)
		c.Close() // ends the other direction's copy, if the browser still holds c
		<-done
	})
}

// preLoginBanner is the acceptable-use notice the SSO test's gateway shows
// before sign-in.
const preLoginBanner = "Authorised use only; activity is logged."

// waitSSOPort waits until openconnect can bind its SSO listener
// [::1]:29786 in ns, binding as openconnect does (SO_REUSEADDR), and logs
// the port's sockets if it had to wait. Seen here: a LISTEN socket on the
// port shortly after the previous openconnect exited (openconnect 9.01
// creates it without SOCK_CLOEXEC before spawning the browser, so the
// browser's processes can hold it), which made the next run fail with
// "Failed to listen on local port 29786: Address already in use".
func waitSSOPort(t *testing.T, ns *testenv.Netns) {
	t.Helper()
	start := time.Now()
	for logged := false; ; {
		err := ns.Do(func() error {
			fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
				return err
			}
			return unix.Bind(fd, &unix.SockaddrInet6{Port: 29786, Addr: [16]byte{15: 1}})
		})
		if err == nil {
			if d := time.Since(start); d > time.Second {
				t.Logf("waited %v for [::1]:29786", d.Round(100*time.Millisecond))
			}
			return
		}
		if !logged {
			out, _ := ns.Exec(context.Background(), "ss", "-tanp", "sport", "= :29786").CombinedOutput()
			t.Logf("[::1]:29786 busy (%v):\n%s", err, out)
			logged = true
		}
		if time.Since(start) > 90*time.Second { // bounds a browser that never exits
			t.Fatalf("[::1]:29786 still not bindable: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestOpenconnectSSO: the stock openconnect signs in with
// --external-browser, where the browser is headless Chromium (driven by
// internal/testinfra/ssobrowser) on Dex's real login page, and connects;
// the session shows method "sso" and the IdP's user and groups. A user
// outside the allowed groups, a browser leg the user cancels at the IdP,
// and one that arrives after the login link expired, end openconnect
// with the reason and exit status 1 (within a bound).
// The password (/password) and bearer routes still work beside SSO.
func TestOpenconnectSSO(t *testing.T) {
	public := "https://" + testenv.GWAddr.String()
	sc := newDexScene(t, dextest.Options{RedirectURIs: []string{public + "/sso/callback"}}, "chromium")
	d, tp, cert, ctx := sc.d, sc.tp, sc.cert, sc.ctx
	du, _ := url.Parse(d.Issuer)
	dl, err := tp.Client.Listen("tcp", du.Host)
	if err != nil {
		t.Fatal(err)
	}
	forwardTCP(t, dl, du.Host)
	prog := testenv.BuildBinary(t, "./internal/testinfra/ssobrowser")

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
	listen := testenv.GWAddr.String() + ":443"
	gw := serveInNS(t, tp.GW, listen, tunnel.Config{
		Certificate: mustLoad(t, cert), Authenticator: auth.Chain{o, grant}, OfferBearer: true,
		Policy: rules, Sealer: sealer, SSO: sso, PreLoginBanner: preLoginBanner,
		SplitInclude: []netip.Prefix{testenv.CorpNet}, Dialer: nsDialer{tp.GW}, Logger: logger,
	})

	browserEnv := func(t *testing.T, u dextest.User) ([]string, string) {
		logFile := filepath.Join(t.TempDir(), "browser.log")
		return []string{"UNDERPASS_SSO_USER=" + u.Email, "UNDERPASS_SSO_PASSWORD=" + u.Password, "UNDERPASS_SSO_LOG=" + logFile}, logFile
	}
	fetch := func(s *testenv.OCSession) { sc.fetch(t, s) }

	t.Run("browser sign-in and connect", func(t *testing.T) {
		env, logFile := browserEnv(t, dextest.Alice)
		waitSSOPort(t, tp.Client)
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
	refused := func(t *testing.T, server string, u dextest.User, want string, extraEnv ...string) {
		env, logFile := browserEnv(t, u)
		env = append(env, extraEnv...)
		waitSSOPort(t, tp.Client)
		octx, ocancel := context.WithTimeout(ctx, 2*time.Minute)
		defer ocancel()
		cmd := tp.Client.Exec(octx, "openconnect", "--non-inter", "--servercert", cert.Pin, "--authenticate",
			"--external-browser="+prog, "https://"+server+"/")
		cmd.Env = append(cmd.Env, env...)
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = io.Discard, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if octx.Err() != nil || !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), want) ||
			(server == listen && !strings.Contains(stderr.String(), preLoginBanner)) {
			b, _ := os.ReadFile(logFile)
			t.Fatalf("%v (ctx %v), want exit 1 and %q\nopenconnect:\n%s\nbrowser log:\n%s", err, octx.Err(), want, stderr.String(), b)
		}
	}
	t.Run("user outside the allowed groups", func(t *testing.T) {
		refused(t, listen, dextest.Bob, "Access denied: your account is not in a group allowed to use this VPN")
	})
	t.Run("browser leg cancelled at the IdP", func(t *testing.T) {
		// The user cancels on the IdP's page: the browser comes back to
		// the gateway's callback with error=access_denied, as from an IdP.
		refused(t, listen, dextest.Alice, "Login failed: the identity provider refused the sign-in: access_denied (The user cancelled the sign-in)",
			"UNDERPASS_SSO_DENY=access_denied")
	})
	t.Run("expired browser leg", func(t *testing.T) {
		// A second gateway whose login links expire before any browser
		// can arrive: the refusal still reaches openconnect's listener.
		quick, err := auth.NewSSO(auth.SSOConfig{OIDC: o, PublicURL: public + ":8443", Sealer: sealer, LoginTTL: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		serveInNS(t, tp.GW, testenv.GWAddr.String()+":8443",
			tunnel.Config{Certificate: mustLoad(t, cert), Authenticator: o, Sealer: sealer, SSO: quick, Dialer: nsDialer{tp.GW}})
		refused(t, testenv.GWAddr.String()+":8443", dextest.Alice, "Login failed: the sign-in link expired; start again")
	})
	t.Run("wrong password shows the pre-login banner", func(t *testing.T) {
		_, err := testenv.TryOpenconnect(t, tp.Client, testenv.OCOptions{
			Server: listen, Path: "/password", ServerCertPin: cert.Pin, User: dextest.Alice.Email, Password: "wrong",
		})
		if err == nil || !strings.Contains(err.Error(), preLoginBanner) {
			t.Fatalf("want a failure that shows the banner: %v", err)
		}
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
