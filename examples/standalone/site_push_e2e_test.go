package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// siteEtcd is where TestSiteConfigPush runs etcd: loopback in the gw
// namespace, where the gateways run.
const siteEtcd = "http://127.0.0.1:2379"

// startEtcdIn runs a single-member etcd on the gw namespace's loopback.
func startEtcdIn(t *testing.T, ns *testenv.Netns) {
	t.Helper()
	path, err := testenv.LookTool("etcd")
	if err != nil {
		t.Fatal(err)
	}
	const peer = "http://127.0.0.1:2380"
	p := ns.Start(t, path, "--name", "t", "--data-dir", t.TempDir(),
		"--listen-client-urls", siteEtcd, "--advertise-client-urls", siteEtcd,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "t="+peer, "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a single member elects itself in about a second
	defer cancel()
	if err := ns.WaitTCP(ctx, strings.TrimPrefix(siteEtcd, "http://"), p); err != nil {
		t.Fatalf("etcd did not listen: %v\n%s", err, p.Tail(20))
	}
}

// siteServerFile writes dir/underpass.yaml, the own file of site server
// name of site hq: listen, TLS, the site store on siteEtcd with its server
// configuration from there, the session key, and extra (more per-server
// keys, whole YAML lines).
func siteServerFile(t *testing.T, dir, name, listen string, cert *testenv.Cert, extra string) string {
	t.Helper()
	return writeFile(t, dir, "underpass.yaml", fmt.Sprintf(`listen: %q
%stls: {cert: %q, key: %q}
site:
  name: hq
  server_name: %s
  store: {endpoints: [%q], server_config: true}
identity:
  session_key: MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=
log: {level: debug}
`, listen, extra, cert.CertFile, cert.KeyFile, name, siteEtcd))
}

// TestSiteConfigPush ("Config push", issue 12): three underpass servers
// take their server configuration from the site store. One `underpass
// site push` of a new split route is enforced on all three, for the live
// openconnect sessions and new ones; an invalid push is refused with
// file:line and changes nothing.
func TestSiteConfigPush(t *testing.T) {
	bin, tp, web, cert, hash := e2eBase(t, "etcd")
	startEtcdIn(t, tp.GW)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute) // the whole test
	defer cancel()
	dir := t.TempDir()
	// The web server 198.19.0.2 is outside the first split route: the
	// gateways refuse flows to it. (The DNS servers are always routed, so
	// the site's DNS server is elsewhere.)
	siteDoc := fmt.Sprintf(`split_include: [198.19.7.0/24]
dns: [198.19.7.53]
dpd: 10s
users:
  - {name: alice, password_hash: %q}
`, hash)
	siteA := writeFile(t, dir, "site-a.yaml", siteDoc)
	siteB := writeFile(t, dir, "site-b.yaml", strings.Replace(siteDoc, "198.19.7.0/24", "198.19.0.0/24", 1))
	bad := writeFile(t, dir, "bad.yaml", strings.Replace(siteDoc, "dpd: 10s", "dpd: 10s\nmtu: 1", 1))
	// site runs `underpass site ARGS` in the gw namespace.
	site := func(args ...string) (string, int) {
		out, err := tp.GW.Exec(ctx, bin, append([]string{"site"}, args...)...).CombinedOutput()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return string(out), 0
		case errors.As(err, &ee):
			return string(out), ee.ExitCode()
		}
		t.Fatalf("underpass site %v: %v", args, err)
		return "", 0
	}

	type server struct {
		name, listen, local string
		proc                *testenv.Proc
	}
	var servers []*server
	for i := 1; i <= 3; i++ {
		sdir := filepath.Join(dir, fmt.Sprint("gw-", i))
		if err := os.Mkdir(sdir, 0o700); err != nil {
			t.Fatal(err)
		}
		s := &server{name: fmt.Sprint("gw-", i), listen: fmt.Sprintf("%s:%d", testenv.GWAddr, 442+i)}
		s.local = siteServerFile(t, sdir, s.name, s.listen, cert, "")
		servers = append(servers, s)
		if i == 1 {
			// The first site configuration, before any server starts.
			if out, code := site("push", "-config", s.local, siteA); code != 0 {
				t.Fatalf("first push: exit %d\n%s", code, out)
			}
		}
		cmd := tp.GW.Exec(context.Background(), bin, "serve", "-config", s.local, "-admin-socket", filepath.Join(sdir, "admin.sock"))
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+sdir)
		s.proc = tp.GW.StartCmd(t, cmd)
	}
	for _, s := range servers {
		if err := tp.GW.WaitTCP(ctx, s.listen, s.proc); err != nil {
			t.Fatalf("%s did not listen: %v\n%s", s.name, err, s.proc.Tail(20))
		}
	}
	opts := func(s *server) testenv.OCOptions {
		return testenv.OCOptions{Server: s.listen, ServerCertPin: cert.Pin, User: "alice", Password: "alice-pw"}
	}
	// One live session per server; the site's first route keeps the web
	// server out of reach.
	live := map[*server]*testenv.OCSession{}
	for _, s := range servers {
		oc := testenv.Openconnect(t, tp.Client, opts(s))
		live[s] = oc
		failsFast(t, s.name+": the web server before the push", 10*time.Second, func(ctx context.Context) (string, error) {
			return testenv.CurlViaSocks(ctx, tp.Client, oc.SocksPort, web+"/")
		})
	}

	// An invalid push: refused with file:line, and the store keeps the
	// first configuration.
	out, code := site("push", "-config", servers[0].local, "-wait", bad)
	if code != exitConfig || !strings.Contains(out, bad+":4: mtu") {
		t.Fatalf("invalid push: exit %d, want %d with %s:4: mtu\n%s", code, exitConfig, bad, out)
	}
	if out, code := site("pull", "-config", servers[1].local); code != 0 || !strings.Contains(out, "198.19.7.0/24") || strings.Contains(out, "mtu") {
		t.Fatalf("pull after the invalid push: exit %d\n%s", code, out)
	}

	// The new route, pushed once through any server's config; -wait
	// returns when all three run it.
	out, code = site("push", "-config", servers[2].local, "-wait", "-timeout", "30s", siteB)
	if code != 0 {
		t.Fatalf("push: exit %d\n%s", code, out)
	}
	for _, s := range servers {
		if !strings.Contains(out, s.name+"\tapplied") {
			t.Errorf("push -wait does not report %s applied:\n%s", s.name, out)
		}
	}
	for _, s := range servers {
		// The live session may now reach the web server: every server
		// enforces the new route at once.
		if body, err := testenv.CurlViaSocks(ctx, tp.Client, live[s].SocksPort, web+"/"); err != nil || body != testenv.CorpPage {
			t.Errorf("%s: live session after the push: %q, %v\n%s", s.name, body, err, s.proc.Tail(10))
		}
		// A new session is pushed the new route.
		oc := testenv.Openconnect(t, tp.Client, opts(s))
		if inc := strings.Fields(envValues(oc.Env(), "CISCO_SPLIT_INC_")); !slices.Contains(inc, "198.19.0.0") || slices.Contains(inc, "198.19.7.0") {
			t.Errorf("%s: a new session's split includes: %q", s.name, inc)
		}
		if !strings.Contains(s.proc.Output(), "site configuration applied") {
			t.Errorf("%s: no 'site configuration applied' in its log", s.name)
		}
	}
}
