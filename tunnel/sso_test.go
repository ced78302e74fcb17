package tunnel_test

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/authxml"
	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/internal/testinfra/dextest"
	"github.com/underpass/underpass/tunnel"
)

// siteHost is the public name every gateway of the test site answers to;
// the test's browser maps it to whichever gateway a step should reach.
const siteHost = "vpn.site.test"

// ssoSite is a set of gateways sharing one site key, with SSO against Dex.
type ssoSite struct {
	dex    *dextest.Dex
	gws    []*tunnel.Gateway
	addrs  []string // host:port per gateway
	now    *fakeNow
	policy auth.Policy // every gateway's, at sign-in, resume and renewal

	mu     sync.Mutex
	events []tunnel.Event // every gateway's
}

// ended returns the reason the session id ended with, if it did.
func (s *ssoSite) ended(id string) (tunnel.EndReason, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.events {
		if e.Kind == tunnel.EventSessionEnd && e.Session == id {
			return e.Reason, true
		}
	}
	return 0, false
}

type fakeNow struct {
	mu  sync.Mutex
	off time.Duration
}

func (f *fakeNow) Now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return time.Now().Add(f.off) }
func (f *fakeNow) Skip(d time.Duration) {
	f.mu.Lock()
	f.off += d
	f.mu.Unlock()
}

// startSSOSite starts Dex (ID tokens valid 10 minutes) and n gateways;
// mod, if set, adjusts gateway i's SSO configuration.
func startSSOSite(t *testing.T, n int, mod func(i int, c *auth.SSOConfig)) *ssoSite {
	return startSSOSiteWith(t, dextest.Options{IDTokenTTL: "10m"}, nil, n, mod)
}

// startSSOSiteWith is startSSOSite with Dex's options (its redirect URI is
// set here) and the gateways' access policy (default: group vpn-users).
func startSSOSiteWith(t *testing.T, dexOpts dextest.Options, policy auth.Policy, n int, mod func(i int, c *auth.SSOConfig)) *ssoSite {
	t.Helper()
	if policy == nil {
		policy = &auth.Rules{AllowGroups: []string{"vpn-users"}}
	}
	site := &ssoSite{now: &fakeNow{}, policy: policy}
	dexOpts.RedirectURIs = []string{"https://" + siteHost + "/sso/callback"}
	site.dex = dextest.StartWith(t, dexOpts)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key, _ := auth.ParseSealerKey(auth.GenerateSealerKey())
	certPEM, keyPEM, err := certutil.SelfSigned([]string{"127.0.0.1", siteHost}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		o, err := auth.NewOIDC(ctx, auth.OIDCConfig{
			Issuer: site.dex.Issuer, ClientID: site.dex.ClientID, ClientSecret: site.dex.ClientSecret, Scopes: site.dex.Scopes,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(o.Close)
		grant, _ := o.PasswordGrant()
		sealer, _ := auth.NewSealer(nil, key)
		sc := auth.SSOConfig{OIDC: o, PublicURL: "https://" + siteHost, Sealer: sealer, Policy: policy, Now: site.now.Now}
		if mod != nil {
			mod(i, &sc)
		}
		sso, err := auth.NewSSO(sc)
		if err != nil {
			t.Fatal(err)
		}
		gw, err := tunnel.New(tunnel.Config{
			Certificate: &cert, Authenticator: auth.Chain{o, grant}, Policy: policy, Sealer: sealer, SSO: sso,
			OfferBearer: true, PreLoginBanner: preLoginBanner,
			Events: func(e tunnel.Event) { site.mu.Lock(); site.events = append(site.events, e); site.mu.Unlock() },
		})
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { _ = gw.Serve(l); close(done) }()
		t.Cleanup(func() { _ = gw.Close(); <-done })
		site.gws = append(site.gws, gw)
		site.addrs = append(site.addrs, l.Addr().String())
	}
	return site
}

// ocSide plays openconnect 9.01's side of the sign-in: the XML messages
// with its STRAP DH key and the SSO capability, and the listener's
// decryption of the token.
type ocSide struct {
	key *ecdh.PrivateKey
	hc  *http.Client
}

func newOCSide(t *testing.T) *ocSide {
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} // self-signed test gateway
	t.Cleanup(tr.CloseIdleConnections)
	return &ocSide{key: k, hc: &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (c *ocSide) strapHeader(t *testing.T) string {
	der, err := x509.MarshalPKIXPublicKey(c.key.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(der)
}

const ssoInit = `<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="init" aggregate-auth-version="2"><version who="vpn">v9.01</version><device-id>linux-64</device-id>%s<group-access>https://gw/</group-access></config-auth>`

const ssoCaps = `<capabilities><auth-method>single-sign-on-v2</auth-method><auth-method>single-sign-on-external-browser</auth-method></capabilities>`

// post sends one sign-in message to the gateway at addr and parses the
// reply.
func (c *ocSide) post(t *testing.T, addr, path, body string) (*http.Response, *authxml.ServerMessage) {
	t.Helper()
	resp, b := c.postRaw(t, addr, path, body, map[string]string{"X-AnyConnect-STRAP-DH-Pubkey": c.strapHeader(t)})
	m, err := authxml.ParseServer(b)
	if err != nil {
		t.Fatalf("reply %q: %v", b, err)
	}
	return resp, m
}

// postRaw sends a sign-in message with openconnect's headers plus hdr.
func (c *ocSide) postRaw(t *testing.T, addr, path, body string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "https://"+addr+path, strings.NewReader(body))
	req.Header.Set("X-Aggregate-Auth", "1")
	req.Header.Set("X-Transcend-Version", "1")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func (c *ocSide) init(t *testing.T, addr string) *authxml.ServerMessage {
	t.Helper()
	_, m := c.post(t, addr, "/", fmt.Sprintf(ssoInit, ssoCaps))
	if m.SSOLogin == "" || m.Opaque == "" || !slices.Equal(m.Inputs, []string{"sso-token"}) {
		t.Fatalf("not an SSO form: %+v", m)
	}
	return m
}

func (c *ocSide) reply(t *testing.T, addr, opaque, token string) (*http.Response, *authxml.ServerMessage) {
	t.Helper()
	body := `<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-reply" aggregate-auth-version="2"><version who="vpn">v9.01</version><device-id>linux-64</device-id>` +
		`<opaque is-for="sg">` + opaque + `</opaque><auth><sso-token>` + token + `</sso-token></auth></config-auth>`
	return c.post(t, addr, "/", body)
}

// token decodes what the browser brought to the listener, as openconnect
// does: URL-decoded path, base64, the STRAP container.
func (c *ocSide) token(t *testing.T, listenerURL string) string {
	t.Helper()
	u, err := url.Parse(listenerURL)
	if err != nil || u.Host != "[::1]:29786" || !strings.HasPrefix(u.Path, "/api/sso/") {
		t.Fatalf("browser leg did not end at the client's listener: %q", listenerURL)
	}
	if len("GET "+u.RequestURI()+" HTTP/1.1") > 4096 {
		t.Fatalf("request line %d bytes, openconnect takes 4096", len(u.RequestURI()))
	}
	blob, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(u.Path, "/api/sso/"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := auth.OpenSTRAPBlob(c.key, blob)
	if err != nil {
		t.Fatalf("open token: %v", err)
	}
	if !regexp.MustCompile(`^[A-Za-z0-9]+$`).Match(tok) {
		t.Fatalf("token not alphanumeric: %q", tok)
	}
	return string(tok)
}

// browser is an HTTP-only user agent: a cookie jar, the site name mapped
// to one gateway (target), and the client's listener never reached (its
// URL is the result).
type browser struct {
	hc     *http.Client
	mu     sync.Mutex
	target string
	stop   func(*url.URL) bool // stop before following a redirect here
}

func newBrowser(t *testing.T, target string) *browser {
	b := &browser{target: target}
	jar, _ := cookiejar.New(nil)
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // self-signed test gateway
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr == siteHost+":443" {
				b.mu.Lock()
				addr = b.target
				b.mu.Unlock()
			}
			return d.DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true, // every step dials, so Target switches take effect
	}
	b.hc = &http.Client{Jar: jar, Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(r *http.Request, _ []*http.Request) error {
			if r.URL.Host == "[::1]:29786" || (b.stop != nil && b.stop(r.URL)) {
				return http.ErrUseLastResponse
			}
			return nil
		}}
	return b
}

var formAction = regexp.MustCompile(`<form[^>]*action="([^"]*)"`)

// get fetches u, following redirects; it returns the last response's
// status, its Location (a stopped redirect) and body.
func (b *browser) get(t *testing.T, u string) (int, string, string) {
	t.Helper()
	resp, err := b.hc.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 == 3 {
		return resp.StatusCode, resp.Header.Get("Location"), string(body)
	}
	return resp.StatusCode, resp.Request.URL.String(), string(body)
}

// signIn opens the login link and signs in on Dex's login page; it
// returns where the browser was sent in the end (the listener URL, or
// where b.stop stopped it).
func (b *browser) signIn(t *testing.T, login string, u dextest.User) string {
	t.Helper()
	code, where, body := b.get(t, login)
	if code != http.StatusOK || !strings.Contains(body, "password") {
		t.Fatalf("login page: %d %s %.300s", code, where, body)
	}
	m := formAction.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no form on Dex's login page: %.500s", body)
	}
	base, _ := url.Parse(where)
	act, _ := base.Parse(html.UnescapeString(m[1]))
	resp, err := b.hc.PostForm(act.String(), url.Values{"login": {u.Email}, "password": {u.Password}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 3 {
		t.Fatalf("after Dex's login: %d %.300s", resp.StatusCode, rb)
	}
	return resp.Header.Get("Location")
}

// TestSSOInProcess runs the SSO v2 sign-in against a real Dex, with an
// HTTP-only browser and a client playing openconnect's side: success with
// the IdP's groups and method "sso"; a user outside the allowed groups and
// an IdP error end at the client's listener with a refusal; a reused login
// link, a callback without the state cookie, a token presented with
// another STRAP key, a replayed auth-reply and an expired link are
// refused; clients without the capability, and the /password path, get
// the password form; the bearer offer still comes first.
func TestSSOInProcess(t *testing.T) {
	site := startSSOSite(t, 2, func(i int, c *auth.SSOConfig) { c.CapAtTokenExpiry = i == 1 })
	gw := site.addrs[0]

	signIn := func(t *testing.T, oc *ocSide, u dextest.User) (form *authxml.ServerMessage, token string) {
		t.Helper()
		form = oc.init(t, gw)
		br := newBrowser(t, gw)
		return form, oc.token(t, br.signIn(t, form.SSOLogin, u))
	}

	t.Run("success", func(t *testing.T) {
		oc := newOCSide(t)
		form, tok := signIn(t, oc, dextest.Alice)
		if form.Banner != preLoginBanner {
			t.Fatalf("SSO form without the pre-login banner: %+v", form)
		}
		if !strings.HasPrefix(form.SSOLogin, "https://"+siteHost+"/sso/login?") {
			t.Fatalf("login URL not from the configured site host: %s", form.SSOLogin)
		}
		resp, m := oc.reply(t, gw, form.Opaque, tok)
		if m.Type != "complete" {
			t.Fatalf("reply: %+v", m)
		}
		var cookie string
		for _, c := range resp.Cookies() {
			if c.Name == "webvpn" {
				cookie = c.Value
			}
		}
		if cookie == "" {
			t.Fatal("no webvpn cookie")
		}
		ss := site.gws[0].Sessions()
		i := slices.IndexFunc(ss, func(s tunnel.SessionInfo) bool { return s.User == "alice" })
		if i < 0 || ss[i].Method != "sso" || !slices.Contains(ss[i].Groups, "vpn-users") {
			t.Fatalf("sessions: %+v", ss)
		}
		// Not capped at the 10-minute ID token: the gateway's 1-hour
		// session timeout applies.
		if left := time.Until(ss[i].Expires); left < 50*time.Minute {
			t.Fatalf("SSO session ends in %v: capped at the ID token", left)
		}
		t.Run("replayed auth-reply", func(t *testing.T) {
			_, m := oc.reply(t, gw, form.Opaque, tok)
			if m.Type == "complete" || !strings.Contains(m.Error, "already used") || len(m.Inputs) != 0 {
				t.Fatalf("replay: %+v", m)
			}
		})
	})
	t.Run("session capped at the ID token when configured", func(t *testing.T) {
		oc := newOCSide(t)
		form := oc.init(t, site.addrs[1])
		tok := oc.token(t, newBrowser(t, site.addrs[1]).signIn(t, form.SSOLogin, dextest.Alice))
		if _, m := oc.reply(t, site.addrs[1], form.Opaque, tok); m.Type != "complete" {
			t.Fatalf("reply: %+v", m)
		}
		ss := site.gws[1].Sessions()
		if len(ss) != 1 || time.Until(ss[0].Expires) > 10*time.Minute {
			t.Fatalf("sessions: %+v", ss)
		}
	})
	t.Run("reused login link", func(t *testing.T) {
		oc := newOCSide(t)
		form := oc.init(t, gw)
		br := newBrowser(t, gw)
		_ = br.signIn(t, form.SSOLogin, dextest.Alice)
		code, _, body := br.get(t, form.SSOLogin)
		if code != http.StatusBadRequest || !strings.Contains(body, "already used") {
			t.Fatalf("reused link: %d %s", code, body)
		}
	})
	t.Run("callback without the state cookie", func(t *testing.T) {
		oc := newOCSide(t)
		form := oc.init(t, gw)
		br := newBrowser(t, gw)
		br.stop = func(u *url.URL) bool { return u.Path == "/sso/callback" }
		cb := br.signIn(t, form.SSOLogin, dextest.Alice)
		other := newBrowser(t, gw) // a browser without the cookie
		code, where, body := other.get(t, cb)
		if code != http.StatusBadRequest || strings.Contains(where, "29786") || !strings.Contains(body, "state missing") {
			t.Fatalf("callback without cookie: %d %s %s", code, where, body)
		}
		t.Run("IdP error ends at the listener with a refusal", func(t *testing.T) {
			u, _ := url.Parse(cb)
			q := url.Values{"state": {u.Query().Get("state")}, "error": {"access_denied"}, "error_description": {"user cancelled"}}
			_, where, _ := br.get(t, "https://"+siteHost+"/sso/callback?"+q.Encode())
			_, m := oc.reply(t, gw, form.Opaque, oc.token(t, where))
			if !strings.Contains(m.Error, "identity provider refused the sign-in: access_denied (user cancelled)") || len(m.Inputs) != 0 {
				t.Fatalf("reply: %+v", m)
			}
		})
	})
	t.Run("token presented with another STRAP key", func(t *testing.T) {
		oc := newOCSide(t)
		form, tok := signIn(t, oc, dextest.Alice)
		thief := newOCSide(t)
		_, m := thief.reply(t, gw, form.Opaque, tok)
		if m.Type == "complete" || !strings.Contains(m.Error, "another client") {
			t.Fatalf("other key: %+v", m)
		}
		// The rightful client still completes: the refusal did not use it up.
		if _, m := oc.reply(t, gw, form.Opaque, tok); m.Type != "complete" {
			t.Fatalf("rightful client after the thief: %+v", m)
		}
	})
	t.Run("user outside the allowed groups", func(t *testing.T) {
		oc := newOCSide(t)
		form, tok := signIn(t, oc, dextest.Bob)
		_, m := oc.reply(t, gw, form.Opaque, tok)
		if m.Type == "complete" || m.Error != "Access denied: your account is not in a group allowed to use this VPN" || len(m.Inputs) != 0 {
			t.Fatalf("bob: %+v", m)
		}
	})
	t.Run("expired login link", func(t *testing.T) {
		oc := newOCSide(t)
		form := oc.init(t, gw)
		site.now.Skip(11 * time.Minute) // past the default 10-minute LoginTTL
		br := newBrowser(t, gw)
		_, where, _ := br.get(t, form.SSOLogin)
		site.now.Skip(-11 * time.Minute)
		_, m := oc.reply(t, gw, form.Opaque, oc.token(t, where))
		if !strings.Contains(m.Error, "link expired") {
			t.Fatalf("expired: %+v", m)
		}
	})
	t.Run("client without the capability gets the password form", func(t *testing.T) {
		oc := newOCSide(t)
		_, m := oc.post(t, gw, "/", fmt.Sprintf(ssoInit, ""))
		if m.SSOLogin != "" || !slices.Equal(m.Inputs, []string{"username", "password"}) {
			t.Fatalf("form: %+v", m)
		}
		_, m = oc.post(t, gw, "/password", fmt.Sprintf(ssoInit, ssoCaps))
		if m.SSOLogin != "" || !slices.Equal(m.Inputs, []string{"username", "password"}) {
			t.Fatalf("/password form: %+v", m)
		}
		_, m = oc.post(t, gw, "/auth", authxmlReply(dextest.Alice))
		if m.Type != "complete" {
			t.Fatalf("password sign-in beside SSO: %+v", m)
		}
	})
	t.Run("a token-mode client still gets the Bearer offer", func(t *testing.T) {
		resp, _ := newOCSide(t).postRaw(t, gw, "/", fmt.Sprintf(ssoInit, ssoCaps), map[string]string{"X-Support-HTTP-Auth": "true"})
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != "Bearer" {
			t.Fatalf("%d %v", resp.StatusCode, resp.Header)
		}
	})
	t.Run("HEAD does not use up a login link", func(t *testing.T) {
		oc := newOCSide(t)
		form := oc.init(t, gw)
		br := newBrowser(t, gw)
		resp, err := br.hc.Head(form.SSOLogin)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("HEAD: %d", resp.StatusCode)
		}
		oc.token(t, br.signIn(t, form.SSOLogin, dextest.Alice))
	})
	t.Run("public URL outside SecretPath refused", func(t *testing.T) {
		o, err := auth.NewOIDC(context.Background(), auth.OIDCConfig{Issuer: site.dex.Issuer, ClientID: site.dex.ClientID})
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		sealer, _ := auth.NewSealer(nil, make([]byte, auth.SealerKeySize))
		sso, err := auth.NewSSO(auth.SSOConfig{OIDC: o, PublicURL: "https://" + siteHost, Sealer: sealer})
		if err != nil {
			t.Fatal(err)
		}
		_, err = tunnel.New(tunnel.Config{Authenticator: o, SSO: sso, SecretPath: "/vpn-4f9c"})
		var fe *tunnel.FieldError
		if !errors.As(err, &fe) || fe.Field != "SSO" {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("garbage STRAP key gets the password form", func(t *testing.T) {
		_, b := newOCSide(t).postRaw(t, gw, "/", fmt.Sprintf(ssoInit, ssoCaps), map[string]string{"X-AnyConnect-STRAP-DH-Pubkey": "bm90IGEga2V5"})
		if m, err := authxml.ParseServer(b); err != nil || m.SSOLogin != "" || len(m.Inputs) != 2 {
			t.Fatalf("%+v %v", m, err)
		}
	})
}

func authxmlReply(u dextest.User) string {
	return string(authxml.RenderReply("linux-64", "", u.Email, u.Password))
}

// TestSSOAcrossSite: the init on gateway A, the browser's login and
// callback on B, and the auth-reply on C complete one sign-in: three
// gateways sharing only the site key.
func TestSSOAcrossSite(t *testing.T) {
	site := startSSOSite(t, 3, nil)
	a, b, c := site.addrs[0], site.addrs[1], site.addrs[2]
	oc := newOCSide(t)
	form := oc.init(t, a)
	br := newBrowser(t, b)
	tok := oc.token(t, br.signIn(t, form.SSOLogin, dextest.Alice))
	resp, m := oc.reply(t, c, form.Opaque, tok)
	if m.Type != "complete" {
		t.Fatalf("reply on C: %+v", m)
	}
	if !slices.ContainsFunc(resp.Cookies(), func(c *http.Cookie) bool { return c.Name == "webvpn" }) {
		t.Fatal("no webvpn cookie")
	}
	if ss := site.gws[2].Sessions(); len(ss) != 1 || ss[0].Method != "sso" || ss[0].User != "alice" {
		t.Fatalf("C's sessions: %+v", ss)
	}
	if len(site.gws[0].Sessions())+len(site.gws[1].Sessions()) != 0 {
		t.Fatal("A or B holds a session")
	}
}
