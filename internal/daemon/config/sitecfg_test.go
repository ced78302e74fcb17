package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// localDoc is a server's own file when the site configuration comes from
// the store.
const localDoc = `listen: 127.0.0.1:8443
site:
  name: hq
  server_name: gw-a
  store: {endpoints: ["http://127.0.0.1:2379"], server_config: true}
identity:
  session_key: MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=
`

func writeLocal(t *testing.T, doc string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "gw.yaml")
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLoadWithSite: a server's own file and the site configuration make
// one configuration; the session key stays in the server's file.
func TestLoadWithSite(t *testing.T) {
	path := writeLocal(t, localDoc)
	c, err := LoadWithSite(path, "store:/underpass/hq/config", []byte(`
pool: 10.9.0.0/16
split_include: [198.19.0.0/24]
banner: from the site
drain_delay: 3s
identity:
  bans: {threshold: 4}
`))
	if err != nil {
		t.Fatal(err)
	}
	tc := c.Tunnel
	if tc.ListenAddr != "127.0.0.1:8443" || tc.Pool.String() != "10.9.0.0/16" || tc.Banner != "from the site" ||
		len(tc.SplitInclude) != 1 || tc.DrainDelay != 3*time.Second {
		t.Fatalf("merged config: listen %q pool %v banner %q split %v drain %v", tc.ListenAddr, tc.Pool, tc.Banner, tc.SplitInclude, tc.DrainDelay)
	}
	if c.IdentityFile == nil || c.IdentityFile.SessionKey == "" || c.IdentityFile.Bans == nil || c.IdentityFile.Bans.Threshold != 4 {
		t.Fatalf("identity not merged: %+v", c.IdentityFile)
	}
	if c.SiteStore == nil || !c.SiteStore.ServerConfig || tc.Site.ServerName != "gw-a" {
		t.Fatalf("site: %+v %+v", c.SiteStore, tc.Site)
	}
}

// TestSiteConfigErrors: each key is where it belongs, and every error
// names the file (or the store) and the line.
func TestSiteConfigErrors(t *testing.T) {
	tests := []struct {
		name  string
		local string // "" : ParseSite(site) alone
		site  string
		want  []string
	}{
		{"per-server key in the site configuration", "", "pool: 10.9.0.0/16\n\nlisten: 0.0.0.0:443\n",
			[]string{"site.yaml:3: listen: a per-server key"}},
		{"session key in the site configuration", "", "identity:\n  bans: {threshold: 3}\n  session_key: abc\n",
			[]string{"site.yaml:3: identity.session_key: the session key stays out of the store"}},
		{"invalid route", "", "split_include: [10.0.0.0/8]\nmtu: 1\n", []string{"site.yaml:2: mtu"}},
		{"unknown key", "", "split_includes: [10.0.0.0/8]\n", []string{"site.yaml: line 1: field split_includes not found"}},
		{"sso judged with the servers' session key", "", "identity:\n  sso: {issuer: nope}\n", []string{"site.yaml:1: identity: sso.issuer"}},
		{"site key in the server's file", localDoc + "banner: hi\n", "pool: 10.9.0.0/16\n",
			[]string{"gw.yaml:8: banner: a site key: with site.store.server_config"}},
		{"site identity key in the server's file", strings.Replace(localDoc, "identity:\n", "identity:\n  bans: {threshold: 2}\n", 1), "pool: 10.9.0.0/16\n",
			[]string{"gw.yaml:7: identity.bans: a site key"}},
		{"error in the pushed part names the store", localDoc, "pool: 10.9.0.0/16\nmtu: 1\n",
			[]string{"site.yaml:2: mtu"}},
		{"merged problems name each file", strings.Replace(localDoc, "site:\n", "site:\n  servers: 2\n", 1), "pool: 10.0.0.0/24\nlimits: {max_sessions: 200}\n",
			[]string{"site.yaml:1: pool", "fewer than 2 server(s)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.local == "" {
				_, err = ParseSite("site.yaml", []byte(tt.site))
			} else {
				dir := t.TempDir()
				p := filepath.Join(dir, "gw.yaml")
				if werr := os.WriteFile(p, []byte(tt.local), 0o600); werr != nil {
					t.Fatal(werr)
				}
				_, err = LoadWithSite(p, "site.yaml", []byte(tt.site))
				err = trimDir(err, dir)
			}
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

// trimDir drops dir from an error's text, so the cases name gw.yaml.
func trimDir(err error, dir string) error {
	if err == nil {
		return nil
	}
	return &Error{Problems: []string{strings.ReplaceAll(err.Error(), dir+"/", "")}}
}

// TestSiteConfigAlone: a valid site configuration passes alone, and a
// server's own file with server_config passes alone too.
func TestSiteConfigAlone(t *testing.T) {
	if _, err := ParseSite("site.yaml", []byte("pool: 10.9.0.0/16\nidentity:\n  bans: {threshold: 3}\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(writeLocal(t, localDoc)); err != nil {
		t.Fatal(err)
	}
}

func TestRequiredSchema(t *testing.T) {
	tests := []struct {
		doc   string
		want  int
		newer []string
	}{
		{"pool: 10.9.0.0/16\n", 1, nil},
		{"", 1, nil},
		{"pool: 10.9.0.0/16\ndrain_delay: 5s\n", 2, []string{"drain_delay"}},
		{"users:\n- {name: a, drain_delay: x}\n", 1, nil}, // a nested key of that name is not the key
	}
	for _, tt := range tests {
		got, newer, err := RequiredSchema([]byte(tt.doc))
		if err != nil || got != tt.want || !slices.Equal(newer, tt.newer) {
			t.Errorf("RequiredSchema(%q) = %d %v %v, want %d %v", tt.doc, got, newer, err, tt.want, tt.newer)
		}
	}
	if Schema < 2 {
		t.Fatalf("Schema %d: drain_delay is schema 2", Schema)
	}
}

func TestDrainDelayDefault(t *testing.T) {
	for _, tt := range []struct {
		doc  string
		want time.Duration
	}{
		{"pool: 10.9.0.0/16\n", 0},
		{"proxy_protocol_from: [127.0.0.1]\n", DefaultDrainDelay},
		{"proxy_protocol_from: [127.0.0.1]\ndrain_delay: 0s\n", 0},
		{"drain_delay: 4s\n", 4 * time.Second},
	} {
		c, err := Parse("gw.yaml", []byte(tt.doc))
		if err != nil {
			t.Fatal(err)
		}
		if c.Tunnel.DrainDelay != tt.want {
			t.Errorf("%q: DrainDelay %v, want %v", tt.doc, c.Tunnel.DrainDelay, tt.want)
		}
	}
	if _, err := Parse("gw.yaml", []byte("drain_delay: -1s\n")); err == nil || !strings.Contains(err.Error(), "gw.yaml:1: drain_delay") {
		t.Errorf("negative drain_delay: %v", err)
	}
}
