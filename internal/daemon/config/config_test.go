package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/tunnel"
)

const hash = "$2a$10$abcdefghijklmnopqrstuuN6tZtOcJ3F2PnFQ9pYc0kzIM5Z1X7xq"

func TestParseValid(t *testing.T) {
	c, err := Parse("gw.yaml", []byte(`
listen: "127.0.0.1:8443"
pool: 10.77.0.0/24
pool6: fd7a:5c3e:11::/64
dns: [10.0.0.53]
search_domains: [corp.example]
split_include: [198.19.0.0/24, 10.1.0.0/255.255.0.0]
split_exclude: [198.19.0.128/25]
mtu: 9000
dpd: 45s
idle_timeout: 30m
udp_idle_timeout: 3m
session_timeout: 2h
users:
  - {name: alice, password_hash: "`+hash+`", groups: [staff]}
log: {level: debug, format: json}
demo_page: false
`))
	if err != nil {
		t.Fatal(err)
	}
	tc := c.Tunnel
	if tc.ListenAddr != "127.0.0.1:8443" || tc.Pool.String() != "10.77.0.0/24" || tc.Pool6.String() != "fd7a:5c3e:11::/64" || tc.MTU != 9000 || tc.UDPIdleTimeout != 3*time.Minute ||
		tc.DPD != 45*time.Second || tc.IdleTimeout != 30*time.Minute || tc.SessionTimeout != 2*time.Hour ||
		len(tc.SplitInclude) != 2 || tc.SplitInclude[1].String() != "10.1.0.0/16" || len(tc.SplitExclude) != 1 ||
		len(c.Users) != 1 || c.Users[0].Groups[0] != "staff" || c.DemoPage || c.Log.Format != "json" {
		t.Fatalf("unexpected result: %+v", c)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string // each must appear in the error
	}{
		{"unknown key", "listne: x\n", []string{"line 1", "listne"}},
		{"bad duration", "dpd: soon\n", []string{"line 1", "not a duration"}},
		{"bad pool", "pool: 10.0.0.0/33\n", []string{"gw.yaml:1: pool"}},
		{"pool6 unparsable", "pool6: fd00::/129\n", []string{"gw.yaml:1: pool6"}},
		{"pool6 IPv4", "pool6: 10.1.0.0/16\n", []string{"gw.yaml:1: pool6", "must be an IPv6 prefix"}},
		{"pool6 host bits", "pool6: fd7a::5/64\n", []string{"gw.yaml:1: pool6", "did you mean fd7a::/64"}},
		{"pool6 link-local", "pool6: fe80::/64\n", []string{"gw.yaml:1: pool6", "link-local"}},
		{"pool6 too small", "pool6: fd7a::/127\n", []string{"gw.yaml:1: pool6", "/126"}},
		{"pool6 overlaps include", "pool6: fd7a::/64\nsplit_include: [fd00::/8]\n", []string{"gw.yaml:1: pool6", "overlaps include[0]"}},
		{"bad dns", "dns: [10.0.0.53, nope]\n", []string{"dns[1]", "nope"}},
		{"zero network include", "split_include: [0.0.0.0/0]\n", []string{"gw.yaml:1", "0.0.0.0"}},
		{"pool overlaps include", "pool: 10.0.0.0/16\nsplit_include: [10.0.0.0/8]\n", []string{"overlap"}},
		{"bad log level", "log: {level: loud}\n", []string{"gw.yaml:1: log", "loud"}},
		{"user without hash", "users: [{name: bob, password_hash: plain}]\n", []string{"bcrypt"}},
		{"duplicate user", "users: [{name: a, password_hash: \"" + hash + "\"}, {name: a, password_hash: \"" + hash + "\"}]\n", []string{"duplicate"}},
		{"cert without key", "tls: {cert: a.crt}\n", []string{"both cert and key"}},
		{"missing cert files", "tls: {cert: a.crt, key: a.key}\n", []string{"tls", "a.crt"}},
		{"mtu", "mtu: 100\n", []string{"gw.yaml:1: mtu"}},
		{"several at once", "mtu: 100\ndpd: 1ms\npool: 10.0.0.1/24\n", []string{"mtu", "dpd", "pool"}},
		{"not yaml", "{{{\n", []string{"gw.yaml"}},
		{"unknown key and a bad value, both listed", "bogus: 1\nmtu: 1\n", []string{"bogus", "gw.yaml:2: mtu"}},
		{"zero network exclude", "split_exclude: [0.0.0.0/8]\n", []string{"gw.yaml:1", "0.0.0.0"}},
		{"bad search domain", "search_domains: [ok.example, bad_domain]\n", []string{"gw.yaml:1: search_domains", "bad_domain"}},
		{"wrong type", "mtu: big\n", []string{"line 1", "big", "int"}},
		{"bad host_addrs", "host_addrs: [x]\n", []string{"host_addrs[0]"}},
		{"banner two lines", "banner: \"a\\nb\"\n", []string{"banner"}},
		{"negative idle timeout", "idle_timeout: -1s\n", []string{"idle_timeout"}},
		{"proxy inner wildcard", "proxy: {server: \"p.example:3128\", exclude: [\"con*oso.com\"]}\n", []string{"proxy.exclude[0]", "inner or trailing"}},
		{"proxy trailing wildcard", "proxy: {pac_url: \"http://w/p.pac\", exclude: [\"contoso.*\"]}\n", []string{"proxy.exclude[0]"}},
		{"proxy partial label", "proxy: {pac_url: \"http://w/p.pac\", exclude: [\"contos*.com\"]}\n", []string{"proxy.exclude[0]"}},
		{"proxy pac and server", "proxy: {pac_url: \"http://w/p.pac\", server: \"p:1\"}\n", []string{"not both"}},
		{"proxy bad pac scheme", "proxy: {pac_url: \"ftp://w/p.pac\"}\n", []string{"http or https"}},
		{"bad secret path", "secret_path: vpn\n", []string{"secret_path"}},
		{"bad dtls mode", "dtls: udp\n", []string{"gw.yaml:1: dtls", "auto, psk, legacy or off"}},
		{"bad dtls port", "dtls_port: 70000\n", []string{"gw.yaml:1: dtls_port"}},
		{"bad site check URL", "site: {check_url: \"gopher://x\"}\n", []string{"gw.yaml:1: site", "check_url"}},
		{"bad site host", "site: {host: \"*.example\"}\n", []string{"gw.yaml:1: site", "host"}},
		{"pfx and cert", "tls: {pfx: a.pfx, cert: a.crt, key: a.key}\n", []string{"pfx, or cert and key"}},
		{"bad extra roots dir", "tls: {extra_roots_dir: /nonexistent-roots}\n", []string{"extra_roots_dir"}},
		{"bad access level", "log: {access: 3}\n", []string{"access 3"}},
		{"bad admin_http", "admin_http: nope\n", []string{"gw.yaml:1: admin_http"}},
		{"negative max_sessions", "limits: {max_sessions: -1}\n", []string{"max_sessions"}},
		{"unknown health key", "health: {cpu: 1}\n", []string{"gw.yaml:1: health"}},
		{"too many rules", "split_include: [" + manyRules(501) + "]\n", []string{"500"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("gw.yaml", []byte(tt.doc))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("want *Error, got %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestTunnelProblemsInFileSpelling: problems tunnel.Config.Validate finds
// (as *tunnel.FieldError, named by Go fields) reach the operator in the
// file's spelling, with the line of the key, and no Go field name.
func TestTunnelProblemsInFileSpelling(t *testing.T) {
	tests := []struct {
		doc       string
		want      string
		forbidden string // the Go field name that must not show
	}{
		{"mtu: 100\n", "gw.yaml:1: mtu: 100 out of range", "MTU"},
		{"dns: [10.0.0.1]\nlimits: {max_sessions: -1}\n", "gw.yaml:2: limits.max_sessions: -1", "MaxSessions"},
		{"search_domains: [ok.example, bad_domain]\n", "gw.yaml:1: search_domains[1]: \"bad_domain\"", "SearchDomains"},
		{"split_include: [10.1.0.0/16, 0.0.0.0/1]\n", "gw.yaml:1: split_include[1] 0.0.0.0/1:", "SplitInclude"},
		{"dns: [10.0.0.1]\nsplit_include: [10.0.0.0/8, 127.0.0.0/8]\n",
			"gw.yaml:2: split_include[1] 127.0.0.0/8: loopback cannot be reached through the tunnel", "SplitInclude"},
		{"proxy: {server: \"proxy.corp.example:8080\", exclude: [ok.example, \"con*oso.com\"]}\n",
			"gw.yaml:1: proxy.exclude[1]: \"con*oso.com\"", "Proxy.Exclude"},
		{"dtls_port: 70000\n", "gw.yaml:1: dtls_port: 70000 out of range", "DTLSPort"},
		{"udp_idle_timeout: 10ms\n", "gw.yaml:1: udp_idle_timeout: 10ms: must be at least 1s", "UDPIdleTimeout"},
	}
	for _, tt := range tests {
		_, err := Parse("gw.yaml", []byte(tt.doc))
		if err == nil {
			t.Errorf("%q: accepted", tt.doc)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error does not contain %q:\n%v", tt.doc, tt.want, err)
		}
		if strings.Contains(err.Error(), tt.forbidden) {
			t.Errorf("%q: error names the Go field %s:\n%v", tt.doc, tt.forbidden, err)
		}
	}
}

// TestKeyTableNamesFields: every entry of the field-to-key table names a
// field of tunnel.Config, so the table cannot drift from the library.
func TestKeyTableNamesFields(t *testing.T) {
	for field := range tunnelKeys {
		typ := reflect.TypeFor[tunnel.Config]()
		for _, name := range strings.Split(field, ".") {
			f, ok := typ.FieldByName(name)
			if !ok || !f.IsExported() {
				t.Errorf("tunnelKeys: %q is not a field of tunnel.Config", field)
				break
			}
			typ = f.Type
		}
	}
}

func TestLoadRelativeCertAndSize(t *testing.T) {
	dir := t.TempDir()
	c, k, err := certutil.SelfSigned([]string{"vpn.example"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(dir, "site.crt"), c, 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "site.key"), k, 0o600))
	cfgPath := filepath.Join(dir, "gw.yaml")
	must(t, os.WriteFile(cfgPath, []byte("tls: {cert: site.crt, key: site.key}\n"), 0o644))
	cfg, err := Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Tunnel.Certificate == nil || cfg.CertSource.CertFile != filepath.Join(dir, "site.crt") {
		t.Fatalf("certificate not loaded relative to the file: %+v", cfg)
	}
	big := filepath.Join(dir, "big.yaml")
	must(t, os.WriteFile(big, make([]byte, maxFileSize+1), 0o644))
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger") {
		t.Fatalf("oversized file: %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestHealthThresholds(t *testing.T) {
	c, err := Parse("h.yaml", []byte("health: {cpu_warn: 80, latency_warn: 5ms, fd_warn: 70}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Health.CPUWarn != 80 || c.Health.LatencyWarn != 5*time.Millisecond || c.Health.MaxConnections != 4990 ||
		c.Health.FDWarn != 70 || c.Health.FDBad != 95 {
		t.Errorf("thresholds %+v", c.Health)
	}
	if _, err := Parse("h.yaml", []byte("health: {cpu_warm: 80}\n")); err == nil || !strings.Contains(err.Error(), "h.yaml:1: health") {
		t.Errorf("unknown health key: %v", err)
	}
}

// manyRules lists n distinct /24 networks.
func manyRules(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "10.%d.%d.0/24", i>>8, i&255)
	}
	return b.String()
}
