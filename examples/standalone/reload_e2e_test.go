package main

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// waitLog waits until the gateway's output contains s.
func (e *e2e) waitLog(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second) // a reload takes milliseconds
	for !strings.Contains(e.gw.Output(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("gateway log never showed %q:\n%s", s, e.gw.Tail(30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReloadKeepsSession: SIGHUP applies an edited config without dropping
// the live openconnect session; a new session gets the new route and
// banner; a restart-only change is reported; an invalid edit is refused
// and the running configuration kept. Also: QUIC listens on the same port.
func TestReloadKeepsSession(t *testing.T) {
	e := startE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := e.tp.GW.Exec(ctx, "ss", "-Hlnu").CombinedOutput(); err != nil || !strings.Contains(string(out), gwListen) {
		t.Errorf("no UDP (QUIC) listener on %s: %v\n%s", gwListen, err, out)
	}
	s1 := testenv.Openconnect(t, e.tp.Client, e.opts(testenv.ModeOcproxy))
	if body, err := testenv.CurlViaSocks(ctx, e.tp.Client, s1.SocksPort, e.web+"/"); err != nil || body != testenv.CorpPage {
		t.Fatalf("before reload: %q, %v", body, err)
	}

	// The admin listener (gateway side, loopback) reports the session.
	if out, err := e.tp.GW.Exec(ctx, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9444/metrics").Output(); err != nil ||
		!strings.Contains(string(out), "underpass_sessions_connected 1") || !strings.Contains(string(out), "underpass_sign_ins_total 1") {
		t.Errorf("/metrics: %v\n%s", err, out)
	}
	if out, err := e.tp.GW.Exec(ctx, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9444/readyz").Output(); err != nil ||
		!strings.Contains(string(out), `"ready":true`) {
		t.Errorf("/readyz: %v %s", err, out)
	}

	if out, err := e.tp.GW.Exec(ctx, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9444/").Output(); err != nil ||
		!strings.Contains(string(out), "Underpass gateway") || !strings.Contains(string(out), `id="data"`) {
		t.Errorf("status page: %v\n%.300s", err, out)
	}

	doc := strings.Replace(e.doc, "split_include: [198.19.0.0/24]", "split_include: [198.19.0.0/24, 198.19.7.0/24]", 1)
	doc = strings.Replace(doc, "log: {level: debug}", "log: {level: debug, access: 1}\nbanner: reloaded\npool: 169.254.0.0/17", 1)
	if err := os.WriteFile(e.cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.gw.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	e.waitLog(t, "reload: applied")
	e.waitLog(t, "take effect only after a restart")
	if out := e.gw.Output(); !strings.Contains(out, "pool") || !strings.Contains(out, "split_include") {
		t.Errorf("reload log lacks the changed settings:\n%s", e.gw.Tail(10))
	}
	// The live session survived and still works (and is now access-logged).
	if body, err := testenv.CurlViaSocks(ctx, e.tp.Client, s1.SocksPort, e.web+"/"); err != nil || body != testenv.CorpPage {
		t.Fatalf("live session after reload: %q, %v\n%s", body, err, e.gw.Tail(20))
	}
	e.waitLog(t, "msg=access")
	if err := s1.Close(); err != nil {
		t.Errorf("disconnect: %v", err)
	}
	// A new session is pushed the new route and banner.
	s2 := testenv.Openconnect(t, e.tp.Client, e.opts(testenv.ModeTun))
	env := s2.Env()
	if !strings.Contains(envValues(env, "CISCO_SPLIT_INC_"), "198.19.7.0") || env["CISCO_BANNER"] != "reloaded" {
		t.Errorf("new session: banner %q, split includes %q", env["CISCO_BANNER"], envValues(env, "CISCO_SPLIT_INC_"))
	}
	// An invalid edit is refused; the running configuration stays.
	if err := os.WriteFile(e.cfg, []byte(doc+"mtu: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.gw.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	e.waitLog(t, "configuration rejected; keeping the running one")
	if body, err := testenv.Curl(ctx, e.tp.Client, e.web+"/"); err != nil || body != testenv.CorpPage {
		t.Errorf("after a rejected reload: %q, %v", body, err)
	}
	// An edit alone (no signal) is picked up by the file watcher.
	if err := os.WriteFile(e.cfg, []byte(strings.Replace(doc, "banner: reloaded", "banner: watched", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	e.waitLog(t, "reload: the config file changed")
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(e.gw.Output(), `msg="reload: applied"`) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the watched edit was not applied:\n%s", e.gw.Tail(10))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if s := e.gw.Output(); !strings.Contains(s[strings.LastIndex(s, `msg="reload: applied"`):], "banner") {
		t.Errorf("the watched edit did not apply the banner:\n%s", e.gw.Tail(5))
	}
}

// envValues joins the values of every variable whose name starts with prefix.
func envValues(env map[string]string, prefix string) string {
	var vs []string
	for k, v := range env {
		if strings.HasPrefix(k, prefix) {
			vs = append(vs, v)
		}
	}
	return strings.Join(vs, " ")
}
