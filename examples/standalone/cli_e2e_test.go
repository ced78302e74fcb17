package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/internal/daemon/admin"
	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel"
)

// ctl runs the underpass CLI against e's server and returns stdout,
// stderr and the exit code.
func (e *e2e) ctl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, append(args, "-admin-socket", e.sock)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// servedSubject dials the gateway from the client namespace and returns
// the CN of the certificate a new handshake gets.
func (e *e2e) servedSubject(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.tp.Client.Dial(ctx, "tcp", gwListen)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	defer tc.Close()
	if err := tc.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	return tc.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// TestOperatorCLI drives every operator command against a running server with a
// live openconnect session, then drains it with `server stop`.
func TestOperatorCLI(t *testing.T) {
	e := startE2E(t)
	s := testenv.Openconnect(t, e.tp.Client, e.opts(testenv.ModeOcproxy))

	out, _, code := e.ctl(t, "status")
	if code != 0 || !strings.Contains(out, "1 connected") || !strings.Contains(out, "open, limit") {
		t.Errorf("status: %d\n%s", code, out)
	}
	var st admin.Status
	out, _, _ = e.ctl(t, "status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Connected != 1 || !st.Ready || st.Certificate.Pin != e.cert.Pin {
		t.Errorf("status --json: %v %+v", err, st)
	}
	// The server runs with its soft descriptor limit raised to the hard one.
	if st.FDs.Soft == 0 || st.FDs.Soft != st.FDs.Hard || st.OpenFDs <= 0 {
		t.Errorf("status --json descriptors: limits %+v, %d open", st.FDs, st.OpenFDs)
	}
	var ss []tunnel.SessionInfo
	out, _, _ = e.ctl(t, "show", "sessions", "--json")
	if err := json.Unmarshal([]byte(out), &ss); err != nil || len(ss) != 1 || ss[0].User != "alice" {
		t.Fatalf("show sessions --json: %v %s", err, out)
	}
	id := ss[0].ID
	if out, _, code := e.ctl(t, "show", "sessions"); code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "alice") {
		t.Errorf("show sessions: %d %s", code, out)
	}
	var one tunnel.SessionInfo
	out, _, _ = e.ctl(t, "show", "session", id, "--json")
	if err := json.Unmarshal([]byte(out), &one); err != nil || one.ID != id || !one.Address.IsValid() {
		t.Errorf("show session --json: %v %s", err, out)
	}
	if out, _, code := e.ctl(t, "show", "session", id); code != 0 || !strings.Contains(out, one.Address.String()) {
		t.Errorf("show session: %d %s", code, out)
	}
	var users []admin.User
	out, _, _ = e.ctl(t, "show", "users", "--json")
	if err := json.Unmarshal([]byte(out), &users); err != nil || len(users) != 1 || users[0].User != "alice" || users[0].Sessions != 1 {
		t.Errorf("show users --json: %v %s", err, out)
	}
	if out, _, code := e.ctl(t, "show", "bans", "--json"); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("show bans --json: %d %s", code, out)
	}
	if out, _, code := e.ctl(t, "show", "events"); code != 0 || !strings.Contains(out, "telemetry") || !strings.Contains(out, "op=connect") {
		t.Errorf("show events: %d %s", code, out)
	}
	if _, errOut, code := e.ctl(t, "show", "session", "nope"); code != exitNotFound || !strings.Contains(errOut, "no session") {
		t.Errorf("unknown session: exit %d %s", code, errOut)
	}
	if _, _, code := e.ctl(t, "show", "nonsense"); code != exitUsage {
		t.Errorf("bad command: exit %d", code)
	}

	// disconnect: the client is logged off and openconnect exits.
	if out, _, code := e.ctl(t, "disconnect", id); code != 0 || !strings.Contains(out, id) {
		t.Errorf("disconnect: %d %s", code, out)
	}
	select {
	case <-s.Done():
	case <-time.After(15 * time.Second):
		t.Error("openconnect still running after disconnect")
	}
	if _, _, code := e.ctl(t, "disconnect", id); code != exitNotFound {
		t.Errorf("second disconnect: exit %d, want %d", code, exitNotFound)
	}

	// import-cert: at once, then staged with a delay.
	dir := t.TempDir()
	newCert := func(cn string) (string, string) {
		c, k, err := certutil.SelfSigned([]string{cn, testenv.GWAddr.String()}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		cf, kf := filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
		os.WriteFile(cf, c, 0o600)
		os.WriteFile(kf, k, 0o600)
		return cf, kf
	}
	// A live session rides through the rotation.
	live := testenv.Openconnect(t, e.tp.Client, e.opts(testenv.ModeOcproxy))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cf, kf := newCert("rotated.example")
	if out, errOut, code := e.ctl(t, "import-cert", "--cert", cf, "--key", kf); code != 0 {
		t.Fatalf("import-cert: %d %s %s", code, out, errOut)
	}
	if got := e.servedSubject(t); got != "rotated.example" {
		t.Errorf("after import-cert the gateway serves %q", got)
	}
	if body, err := testenv.CurlViaSocks(ctx, e.tp.Client, live.SocksPort, e.web+"/"); err != nil || body != testenv.CorpPage {
		t.Errorf("live session after the rotation: %q, %v", body, err)
	}
	cf2, kf2 := newCert("later.example")
	if out, _, code := e.ctl(t, "import-cert", "--cert", cf2, "--key", kf2, "--delay", "60", "--json"); code != 0 || !strings.Contains(out, "later.example") {
		t.Errorf("delayed import-cert: %d %s", code, out)
	}
	out, _, _ = e.ctl(t, "status")
	if !strings.Contains(out, "staged certificate") || e.servedSubject(t) != "rotated.example" {
		t.Errorf("staged import served early or not shown:\n%s", out)
	}
	if _, errOut, code := e.ctl(t, "import-cert", "--cert", cf, "--key", kf2); code != exitUsage || !strings.Contains(errOut, "does not match") {
		t.Errorf("mismatched import: exit %d %s", code, errOut)
	}

	// server stop drains: the process exits 0 with its totals logged.
	if out, _, code := e.ctl(t, "server", "stop", "--timeout", "5s"); code != 0 || !strings.Contains(out, "draining") {
		t.Errorf("server stop: %d %s", code, out)
	}
	if err := e.gw.Wait(20 * time.Second); err != nil {
		t.Errorf("server after stop: %v\n%s", err, e.gw.Tail(10))
	}
	if log := e.gw.Output(); !strings.Contains(log, "underpass server stop") || !strings.Contains(log, "msg=stopped") ||
		!strings.Contains(log, "op=disconnect") {
		t.Errorf("drain log:\n%s", e.gw.Tail(15))
	}
	// Nothing runs now: every command says so with exit code 4.
	for _, args := range [][]string{{"status"}, {"show", "sessions"}, {"disconnect", id}, {"server", "stop"}} {
		if _, errOut, code := e.ctl(t, args...); code != exitNotRunning || !strings.Contains(errOut, "not running") {
			t.Errorf("%v without a server: exit %d %s", args, code, errOut)
		}
	}
}
