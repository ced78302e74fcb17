// Package dextest runs a real OIDC identity provider, Dex, for tests: it
// builds Dex from the tools/dex module (once, cached under .cache/), starts
// it on 127.0.0.1 with memory storage, a static client and static password
// users with groups, and fetches tokens with the password grant.
//
// Dex is missing or unbuildable (e.g. no module proxy): tests are skipped,
// or fail when CI=true so CI never silently skips the real-IdP tests.
package dextest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Dex's module path and the import path of its command (pinned in
// tools/dex/go.mod: v0.0.0-20260303133905-11d2eeb52b42 = v2.45.1).
const dexCmd = "github.com/dexidp/dex/cmd/dex"

const (
	// BuildTimeout bounds a cold build (about 4 minutes on 2 cores).
	BuildTimeout = 15 * time.Minute
	// startTimeout bounds Dex's start-up (it serves in well under 1s).
	startTimeout = 30 * time.Second
	// bcryptCost is Dex's minimum accepted cost for static passwords.
	bcryptCost = 10
)

// User is a static password user. Dex signs in by Email; Username becomes
// preferred_username in tokens.
type User struct {
	Email    string
	Username string
	Password string
	Groups   []string
}

// Default users and client.
var (
	Alice = User{Email: "alice@example.com", Username: "alice", Password: "alice-Passw0rd", Groups: []string{"vpn-users", "staff"}}
	Bob   = User{Email: "bob@example.com", Username: "bob", Password: "bob-Passw0rd", Groups: []string{"staff"}}
)

const (
	DefaultClientID     = "underpass-gateway"
	DefaultClientSecret = "underpass-test-secret"
)

// Options configures a Dex instance; zero fields take defaults.
type Options struct {
	Users        []User // default Alice, Bob
	ClientID     string
	ClientSecret string
	// IDTokenTTL is Dex's expiry.idTokens (e.g. "1h"). Default Dex's 24h.
	IDTokenTTL string
	// RefreshTokenLifetime is Dex's expiry.refreshTokens.absoluteLifetime
	// (e.g. "1s"): past it Dex refuses the refresh token (invalid_request,
	// "Refresh token expired"). Default: Dex's (no limit).
	RefreshTokenLifetime string
	// RedirectURIs the client may use (browser sign-in: the gateway's
	// <public URL>/sso/callback). Default http://127.0.0.1/callback.
	RedirectURIs []string
	// PublicClient, if set, adds a public (native-app) client with this ID
	// and no secret, e.g. for the device authorization grant.
	PublicClient string
}

// Dex is a running Dex server.
type Dex struct {
	Issuer       string // http://127.0.0.1:PORT/dex
	ClientID     string
	ClientSecret string
	Users        []User
	// Scopes the gateway should request (groups appear only if asked).
	Scopes []string

	cmd  *exec.Cmd
	logs *lockedBuffer
	hc   *http.Client
}

// Start builds (if needed) and starts Dex with the default options.
func Start(t testing.TB) *Dex { return StartWith(t, Options{}) }

// StartWith builds (if needed) and starts Dex; it is stopped at cleanup.
func StartWith(t testing.TB, o Options) *Dex {
	t.Helper()
	bin := Binary(t)
	if len(o.Users) == 0 {
		o.Users = []User{Alice, Bob}
	}
	if o.ClientID == "" {
		o.ClientID, o.ClientSecret = DefaultClientID, DefaultClientSecret
	}
	var lastErr error
	// Retry: the free port we picked can be taken before Dex binds it.
	for range 3 {
		d, err := start(t, bin, o)
		if err == nil {
			return d
		}
		lastErr = err
	}
	t.Fatalf("dextest: start: %v", lastErr)
	return nil
}

func start(t testing.TB, bin string, o Options) (*Dex, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := &Dex{
		Issuer:       fmt.Sprintf("http://127.0.0.1:%d/dex", port),
		ClientID:     o.ClientID,
		ClientSecret: o.ClientSecret,
		Users:        o.Users,
		Scopes:       []string{"openid", "email", "groups", "profile"},
		logs:         &lockedBuffer{},
	}
	tr := &http.Transport{}
	d.hc = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	cfgPath := filepath.Join(t.TempDir(), "dex.json")
	cfg, err := d.config(port, o)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = d.logs, d.logs
	// Pdeathsig: Dex dies with the test binary even if cleanup never runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d.cmd = cmd
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		tr.CloseIdleConnections()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second): // Dex shuts down in milliseconds
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	if err := d.waitReady(exited); err != nil {
		stop()
		return nil, fmt.Errorf("%w\n%s", err, d.logs.String())
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("dex log:\n%s", d.logs.String())
		}
	})
	return d, nil
}

func (d *Dex) config(port int, o Options) ([]byte, error) {
	type pw struct {
		Email             string   `json:"email"`
		Hash              string   `json:"hash"`
		Username          string   `json:"username"`
		PreferredUsername string   `json:"preferredUsername"`
		UserID            string   `json:"userID"`
		Groups            []string `json:"groups,omitempty"`
	}
	redirects := o.RedirectURIs
	if len(redirects) == 0 {
		redirects = []string{"http://127.0.0.1/callback"}
	}
	var pws []pw
	for _, u := range o.Users {
		h, err := bcrypt.GenerateFromPassword([]byte(u.Password), bcryptCost)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256([]byte(u.Email))
		pws = append(pws, pw{Email: u.Email, Hash: string(h), Username: u.Username, PreferredUsername: u.Username,
			UserID: hex.EncodeToString(sum[:8]), Groups: u.Groups})
	}
	c := map[string]any{
		"issuer":           d.Issuer,
		"storage":          map[string]any{"type": "memory"},
		"web":              map[string]any{"http": fmt.Sprintf("127.0.0.1:%d", port)},
		"logger":           map[string]any{"level": "info", "format": "text"},
		"oauth2":           map[string]any{"passwordConnector": "local", "skipApprovalScreen": true},
		"enablePasswordDB": true,
		"staticClients": []any{map[string]any{
			"id": o.ClientID, "secret": o.ClientSecret, "name": "Underpass gateway",
			"redirectURIs": redirects,
		}},
		"staticPasswords": pws,
	}
	if o.PublicClient != "" {
		c["staticClients"] = append(c["staticClients"].([]any), map[string]any{"id": o.PublicClient, "name": "Underpass client", "public": true})
	}
	expiry := map[string]any{}
	if o.IDTokenTTL != "" {
		expiry["idTokens"] = o.IDTokenTTL
	}
	if o.RefreshTokenLifetime != "" {
		expiry["refreshTokens"] = map[string]any{"absoluteLifetime": o.RefreshTokenLifetime}
	}
	if len(expiry) > 0 {
		c["expiry"] = expiry
	}
	// JSON is YAML, which Dex reads.
	return json.MarshalIndent(c, "", "  ")
}

func (d *Dex) waitReady(exited <-chan error) error {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("dex exited: %v", err)
		default:
		}
		resp, err := d.hc.Get(d.Issuer + "/.well-known/openid-configuration")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("dex did not serve discovery in time")
}

// Tokens is a password-grant response.
type Tokens struct {
	IDToken     string `json:"id_token"`
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
}

// GrantError is Dex's OAuth2 error reply.
type GrantError struct {
	Status      int
	Code        string `json:"error"`
	Description string `json:"error_description"`
}

func (e *GrantError) Error() string {
	return fmt.Sprintf("dex: HTTP %d: %s: %s", e.Status, e.Code, e.Description)
}

// Grant performs the password grant (user is the e-mail) with Scopes.
func (d *Dex) Grant(ctx context.Context, user, pass string) (*Tokens, error) {
	form := url.Values{
		"grant_type": {"password"},
		"username":   {user},
		"password":   {pass},
		"scope":      {strings.Join(d.Scopes, " ")},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.Issuer+"/token", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(d.ClientID), url.QueryEscape(d.ClientSecret))
	resp, err := d.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		ge := &GrantError{Status: resp.StatusCode}
		_ = json.Unmarshal(body, ge)
		return nil, ge
	}
	var tk Tokens
	if err := json.Unmarshal(body, &tk); err != nil {
		return nil, err
	}
	return &tk, nil
}

// Token fetches an ID token and access token for user, failing the test
// on error.
func (d *Dex) Token(t testing.TB, user, pass string) (idToken, accessToken string) {
	t.Helper()
	tk, err := d.Grant(context.Background(), user, pass)
	if err != nil {
		t.Fatalf("dextest: password grant for %s: %v", user, err)
	}
	return tk.IDToken, tk.AccessToken
}

// ApproveDevice plays the user of the device authorization grant on
// another device: it opens the verification link (complete), submits code
// on Dex's device page and signs in as u on Dex's login page.
func (d *Dex) ApproveDevice(ctx context.Context, complete, code string, u User) error {
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Jar: jar, Transport: tr, Timeout: 10 * time.Second}
	submit := func(method, target string, form url.Values) (*url.URL, string, error) {
		req, err := http.NewRequestWithContext(ctx, method, target, strings.NewReader(form.Encode()))
		if err != nil {
			return nil, "", err
		}
		if method == http.MethodPost {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return nil, "", fmt.Errorf("%s %s: %d %.300s", method, target, resp.StatusCode, b)
		}
		return resp.Request.URL, string(b), nil
	}
	next := func(at *url.URL, body string) (string, error) {
		m := formAction.FindStringSubmatch(body)
		if m == nil {
			return "", fmt.Errorf("no form at %s: %.300s", at, body)
		}
		act, err := at.Parse(html.UnescapeString(m[1]))
		if err != nil {
			return "", err
		}
		return act.String(), nil
	}
	at, body, err := submit(http.MethodGet, complete, nil)
	if err != nil {
		return err
	}
	act, err := next(at, body)
	if err != nil {
		return err
	}
	if at, body, err = submit(http.MethodPost, act, url.Values{"user_code": {code}}); err != nil {
		return err
	}
	if act, err = next(at, body); err != nil {
		return err
	}
	_, _, err = submit(http.MethodPost, act, url.Values{"login": {u.Email}, "password": {u.Password}})
	return err
}

// formAction finds a form's target on Dex's pages.
var formAction = regexp.MustCompile(`<form[^>]*action="([^"]*)"`)

// Logs returns Dex's output so far.
func (d *Dex) Logs() string { return d.logs.String() }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
