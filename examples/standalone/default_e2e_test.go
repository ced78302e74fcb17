package main

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// TestEmbeddedDefault follows the README: `underpass serve` with no flags,
// then the printed userspace openconnect command, then the printed curl.
// It runs in a namespace of its own, so 127.0.0.1:8443 is free.
func TestEmbeddedDefault(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "openconnect", "ocproxy", "curl")
	bin := testenv.BuildBinary(t, "./examples/standalone")
	ns := testenv.NewNetns(t, "demo")
	cmd := ns.Exec(context.Background(), bin, "serve")
	// A private config dir and no runtime dir: the certificate, the demo
	// password and the admin socket all land in the test's directory.
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir(), "XDG_RUNTIME_DIR=")
	gw := ns.StartCmd(t, cmd)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // first start generates a key and a bcrypt hash
	defer cancel()
	if err := ns.WaitTCP(ctx, defaultListen, gw); err != nil {
		t.Fatalf("default gateway did not listen on %s: %v\n%s", defaultListen, err, gw.Tail(20))
	}
	var banner string
	for ctx.Err() == nil && !strings.Contains(banner, "curl --socks5-hostname") {
		time.Sleep(50 * time.Millisecond) // the banner is printed right after listening
		banner = gw.Output()
	}
	m := regexp.MustCompile(`user: (\S+)  password: (\S+)`).FindStringSubmatch(banner)
	pin := regexp.MustCompile(`--servercert (pin-sha256:\S+)`).FindStringSubmatch(banner)
	url := regexp.MustCompile(`curl --socks5-hostname 127\.0\.0\.1:11080 (http://\S+)`).FindStringSubmatch(banner)
	if m == nil || pin == nil || url == nil || !strings.Contains(banner, `--script-tun --script "ocproxy -D 11080"`) {
		t.Fatalf("banner lacks the openconnect command:\n%s", banner)
	}
	s := testenv.Openconnect(t, ns, testenv.OCOptions{
		Server: defaultListen, ServerCertPin: pin[1], User: m[1], Password: m[2], Mode: testenv.ModeOcproxy,
	})
	body, err := testenv.CurlViaSocks(ctx, ns, s.SocksPort, url[1])
	if err != nil || !strings.Contains(body, "connected as demo from 169.254.0.") {
		t.Fatalf("demo page: %q, %v\n%s", body, err, gw.Tail(20))
	}
	if err := s.Close(); err != nil {
		t.Errorf("disconnect: %v", err)
	}
}
