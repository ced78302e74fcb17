package admin

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/underpass/underpass/internal/daemon/fdlimit"
	"github.com/underpass/underpass/internal/testinfra/gwtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

func TestSocketPermissionsAndStaleSocket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "admin.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v (%v)", p, fi.Mode().Perm(), want, err)
		}
	}
	// A second server on the same live socket is refused.
	if _, err := Listen(path); !errors.Is(err, ErrRunning) {
		t.Errorf("second Listen: %v, want ErrRunning", err)
	}
	// A stale socket (its server gone) is replaced. Keep the file: Go
	// removes a unix socket's file on Close unless told otherwise.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l2, err := Listen(path)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	l2.Close()
	// Something that is not a socket is left alone.
	os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o600)
	if _, err := Listen(filepath.Join(dir, "file")); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v", err)
	}
}

func TestAPI(t *testing.T) {
	gw := gwtest.Start(t, nil)
	path := filepath.Join(t.TempDir(), "admin.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan time.Duration, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, l, &Backend{Gateway: gw.Gateway, Started: time.Now(), Stop: func(d time.Duration) { stopped <- d }})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	c := NewClient(path)
	var st Status
	if err := c.Do("GET", "/v1/status", nil, &st); err != nil || !st.Ready || st.Sessions != 0 {
		t.Errorf("status %+v %v", st, err)
	}
	if lim, err := fdlimit.Get(); err != nil || st.FDs != lim || st.FDs.Soft == 0 || st.OpenFDs <= 0 {
		t.Errorf("status descriptors: limits %+v (getrlimit says %+v, %v), %d open", st.FDs, lim, err, st.OpenFDs)
	}
	var se *StatusError
	for _, tc := range []struct {
		method, path string
		body         any
		code         int
	}{
		{"GET", "/v1/sessions/nope", nil, 404},
		{"GET", "/v1/site/sessions", nil, 409}, // no site store here
		{"POST", "/v1/sessions/nope/disconnect", nil, 404},
		{"POST", "/v1/cert", ImportRequest{CertPEM: []byte("x")}, 501}, // no certificate store here
		{"GET", "/v1/nothing", nil, 404},
		{"GET", "/v1/site", nil, 501},                 // no site store here
		{"POST", "/v1/bans/not-an-ip/lift", nil, 400}, // an address is required
	} {
		err := c.Do(tc.method, tc.path, tc.body, nil)
		if !errors.As(err, &se) || se.Code != tc.code {
			t.Errorf("%s %s: %v, want %d", tc.method, tc.path, err, tc.code)
		}
	}
	var ev []any
	if err := c.Do("GET", "/v1/events", nil, &ev); err != nil || ev == nil {
		t.Errorf("events without a ring: %v %v", ev, err)
	}
	req, _ := http.NewRequest("POST", "http://underpass/v1/cert", strings.NewReader("{not json"))
	resp, err := c.hc.Do(req)
	if err != nil || resp.StatusCode != 501 {
		t.Errorf("bad body: %v %v", resp, err)
	}
	if resp != nil {
		resp.Body.Close()
	}
	if err := c.Do("POST", "/v1/stop?timeout=3s", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-stopped:
		if d != 3*time.Second {
			t.Errorf("stop timeout %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Error("stop not called")
	}
	// No server: a clear ErrNotRunning.
	if err := NewClient(filepath.Join(t.TempDir(), "none.sock")).Do("GET", "/v1/status", nil, nil); !errors.Is(err, ErrNotRunning) {
		t.Errorf("no server: %v", err)
	}
}
