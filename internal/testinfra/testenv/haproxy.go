package testenv

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// HAProxy starts the Debian haproxy in ns with config (a haproxy.cfg body)
// and waits until it accepts connections on listen. The config is checked
// first (haproxy -c), so a mistake fails with haproxy's own message. The
// process runs in the foreground mode (-db) and is stopped in t.Cleanup;
// its log is printed when the test fails.
func HAProxy(t testing.TB, ns *Netns, config, listen string) *Proc {
	t.Helper()
	RequireTool(t, "haproxy")
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // haproxy -c takes milliseconds
	defer cancel()
	if out, err := ns.Exec(ctx, "haproxy", "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("testenv: haproxy config rejected: %v\n%s\n--- config:\n%s", err, out, config)
	}
	p := ns.Start(t, "haproxy", "-db", "-f", path)
	if err := ns.WaitTCP(ctx, listen, p); err != nil {
		t.Fatal(err)
	}
	return p
}
