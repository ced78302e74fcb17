package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/underpass/underpass/internal/core/certutil"
)

func TestCheckCert(t *testing.T) {
	dir := t.TempDir()
	c, k, _ := certutil.SelfSigned([]string{"vpn.example"}, time.Now())
	_, k2, _ := certutil.SelfSigned([]string{"other.example"}, time.Now())
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o600)
		return p
	}
	cf, kf, k2f := write("c.pem", c), write("k.pem", k), write("k2.pem", k2)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--cert", cf, "--key", kf, "--host", "vpn.example"}, 0, "warning: self-signed"},
		{[]string{"--cert", cf, "--key", kf, "--host", "portal.example"}, 1, "do not cover"},
		{[]string{"--cert", cf, "--key", k2f}, 1, "does not match"},
		{[]string{"--cert", cf}, 2, "needs"},
	} {
		var out, errb strings.Builder
		code := run(append([]string{"check", "cert"}, tc.args...), strings.NewReader(""), &out, &errb)
		if code != tc.code || !strings.Contains(out.String()+errb.String(), tc.want) {
			t.Errorf("check cert %v: exit %d\n%s%s", tc.args, code, out.String(), errb.String())
		}
	}
}

func TestCheckNetwork(t *testing.T) {
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	defer srv.Shutdown()
	var status = 200
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(status) }))
	defer web.Close()
	free, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := free.Addr().String()
	free.Close()
	dead, _ := net.ListenPacket("udp", "127.0.0.1:0")
	deadAddr := dead.LocalAddr().String()
	dead.Close()

	dir := t.TempDir()
	cfg := filepath.Join(dir, "u.yaml")
	writeCfg := func(dnsUp string) {
		doc := "listen: " + addr + "\ndns: [10.0.0.53]\nsearch_domains: [corp.example]\ndns_proxy: {upstreams: [\"" + dnsUp + "\"]}\nsite: {check_url: \"" + web.URL + "\"}\n"
		os.WriteFile(cfg, []byte(doc), 0o600)
	}
	writeCfg(pc.LocalAddr().String())
	var out strings.Builder
	if code := run([]string{"check", "network", "-config", cfg}, strings.NewReader(""), &out, &out); code != 0 || strings.Contains(out.String(), "FAIL") {
		t.Errorf("all good: exit %d\n%s", code, out.String())
	}
	// A busy port, a dead DNS server and a failing check URL.
	busy, _ := net.Listen("tcp", addr)
	defer busy.Close()
	writeCfg(deadAddr)
	status = 503
	out.Reset()
	code := run([]string{"check", "network", "-config", cfg}, strings.NewReader(""), &out, &out)
	if code != 1 || strings.Count(out.String(), "FAIL") != 3 {
		t.Errorf("failures: exit %d\n%s", code, out.String())
	}
}

// TestExampleConfig: the documented example loads as it is.
func TestExampleConfig(t *testing.T) {
	var out strings.Builder
	if code := run([]string{"check", "config", "underpass.example.yaml"}, strings.NewReader(""), &out, &out); code != 0 {
		t.Errorf("example config: exit %d\n%s", code, out.String())
	}
}
