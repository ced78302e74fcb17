package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// TestStatusSiteAndBansLift: `underpass status --site` lists every server
// of the site with its state and version, flags a server that left as
// missing from the store, and says "store unavailable" when etcd is down;
// `underpass bans lift IP` on one server lifts a ban another server
// imposed, on both. Two real servers, a real etcd.
func TestStatusSiteAndBansLift(t *testing.T) {
	bin := testenv.BuildBinary(t, "./examples/standalone")
	e := testenv.StartEtcd(t)
	cert := testenv.NewCert(t, "127.0.0.1")
	hash, err := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // the whole test
	defer cancel()
	type server struct {
		name, dir, listen, sock string
		srv                     *served
	}
	start := func(name string) *server {
		s := &server{name: name, dir: filepath.Join(t.TempDir(), name), listen: freeAddr(t)}
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		s.sock = filepath.Join(s.dir, "admin.sock")
		cfg := writeFile(t, s.dir, "gw.yaml", fmt.Sprintf(`listen: %q
disable_udp: true
tls: {cert: %q, key: %q}
users:
  - {name: alice, password_hash: %q}
identity:
  bans: {threshold: 4, ban_for: 10m}
drain_delay: 8s
site:
  name: hq
  server_name: %s
  store: {endpoints: [%q]}
`, s.listen, cert.CertFile, cert.KeyFile, hash, name, e.Endpoint))
		s.srv = startServe(ctx, t, bin, cfg, s.dir)
		if err := s.srv.waitListen(ctx, s.listen); err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b := start("gw-a"), start("gw-b")
	// waitStatus waits until `status --site` on a prints every line of want.
	waitStatus := func(want ...string) string {
		t.Helper()
		var out, errs string
		for {
			var code int
			code, out, errs = runCLI("status", "--site", "-admin-socket", a.sock)
			out = squeeze(out)
			ok := code == exitOK
			for _, w := range want {
				ok = ok && strings.Contains(out, w)
			}
			if ok {
				return out
			}
			select {
			case <-ctx.Done():
				t.Fatalf("status --site never showed %q:\n%s%s", want, out, errs)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	out := waitStatus("store up", "gw-a up", "gw-b up")
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "gw-") && strings.Fields(line)[3] == "-" {
			t.Errorf("no version in %q", line)
		}
	}

	// Two wrong passwords at b ban this client (127.0.0.1) there, and the
	// ban reaches a through the store.
	for range 2 {
		c, err := tunnel.Dial(ctx, tunnel.ClientConfig{Server: b.listen, Transport: tunnel.TransportTLS,
			Username: "alice", Password: "wrong", PinSHA256: cert.Pin})
		if err == nil {
			c.Close()
			t.Fatal("a wrong password signed in")
		}
	}
	banned := func(s *server) bool {
		_, out, _ := runCLI("show", "bans", "-admin-socket", s.sock)
		return strings.Contains(out, "127.0.0.1")
	}
	for !banned(a) || !banned(b) {
		select {
		case <-ctx.Done():
			t.Fatalf("the ban did not reach both servers: a %v, b %v", banned(a), banned(b))
		case <-time.After(200 * time.Millisecond):
		}
	}
	// Lifted at a, it is lifted at b too.
	code, out, errs := runCLI("bans", "lift", "127.0.0.1", "-admin-socket", a.sock)
	if code != exitOK || !strings.Contains(out, "lifted here and on every server") {
		t.Fatalf("bans lift: exit %d\n%s%s", code, out, errs)
	}
	for banned(b) {
		select {
		case <-ctx.Done():
			t.Fatal("the lift at gw-a did not reach gw-b")
		case <-time.After(200 * time.Millisecond):
		}
	}
	if banned(a) {
		t.Fatal("gw-a still bans the client after lifting it")
	}
	if code, _, errs := runCLI("bans", "lift", "not-an-ip", "-admin-socket", a.sock); code != exitUsage || !strings.Contains(errs, "not an IP address") {
		t.Fatalf("bans lift not-an-ip: exit %d: %s", code, errs)
	}

	// b drains, then leaves: a lists it as draining, then as missing from
	// the store. (The drain delay outlasts b's next health announcement,
	// 3 s away at most.)
	if err := b.srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitStatus("gw-a up", "gw-b draining")
	b.srv.stop(t)
	waitStatus("gw-a up", "gw-b missing from the store")

	// etcd down: the store is unavailable, and the servers' states unknown.
	e.Stop()
	waitStatus("store unavailable", "gw-a unknown", "gw-b unknown")
}

// squeeze collapses each line's runs of blanks (tabwriter's padding) to
// one space.
func squeeze(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}
