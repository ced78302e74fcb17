package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/daemon/admin"
	"github.com/underpass/underpass/internal/daemon/sitestore"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel/site"
)

// TestServeSiteStore: `underpass serve` with site.store starts and serves
// while etcd is down, announces its health record once etcd is up, lists
// the site's sessions (another server's included) with `show sessions
// --site`, and withdraws its health record when stopped.
func TestServeSiteStore(t *testing.T) {
	bin := testenv.BuildBinary(t, "./examples/standalone")
	e := testenv.StartEtcd(t)
	e.Stop() // the server must start without its store
	dir := t.TempDir()
	listen := freeAddr(t)
	cfg := filepath.Join(dir, "underpass.yaml")
	doc := fmt.Sprintf(`listen: %q
disable_udp: true
site:
  name: hq
  server_name: gw-a
  store: {endpoints: [%q]}
log: {level: debug}
`, listen, e.Endpoint)
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // the whole test
	defer cancel()
	srv := startServe(ctx, t, bin, cfg, dir)
	if err := srv.waitListen(ctx, listen); err != nil {
		t.Fatalf("with etcd down: %v", err)
	}

	// Views say the store is unavailable (the admin API's 503: exit 1).
	out, err := exec.CommandContext(ctx, bin, "show", "sessions", "--site", "-admin-socket", filepath.Join(dir, "admin.sock")).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitFail || !strings.Contains(string(out), "site store unavailable") {
		t.Fatalf("show sessions --site with etcd down: %v\n%s", err, out)
	}

	e.Start()
	st, err := sitestore.New(sitestore.Config{Endpoints: []string{e.Endpoint}, Prefix: "/underpass/hq/"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	listed := func() bool {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		hs, err := st.Servers(c)
		return err == nil && len(hs) == 1 && hs[0].Server == "gw-a"
	}
	for !listed() {
		select {
		case <-ctx.Done():
			t.Fatal("the server's health record never appeared under /underpass/hq/servers/")
		case <-time.After(200 * time.Millisecond):
		}
	}
	checkSiteSessions(ctx, t, bin, filepath.Join(dir, "admin.sock"), st)
	// Stopped, it withdraws its record at once (not after the TTL).
	srv.stop(t)
	if listed() {
		t.Fatal("the stopped server's health record is still listed")
	}
}

// served is one `underpass serve` on the host (loopback) for a test.
type served struct {
	cmd     *exec.Cmd
	exited  chan error // its exit, once
	logPath string     // its stdout and stderr
}

// startServe runs `underpass serve -config cfg` with dir as its state
// directory; it is killed at the end of the test, and its output shown
// if the test failed.
func startServe(ctx context.Context, t *testing.T, bin, cfg, dir string) *served {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, "serve", "-config", cfg, "-admin-socket", filepath.Join(dir, "admin.sock"))
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+dir)
	s := &served{cmd: cmd, exited: make(chan error, 1), logPath: filepath.Join(dir, fmt.Sprintf("serve-%d.log", time.Now().UnixNano()))}
	logf, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		err := <-s.exited
		s.exited <- err
		if t.Failed() {
			t.Logf("underpass serve output:\n%s", s.output())
		}
	})
	return s
}

func (s *served) output() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// waitListen waits until the server accepts on listen; an exit first is
// an error.
func (s *served) waitListen(ctx context.Context, listen string) error {
	for {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-s.exited:
			s.exited <- err
			return fmt.Errorf("underpass serve exited (%v) before listening", err)
		case <-ctx.Done():
			return fmt.Errorf("underpass serve did not listen on %s", listen)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and waits for the exit.
func (s *served) stop(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s.exited:
		s.exited <- err // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatal("underpass serve did not exit on SIGTERM")
	}
}

// checkSiteSessions: a dual-stack session another server of the site
// leased (an IPv4 and an IPv6 lease) shows once in `underpass show
// sessions --site` (table and JSON) of this one.
func checkSiteSessions(ctx context.Context, t *testing.T, bin, sock string, st *sitestore.Store) {
	t.Helper()
	now := time.Now().Truncate(time.Second)
	l := site.Lease{Addr: netip.MustParseAddr("169.254.7.9"), Session: "sess-on-b", Server: "gw-b", User: "carol",
		Client: netip.MustParseAddr("198.51.100.4"), Since: now, Until: now.Add(time.Hour)}
	l6 := l
	l6.Addr = netip.MustParseAddr("fd7a:5c3e:11::9")
	for _, l := range []site.Lease{l6, l} {
		if err := st.ClaimLease(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) string {
		out, err := exec.CommandContext(ctx, bin, append(args, "-admin-socket", sock)...).CombinedOutput()
		if err != nil {
			t.Fatalf("underpass %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := run("show", "sessions", "--site")
	for _, want := range []string{"169.254.7.9", "fd7a:5c3e:11::9", "gw-b", "carol", "198.51.100.4", "sess-on-b"} {
		if !strings.Contains(out, want) {
			t.Fatalf("show sessions --site lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "sess-on-b"); n != 1 {
		t.Fatalf("show sessions --site lists the dual-stack session %d times:\n%s", n, out)
	}
	var ss []admin.SiteSession
	if out := run("show", "sessions", "--site", "--json"); json.Unmarshal([]byte(out), &ss) != nil || len(ss) != 1 ||
		ss[0].Address != l.Addr || ss[0].Address6 != l6.Addr || ss[0].Server != "gw-b" || ss[0].User != "carol" || !ss[0].Expires.Equal(l.Until) {
		t.Fatalf("show sessions --site --json: %s", out)
	}
}
