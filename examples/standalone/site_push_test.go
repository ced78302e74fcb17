package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/daemon/config"
	"github.com/underpass/underpass/internal/daemon/sitestore"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel/site"
)

// writeFile writes doc to name in dir and returns its path.
func writeFile(t *testing.T, dir, name, doc string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSitePushPull: `underpass site push` validates (file:line errors,
// nothing written), refuses a configuration an older live server cannot
// read, writes with a compare-and-swap, and `site pull` gives the
// document back byte for byte. Real etcd; the command code in process.
func TestSitePushPull(t *testing.T) {
	e := testenv.StartEtcd(t)
	dir := t.TempDir()
	local := writeFile(t, dir, "gw.yaml", fmt.Sprintf("site:\n  name: hq\n  store: {endpoints: [%q], server_config: true}\n", e.Endpoint))
	st, err := sitestore.New(sitestore.Config{Endpoints: []string{e.Endpoint}, Prefix: "/underpass/hq/"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pulled := func() string {
		t.Helper()
		code, out, errs := runCLI("site", "pull", "-config", local)
		if code != exitOK {
			t.Fatalf("site pull: exit %d: %s", code, errs)
		}
		return out
	}

	if code, _, errs := runCLI("site", "pull", "-config", local); code != exitNotFound || !strings.Contains(errs, "no site configuration") {
		t.Fatalf("pull from an empty store: exit %d: %s", code, errs)
	}
	good := "# the site's settings\npool: 10.9.0.0/16\nsplit_include: [198.19.0.0/24]\n"
	goodFile := writeFile(t, dir, "site.yaml", good)
	if code, out, errs := runCLI("site", "push", "-config", local, "-wait", goodFile); code != exitOK || !strings.Contains(out, "hash "+config.Hash([]byte(good))) ||
		!strings.Contains(out, "no live server") {
		t.Fatalf("push: exit %d\n%s%s", code, out, errs)
	}
	if got := pulled(); got != good {
		t.Fatalf("pulled %q, want %q", got, good)
	}
	cur, err := st.GetConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Refused pushes write nothing.
	refused := []struct {
		name, doc string
		code      int
		want      []string
	}{
		{"invalid", "pool: 10.9.0.0/16\nmtu: 1\n", exitConfig, []string{"bad.yaml:2: mtu"}},
		{"per-server key", "banner: hi\nlisten: 0.0.0.0:443\n", exitConfig, []string{"bad.yaml:2: listen: a per-server key"}},
		{"session key", "identity:\n  session_key: MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=\n", exitConfig, []string{"bad.yaml:2: identity.session_key: the session key stays out of the store"}},
		{"unknown key", "split_includes: [10.0.0.0/8]\n", exitConfig, []string{"bad.yaml: line 1: field split_includes not found"}},
	}
	for _, tt := range refused {
		bad := writeFile(t, dir, "bad.yaml", tt.doc)
		code, out, errs := runCLI("site", "push", "-config", local, bad)
		if code != tt.code {
			t.Errorf("%s: exit %d, want %d\n%s%s", tt.name, code, tt.code, out, errs)
		}
		for _, w := range tt.want {
			if !strings.Contains(errs, strings.ReplaceAll(w, "bad.yaml", bad)) {
				t.Errorf("%s: stderr lacks %q:\n%s", tt.name, w, errs)
			}
		}
	}
	if got := pulled(); got != good {
		t.Fatalf("after refused pushes the store holds %q", got)
	}

	// A live server that reads schema 1 cannot read drain_delay (schema 2):
	// refused, nothing written; once it is gone (upgraded) the push passes.
	newer := writeFile(t, dir, "newer.yaml", good+"drain_delay: 4s\n")
	old := site.Health{Server: "gw-old", Version: "v0.9", ConfigSchema: 1, Started: time.Now(), Updated: time.Now()}
	if err := st.Announce(ctx, old); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runCLI("site", "push", "-config", local, newer)
	if code != exitConfig || !strings.Contains(errs, "gw-old (version v0.9, schema 1)") || !strings.Contains(errs, "drain_delay") {
		t.Fatalf("push past an old server: exit %d\n%s%s", code, out, errs)
	}
	if got := pulled(); got != good {
		t.Fatalf("after the refused push the store holds %q", got)
	}
	if err := st.Withdraw(ctx, "gw-old"); err != nil {
		t.Fatal(err)
	}
	if code, out, errs := runCLI("site", "push", "-config", local, newer); code != exitOK {
		t.Fatalf("push after the upgrade: exit %d\n%s%s", code, out, errs)
	}

	// Compare-and-swap: a push based on a revision that is no longer the
	// store's is refused.
	stale := writeFile(t, dir, "stale.yaml", good+"banner: stale\n")
	code, out, errs = runCLI("site", "push", "-config", local, "-revision", fmt.Sprint(cur.Revision), stale)
	if code != exitFail || !strings.Contains(errs, "changed while pushing") {
		t.Fatalf("stale push: exit %d\n%s%s", code, out, errs)
	}
	if got := pulled(); got != good+"drain_delay: 4s\n" {
		t.Fatalf("after the stale push the store holds %q", got)
	}

	// No store in the config file.
	plain := writeFile(t, dir, "plain.yaml", "pool: 10.9.0.0/16\n")
	if code, _, errs := runCLI("site", "push", "-config", plain, goodFile); code != exitConfig || !strings.Contains(errs, "no site.store") {
		t.Fatalf("push without site.store: exit %d: %s", code, errs)
	}
}

// TestSiteConfigServer: a server whose configuration comes from the
// store announces the one it runs; `site push -wait` reports a restart
// setting as "rolling restart required" and a configuration the server
// refuses (valid alone, not with its own file) as refused. The server
// caches the last good configuration and starts from that copy while the
// store is down; without a copy it refuses to start, saying why.
func TestSiteConfigServer(t *testing.T) {
	bin := testenv.BuildBinary(t, "./examples/standalone")
	e := testenv.StartEtcd(t)
	dir := t.TempDir()
	listen := freeAddr(t)
	local := writeFile(t, dir, "gw.yaml", fmt.Sprintf(`listen: %q
disable_udp: true
site:
  name: hq
  server_name: gw-a
  servers: 2
  store: {endpoints: [%q], server_config: true}
log: {level: debug}
`, listen, e.Endpoint))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // the whole test
	defer cancel()

	// Store down, no cached copy: no start.
	e.Stop()
	srv := startServe(ctx, t, bin, local, dir)
	select {
	case err := <-srv.exited:
		srv.exited <- err
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitConfig || !strings.Contains(srv.output(), "no site configuration to start with") {
			t.Fatalf("start without store or cache: %v\n%s", err, srv.output())
		}
	case <-ctx.Done():
		t.Fatal("underpass serve started without a site configuration")
	}

	e.Start()
	doc := "banner: cached\nsplit_include: [10.0.0.0/8]\n"
	if code, out, errs := runCLI("site", "push", "-config", local, writeFile(t, dir, "site.yaml", doc)); code != exitOK {
		t.Fatalf("push: exit %d\n%s%s", code, out, errs)
	}
	srv = startServe(ctx, t, bin, local, dir)
	if err := srv.waitListen(ctx, listen); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(dir, "underpass", "site-config.json")
	if fi, err := os.Stat(cache); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cache %s: %v (mode %v), want 0600", cache, err, fi)
	}
	// Its health record says it runs the pushed configuration.
	st, err := sitestore.New(sitestore.Config{Endpoints: []string{e.Endpoint}, Prefix: "/underpass/hq/"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for {
		hs, err := st.Servers(ctx)
		if err == nil && len(hs) == 1 && hs[0].Config == config.Hash([]byte(doc)) && hs[0].ConfigSchema == config.Schema && hs[0].Version != "" {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("health records %+v, %v: want gw-a running %s", hs, err, config.Hash([]byte(doc)))
		case <-time.After(200 * time.Millisecond):
		}
	}

	// A restart setting (mtu) is applied where it can be and reported.
	restart := writeFile(t, dir, "restart.yaml", "banner: restart\nsplit_include: [10.0.0.0/8]\nmtu: 1300\n")
	code, out, errs := runCLI("site", "push", "-config", local, "-wait", "-timeout", "30s", restart)
	if code != exitOK || !strings.Contains(out, "gw-a\tapplied; rolling restart required for mtu") || !strings.Contains(out, "rolling restart required: gw-a") {
		t.Fatalf("push of a restart setting: exit %d\n%s%s", code, out, errs)
	}
	// Valid alone, refused by the server: its two-server site does not
	// fit 200 sessions each in a /24.
	refused := writeFile(t, dir, "refused.yaml", "pool: 10.7.0.0/24\nlimits: {max_sessions: 200}\n")
	code, out, errs = runCLI("site", "push", "-config", local, "-wait", "-timeout", "30s", refused)
	if code != exitFail || !strings.Contains(out, "gw-a\trefused it:") || !strings.Contains(out, "fewer than 2 server(s)") {
		t.Fatalf("push the server refuses: exit %d\n%s%s", code, out, errs)
	}
	if !strings.Contains(srv.output(), "site configuration refused; keeping the running one") {
		t.Fatalf("the server did not log the refusal:\n%s", srv.output())
	}
	srv.stop(t)

	// Restarted, it refuses the store's configuration again, starts from
	// its cached copy and says so in its health record.
	srv = startServe(ctx, t, bin, local, dir)
	if err := srv.waitListen(ctx, listen); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(srv.output(), "the store's is refused; trying the cached copy") {
		t.Fatalf("start with a refused store configuration:\n%s", srv.output())
	}
	refusedHash := config.Hash([]byte("pool: 10.7.0.0/24\nlimits: {max_sessions: 200}\n"))
	for {
		hs, err := st.Servers(ctx)
		if err == nil && len(hs) == 1 && hs[0].Refused == refusedHash && strings.Contains(hs[0].ConfigError, "fewer than 2 server(s)") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("health records %+v, %v: want gw-a refusing %s", hs, err, refusedHash)
		case <-time.After(200 * time.Millisecond):
		}
	}
	srv.stop(t)

	// Store down: it starts from the cached copy (the last good one).
	e.Stop()
	srv = startServe(ctx, t, bin, local, dir)
	if err := srv.waitListen(ctx, listen); err != nil {
		t.Fatal(err)
	}
	if out := srv.output(); !strings.Contains(out, "starting with the cached copy") || !strings.Contains(out, "hash="+config.Hash([]byte("banner: restart\nsplit_include: [10.0.0.0/8]\nmtu: 1300\n"))) {
		t.Fatalf("start from the cache:\n%s", out)
	}
	srv.stop(t)
}

// freeAddr is a free loopback TCP address.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
