package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// TestServerStopDrainDelay: `underpass server stop` turns /readyz to 503
// at once while the VPN port still accepts for drain_delay; then the
// server stops accepting and exits.
func TestServerStopDrainDelay(t *testing.T) {
	bin := testenv.BuildBinary(t, "./examples/standalone")
	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	cfg := writeFile(t, dir, "gw.yaml", fmt.Sprintf("listen: %q\ndisable_udp: true\nadmin_http: %q\ndrain_delay: 3s\n", listen, admin))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // the whole test
	defer cancel()
	srv := startServe(ctx, t, bin, cfg, dir)
	if err := srv.waitListen(ctx, listen); err != nil {
		t.Fatal(err)
	}
	readyz := func() int {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if c := readyz(); c != http.StatusOK {
		t.Fatalf("/readyz before the stop: %d", c)
	}
	if code, out, errs := runCLI("server", "stop", "-admin-socket", filepath.Join(dir, "admin.sock")); code != exitOK {
		t.Fatalf("server stop: exit %d\n%s%s", code, out, errs)
	}
	deadline := time.Now().Add(2 * time.Second) // well inside the 3 s delay
	for readyz() != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatalf("/readyz did not turn 503:\n%s", srv.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Still accepting: the balancer may still send a client here.
	c, err := net.DialTimeout("tcp", listen, time.Second)
	if err != nil {
		t.Fatalf("the VPN port refused during the drain delay: %v", err)
	}
	c.Close()
	select {
	case <-srv.exited:
		srv.exited <- nil
	case <-ctx.Done():
		t.Fatal("the server did not exit after its drain")
	}
	if out := srv.output(); !strings.Contains(out, "clients are told to reconnect after the drain delay") {
		t.Fatalf("no drain log:\n%s", out)
	}
}
