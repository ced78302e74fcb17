package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// gwListen is where the gateway listens in the gw namespace.
var gwListen = testenv.GWAddr.String() + ":443"

// e2e is one gateway (the real underpass binary) in the standard topology,
// with a corporate web server on 198.19.0.2:8080.
type e2e struct {
	tp   *testenv.Topo
	cert *testenv.Cert
	gw   *testenv.Proc
	web  string // corp base URL
	cfg  string // the config file
	doc  string // its contents at start
	bin  string // the underpass binary
	sock string // its admin socket
}

// e2eBase builds the binary and sets up the standard topology with the
// corporate web server, a certificate for GWAddr and alice's password
// hash ("alice-pw"); tools are needed besides openconnect's.
func e2eBase(t *testing.T, tools ...string) (bin string, tp *testenv.Topo, web string, cert *testenv.Cert, hash []byte) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, append([]string{"openconnect", "ocproxy", "curl", "ip"}, tools...)...)
	bin = testenv.BuildBinary(t, "./examples/standalone")
	tp = testenv.Topology(t)
	web = tp.ServeHTTP(t, 8080)
	cert = testenv.NewCert(t, testenv.GWAddr.String())
	hash, err := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return bin, tp, web, cert, hash
}

func startE2E(t *testing.T) *e2e {
	t.Helper()
	bin, tp, web, cert, hash := e2eBase(t)
	dir := t.TempDir()
	doc := fmt.Sprintf(`listen: %q
tls: {cert: %q, key: %q}
split_include: [198.19.0.0/24]
split_exclude: [198.19.0.128/25]
dns: [198.19.0.2]
search_domains: [corp.example]
dpd: 10s
users:
  - {name: alice, password_hash: %q}
log: {level: debug}
admin_http: 127.0.0.1:9444
`, gwListen, cert.CertFile, cert.KeyFile, hash)
	gw, cfg, sock := serveConfig(t, tp, bin, dir, doc)
	return &e2e{tp: tp, cert: cert, gw: gw, web: web, cfg: cfg, doc: doc, bin: bin, sock: sock}
}

// serveConfig writes doc as dir/underpass.yaml and runs `underpass serve`
// with it in gw (state and admin socket in dir) until the test ends; it
// returns once the gateway listens on gwListen, with the config file's and
// the admin socket's paths.
func serveConfig(t *testing.T, tp *testenv.Topo, bin, dir, doc string) (gw *testenv.Proc, cfg, sock string) {
	t.Helper()
	cfg = filepath.Join(dir, "underpass.yaml")
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	sock = filepath.Join(dir, "admin.sock")
	cmd := tp.GW.Exec(context.Background(), bin, "serve", "-config", cfg, "-admin-socket", sock)
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+dir)
	gw = tp.GW.StartCmd(t, cmd)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // cold start incl. stack set-up
	defer cancel()
	if err := tp.GW.WaitTCP(ctx, gwListen, gw); err != nil {
		t.Fatalf("gateway did not listen: %v\n%s", err, gw.Tail(20))
	}
	return gw, cfg, sock
}

// startUnbound runs unbound as the corporate DNS server on 198.19.0.2:53
// in the corp namespace, authoritative for corp.example and refusing
// everything else (it never contacts the internet).
func (e *e2e) startUnbound(t *testing.T) {
	t.Helper()
	testenv.Unbound(t, e.tp.Corp, []netip.Addr{testenv.CorpAddr}, "corp.example.", []string{
		"intranet.corp.example. 300 IN A 198.19.0.2",
		"wiki.corp.example. 300 IN A 198.19.0.2",
	})
}

func (e *e2e) opts(mode string) testenv.OCOptions {
	return testenv.OCOptions{Server: gwListen, ServerCertPin: e.cert.Pin, User: "alice", Password: "alice-pw", Mode: mode}
}

// failsFast runs a request that must fail, and fails the test unless it
// failed within limit (a refusal, not a timeout).
func failsFast(t *testing.T, what string, limit time.Duration, run func(ctx context.Context) (string, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	body, err := run(ctx)
	if err == nil {
		t.Errorf("%s: succeeded (%q), want refusal", what, body)
		return
	}
	if d := time.Since(start); d > limit {
		t.Errorf("%s: failed only after %v (%v), want a prompt refusal", what, d, err)
	}
}

func TestOpenconnectUserspace(t *testing.T) {
	e := startE2E(t)
	s := testenv.Openconnect(t, e.tp.Client, e.opts(testenv.ModeOcproxy))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	body, err := testenv.CurlViaSocks(ctx, e.tp.Client, s.SocksPort, e.web+"/")
	if err != nil || body != testenv.CorpPage {
		t.Fatalf("corp page through the tunnel: %q, %v\n%s", body, err, e.gw.Tail(20))
	}
	who, err := testenv.CurlViaSocks(ctx, e.tp.Client, s.SocksPort, e.web+"/whoami")
	if err != nil || who != testenv.GWCorpAddr.String() {
		t.Errorf("corp sees %q (%v), want the gateway's address %v", who, err, testenv.GWCorpAddr)
	}
	demo, err := testenv.CurlViaSocks(ctx, e.tp.Client, s.SocksPort, "http://169.254.0.1/")
	if err != nil || !strings.Contains(demo, "connected as alice from 169.254.0.") {
		t.Errorf("demo page: %q, %v", demo, err)
	}
	// ocproxy sends everything into the tunnel, so these reach the gateway
	// and are refused there: outside the include routes, inside the
	// exclude route, and the gateway host's own corp-side address.
	for _, url := range []string{"http://198.51.100.1:8080/", "http://198.19.0.200:8080/", "http://198.19.0.1:8080/"} {
		failsFast(t, url, 3*time.Second, func(ctx context.Context) (string, error) {
			return testenv.CurlViaSocks(ctx, e.tp.Client, s.SocksPort, url)
		})
	}
	if err := s.Close(); err != nil {
		t.Errorf("disconnect: %v", err)
	}
}

func TestOpenconnectTunAndCookie(t *testing.T) {
	e := startE2E(t)
	ar, err := testenv.AuthenticateFull(t, e.tp.Client, e.opts(testenv.ModeTun))
	if err != nil {
		t.Fatalf("authenticate: %v", err)
	}
	o := e.opts(testenv.ModeTun)
	o.Cookie = ar.Cookie
	s := testenv.Openconnect(t, e.tp.Client, o)
	env := s.Env()
	addr := env["INTERNAL_IP4_ADDRESS"]
	if !strings.HasPrefix(addr, "169.254.") || env["CISCO_SPLIT_INC"] == "" || env["CISCO_DEF_DOMAIN"] != "corp.example" {
		t.Fatalf("vpnc-script environment: %v", env)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body, err := testenv.Curl(ctx, e.tp.Client, e.web+"/")
	if err != nil || body != testenv.CorpPage {
		t.Fatalf("corp page over the tun device: %q, %v\n%s", body, err, s.Log())
	}
	big, err := testenv.Curl(ctx, e.tp.Client, e.web+"/bytes?n=4000000", "-o", "/dev/null", "-w", "%{size_download}")
	if err != nil || big != "4000000" {
		t.Errorf("4 MB download: %q, %v", big, err)
	}
	// Ping through the tunnel: the gateway forwards echo to the corp host.
	if out, err := e.tp.Client.Exec(ctx, "ping", "-c", "2", "-W", "3", testenv.CorpAddr.String()).CombinedOutput(); err != nil {
		t.Errorf("ping through the tunnel: %v\n%s", err, out)
	}
	t.Logf("tunnel address %s, interface %s, big download %s bytes", addr, s.Interface, big)
	// A client that ignores the pushed routes: send excluded and
	// not-included destinations into the tunnel anyway. The gateway
	// refuses them at once.
	e.tp.Client.Run(t, "ip", "route", "add", "198.51.100.0/24", "dev", s.Interface)
	e.tp.Client.Run(t, "ip", "route", "add", "198.19.0.128/25", "dev", s.Interface)
	for _, url := range []string{"http://198.51.100.1:8080/", "http://198.19.0.200:8080/"} {
		failsFast(t, url, 3*time.Second, func(ctx context.Context) (string, error) {
			return testenv.Curl(ctx, e.tp.Client, url)
		})
	}
	// Disconnect keeping the session, then resume with the same cookie:
	// the same address comes back.
	if err := s.CloseKeepSession(); err != nil {
		t.Fatalf("disconnect keeping session: %v", err)
	}
	s2 := testenv.Openconnect(t, e.tp.Client, o)
	if got := s2.Env()["INTERNAL_IP4_ADDRESS"]; got != addr {
		t.Fatalf("resumed with %q, want %q", got, addr)
	}
	if body, err := testenv.Curl(ctx, e.tp.Client, e.web+"/"); err != nil || body != testenv.CorpPage {
		t.Fatalf("after resume: %q, %v", body, err)
	}
	if err := s2.Close(); err != nil {
		t.Errorf("logoff: %v", err)
	}
	// Logged off: the cookie is dead.
	if _, err := testenv.TryOpenconnect(t, e.tp.Client, o); err == nil {
		t.Error("cookie still works after logoff")
	}
}

// TestOpenconnectDNS: a tunnel client resolves corporate names through the
// gateway's DNS proxy (intercepted inside the gateway, upstream a real
// unbound), including a single-label name it did not qualify itself.
func TestOpenconnectDNS(t *testing.T) {
	e := startE2E(t)
	e.startUnbound(t)
	s := testenv.Openconnect(t, e.tp.Client, e.opts(testenv.ModeTun))
	env := s.Env()
	if env["INTERNAL_IP4_DNS"] != "198.19.0.2" || env["CISCO_DEF_DOMAIN"] != "corp.example" || env["CISCO_SPLIT_DNS"] != "corp.example" {
		t.Fatalf("pushed DNS config: INTERNAL_IP4_DNS=%q CISCO_DEF_DOMAIN=%q CISCO_SPLIT_DNS=%q",
			env["INTERNAL_IP4_DNS"], env["CISCO_DEF_DOMAIN"], env["CISCO_SPLIT_DNS"])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, q := range []struct{ name, want string }{
		{"wiki.corp.example", "198.19.0.2"},
		{"intranet", "intranet.corp.example.\n198.19.0.2"}, // single label: the proxy applies the search list
	} {
		for _, proto := range []string{"+notcp", "+tcp"} {
			out, err := e.tp.Client.Exec(ctx, "dig", "+short", "+time=3", "+tries=1", proto, "@198.19.0.2", q.name).CombinedOutput()
			if got := strings.TrimSpace(string(out)); err != nil || got != q.want {
				t.Errorf("dig %s %s: %q (%v), want %q", proto, q.name, got, err, q.want)
			}
		}
	}
}

func TestOpenconnectWrongPassword(t *testing.T) {
	e := startE2E(t)
	o := e.opts(testenv.ModeOcproxy)
	o.Password = "wrong"
	o.Timeout = 15 * time.Second
	s, err := testenv.TryOpenconnect(t, e.tp.Client, o)
	if err == nil {
		s.Close()
		t.Fatal("connected with a wrong password")
	}
	if !strings.Contains(err.Error(), "Login failed") {
		t.Errorf("openconnect did not show the reason:\n%v", err)
	}
	if !strings.Contains(e.gw.Output(), "sign-in failed") || strings.Contains(e.gw.Output(), "op=connect") {
		t.Errorf("gateway log:\n%s", e.gw.Tail(20))
	}
}
