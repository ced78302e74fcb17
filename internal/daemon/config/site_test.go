package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/underpass/underpass/tunnel"
)

func TestSiteAndProxyProtocolKeys(t *testing.T) {
	c, err := Parse("gw.yaml", []byte(`
pool: 169.254.0.0/16
limits: {max_sessions: 5000}
site:
  name: hq
  servers: 3
  server_index: 2
  server_name: gw-b
proxy_protocol_from: [10.0.9.0/24, 10.0.8.7]
ban_exempt: [127.0.0.0/8]
`))
	if err != nil {
		t.Fatal(err)
	}
	tc := c.Tunnel
	if tc.Site != (tunnel.Site{Servers: 3, ServerIndex: 2, ServerName: "gw-b"}) {
		t.Fatalf("Site = %+v", tc.Site)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.9.0/24"), netip.MustParsePrefix("10.0.8.7/32")}
	if len(tc.ProxyProtocolFrom) != 2 || tc.ProxyProtocolFrom[0] != want[0] || tc.ProxyProtocolFrom[1] != want[1] {
		t.Fatalf("ProxyProtocolFrom = %v", tc.ProxyProtocolFrom)
	}
	if len(tc.BanExempt) != 1 || tc.BanExempt[0] != netip.MustParsePrefix("127.0.0.0/8") {
		t.Fatalf("BanExempt = %v", tc.BanExempt)
	}
}

func TestSiteErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"index past servers", "pool: 10.0.0.0/24\nsite:\n  servers: 2\n  server_index: 3\n", []string{"gw.yaml:2: site.server_index"}},
		{"index without servers", "site: {server_index: 1}\n", []string{"gw.yaml:1: site.server_index"}},
		{"negative servers", "site: {servers: -2}\n", []string{"gw.yaml:1: site.servers"}},
		{"site overflows the pool", "pool: 10.0.0.0/24\nlimits: {max_sessions: 200}\nsite: {servers: 2}\n",
			[]string{"gw.yaml:1: pool", "253 client addresses", "400"}},
		{"R-C1 is per server", "limits: {max_sessions: 64000}\nsite: {servers: 2}\n", []string{"pool", "65533", "128000"}},
		{"bad proxy network", "proxy_protocol_from: [10.0.0.0/24, balancer]\n", []string{"gw.yaml:1: proxy_protocol_from", "proxy_protocol_from[1]", "balancer"}},
		{"proxy network host bits", "\nproxy_protocol_from: [10.0.0.9/24]\n", []string{"gw.yaml:2: proxy_protocol_from[0]", "10.0.0.0/24"}},
		{"bad exempt network", "ban_exempt: [nope]\n", []string{"gw.yaml:1: ban_exempt", "nope"}},
		// site.store
		{"no endpoints", "\nsite:\n  store: {prefix: /x/}\n", []string{"gw.yaml:2: site: store: endpoints: at least one"}},
		{"not a URL", "site: {store: {endpoints: [\"10.0.0.5:2379\"]}}\n", []string{"gw.yaml:1: site: store: endpoints[0]", "want an etcd client URL"}},
		{"path in URL", "site: {store: {endpoints: [\"http://e:2379/v3\"]}}\n", []string{"endpoints[0]"}},
		{"TLS files with http", "site: {store: {endpoints: [\"http://e:2379\"], ca: /nonexistent/ca.pem}}\n",
			[]string{"TLS files are set, so use https://", "ca: stat /nonexistent/ca.pem"}},
		{"cert without key", "site: {store: {endpoints: [\"https://e:2379\"], cert: /nonexistent/c.pem}}\n", []string{"set both cert and key"}},
		{"relative prefix", "site: {store: {endpoints: [\"http://e:2379\"], prefix: site}}\n", []string{"prefix \"site\": must start with /"}},
		{"unknown key", "site: {store: {endpoint: [\"http://e:2379\"]}}\n", []string{"endpoint"}},
		{"strict without store", "\nsite:\n  strict: true\n", []string{"gw.yaml:2: site: strict: true needs site.store"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("gw.yaml", []byte(tt.doc))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestSiteStoreKeys(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"ca.pem", "gw.pem", "gw.key"} {
		must(t, os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600))
	}
	path := filepath.Join(dir, "gw.yaml")
	must(t, os.WriteFile(path, []byte(`
site:
  name: hq
  store:
    endpoints: [https://10.0.0.5:2379, https://10.0.0.6:2379]
    ca: ca.pem
    cert: gw.pem
    key: gw.key
`), 0o600))
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := SiteStore{Endpoints: []string{"https://10.0.0.5:2379", "https://10.0.0.6:2379"}, Prefix: "/underpass/hq/",
		CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "gw.pem"), KeyFile: filepath.Join(dir, "gw.key")}
	if c.SiteStore == nil || !reflect.DeepEqual(*c.SiteStore, want) {
		t.Fatalf("SiteStore = %+v, want %+v", c.SiteStore, want)
	}
	c, err = Parse("gw.yaml", []byte("site: {store: {endpoints: [\"http://127.0.0.1:2379\"], prefix: /a/}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.SiteStore == nil || c.SiteStore.Prefix != "/a/" || c.SiteStore.Endpoints[0] != "http://127.0.0.1:2379" {
		t.Fatalf("SiteStore = %+v", c.SiteStore)
	}
	if c.Tunnel.Site.Strict {
		t.Fatal("Site.Strict set without site.strict")
	}
	c, err = Parse("gw.yaml", []byte("site: {strict: true, store: {endpoints: [\"http://127.0.0.1:2379\"]}}\n"))
	if err != nil {
		t.Fatalf("site.strict with site.store: %v", err)
	}
	if !c.Tunnel.Site.Strict {
		t.Fatal("site.strict: true did not set Site.Strict")
	}
	if c, err = Parse("gw.yaml", []byte("site: {name: hq}\n")); err != nil || c.SiteStore != nil {
		t.Fatalf("no store: %+v, %v", c.SiteStore, err)
	}
}
