package testenv

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// This file proves the openconnect driver against a known-good AnyConnect
// server, the real ocserv, before Underpass's own gateway exists: both client
// modes, cookie sign-in, SIGHUP keeping the session, and a wrong password.

const (
	ocUser = "alice"
	ocPass = "correct horse"
)

// ocPool is ocserv's client address pool (test range, outside the topology's links).
var ocPool = netip.MustParsePrefix("198.18.100.0/24")

type ocservEnv struct {
	tp   *Topo
	base string // corp HTTP base URL
	opts OCOptions
}

func startOcserv(t *testing.T) *ocservEnv {
	t.Helper()
	RequireRoot(t)
	RequireTool(t, "ocserv", "ocpasswd", "openconnect", "ocproxy", "curl", "ip", "iptables")
	tp := Topology(t)
	base := tp.ServeHTTP(t, 8080)
	cert := NewCert(t, GWAddr.String())
	tp.EnableForwarding(t, ocPool) // ocserv is a kernel-tun gateway: it routes + NATs

	// ocserv's unix socket paths must stay under 108 bytes: use a short dir,
	// world-readable for its unprivileged workers.
	dir, err := os.MkdirTemp("", "ocs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	passwd := filepath.Join(dir, "passwd")
	cmd := tp.GW.Exec(context.Background(), "ocpasswd", "-c", passwd, ocUser)
	cmd.Stdin = strings.NewReader(ocPass + "\n" + ocPass + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ocpasswd: %v %s", err, out)
	}
	if err := os.Chmod(passwd, 0o644); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "ocserv.conf")
	mask := net.CIDRMask(ocPool.Bits(), 32)
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`auth = "plain[passwd=%[1]s/passwd]"
listen-host = %[2]s
tcp-port = 443
run-as-user = nobody
run-as-group = nogroup
socket-file = %[1]s/sock
occtl-socket-file = %[1]s/occtl
use-occtl = false
pid-file = %[1]s/pid
server-cert = %[3]s
server-key = %[4]s
isolate-workers = false
max-clients = 16
max-same-clients = 0
rate-limit-ms = 0
max-ban-score = 0
keepalive = 32400
dpd = 90
mobile-dpd = 1800
try-mtu-discovery = false
auth-timeout = 240
min-reauth-time = 1
cookie-timeout = 300
deny-roaming = false
rekey-time = 172800
rekey-method = ssl
device = vpns
predictable-ips = true
ipv4-network = %[5]s
ipv4-netmask = %[6]s
route = %[7]s/255.255.255.0
dns = 198.19.0.53
default-domain = corp.test
banner = "testenv banner"
ping-leases = false
cisco-client-compat = true
compression = false
`, dir, GWAddr, cert.CertFile, cert.KeyFile, ocPool.Addr(), net.IP(mask), CorpNet.Addr())), 0o644); err != nil {
		t.Fatal(err)
	}
	p := tp.GW.Start(t, "ocserv", "-f", "-d", "1", "-c", conf)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // ocserv starts in < 1 s
	defer cancel()
	if err := tp.GW.WaitTCP(ctx, net.JoinHostPort(GWAddr.String(), "443"), p); err != nil {
		t.Fatal(err)
	}
	return &ocservEnv{tp: tp, base: base, opts: OCOptions{
		Server: net.JoinHostPort(GWAddr.String(), "443"), ServerCertPin: cert.Pin,
		User: ocUser, Password: ocPass,
	}}
}

func (e *ocservEnv) fetch(t *testing.T, s *OCSession) {
	t.Helper()
	var body string
	var err error
	if s.Mode == ModeOcproxy {
		body, err = CurlViaSocks(testCtx(t), s.NS, s.SocksPort, e.base+"/")
	} else {
		body, err = Curl(testCtx(t), s.NS, e.base+"/")
	}
	if err != nil || body != CorpPage {
		t.Fatalf("fetch corp page through %s tunnel: %q, %v\nopenconnect log:\n%s", s.Mode, body, err, tail(s.Log(), 30))
	}
}

func TestOcservDriver(t *testing.T) {
	t.Parallel()
	e := startOcserv(t)
	for _, mode := range []string{ModeTun, ModeOcproxy} {
		t.Run(mode, func(t *testing.T) {
			opts := e.opts
			opts.Mode = mode
			t0 := time.Now()
			s := Openconnect(t, e.tp.Client, opts)
			t.Logf("%s: connected in %v", mode, time.Since(t0))
			env := s.Env()
			addr, err := netip.ParseAddr(env["INTERNAL_IP4_ADDRESS"])
			if err != nil || !ocPool.Contains(addr) {
				t.Errorf("INTERNAL_IP4_ADDRESS = %q, want in %v", env["INTERNAL_IP4_ADDRESS"], ocPool)
			}
			if env["CISCO_SPLIT_INC"] != "1" || env["CISCO_SPLIT_INC_0_ADDR"] != CorpNet.Addr().String() {
				t.Errorf("split include env: %q %q", env["CISCO_SPLIT_INC"], env["CISCO_SPLIT_INC_0_ADDR"])
			}
			if env["INTERNAL_IP4_DNS"] != "198.19.0.53" || env["CISCO_DEF_DOMAIN"] != "corp.test" {
				t.Errorf("dns env: %q %q", env["INTERNAL_IP4_DNS"], env["CISCO_DEF_DOMAIN"])
			}
			if !strings.Contains(env["CISCO_BANNER"], "testenv banner") {
				t.Errorf("CISCO_BANNER = %q", env["CISCO_BANNER"])
			}
			e.fetch(t, s)
			if mode == ModeTun {
				// SIGUSR2: reconnect with the cookie, same address, tunnel works again.
				if err := s.Reconnect(); err != nil {
					t.Fatal(err)
				}
				if err := s.WaitScriptReason("reconnect", 1, 20*time.Second); err != nil {
					t.Fatal(err)
				}
				if got := s.Env()["INTERNAL_IP4_ADDRESS"]; got != addr.String() {
					t.Errorf("address after reconnect %q, want %v", got, addr)
				}
				e.fetch(t, s)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if mode == ModeTun {
				if got := strings.Join(s.ScriptReasons(), " "); got != "pre-init connect attempt-reconnect reconnect disconnect" {
					t.Errorf("script reasons = %v", got)
				}
			}
		})
	}
}

func TestOcservCookieAndKeepSession(t *testing.T) {
	t.Parallel()
	e := startOcserv(t)
	cookie, err := Authenticate(t, e.tp.Client, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	opts := e.opts
	opts.Cookie, opts.Mode = cookie, ModeOcproxy
	s := Openconnect(t, e.tp.Client, opts)
	e.fetch(t, s)
	// SIGHUP keeps the session: the same cookie connects again.
	if err := s.CloseKeepSession(); err != nil {
		t.Fatal(err)
	}
	s = Openconnect(t, e.tp.Client, opts)
	e.fetch(t, s)
	// SIGINT logs off: the cookie is dead afterwards.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	opts.Timeout = 10 * time.Second // a rejected cookie fails in well under a second
	if s, err := TryOpenconnect(t, e.tp.Client, opts); err == nil {
		t.Fatalf("cookie still valid after log-off; log:\n%s", s.Log())
	} else {
		t.Logf("reuse after log-off fails as expected: %.200s", err)
	}
}

func TestOcservWrongPassword(t *testing.T) {
	t.Parallel()
	e := startOcserv(t)
	opts := e.opts
	opts.Password = "wrong"
	opts.Timeout = 15 * time.Second // ocserv delays a failed login by about a second
	if _, err := TryOpenconnect(t, e.tp.Client, opts); err == nil {
		t.Fatal("connected with a wrong password")
	}
	if _, err := Authenticate(t, e.tp.Client, opts); err == nil {
		t.Fatal("--authenticate succeeded with a wrong password")
	}
}
