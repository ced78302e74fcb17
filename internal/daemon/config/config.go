// Package config reads the gateway's YAML configuration file.
//
// Decoding is strict (unknown keys are errors) and validation reports every
// problem at once, each with its file:line, so an operator fixes a file in
// one pass. The result is a tunnel.Config plus the settings that only the
// standalone binary uses.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"

	"github.com/underpass/underpass/internal/core/dnsname"

	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/internal/core/policy"
	"github.com/underpass/underpass/internal/daemon/health"
	"github.com/underpass/underpass/internal/daemon/outbound"
	"github.com/underpass/underpass/tunnel"
)

// DefaultDrainDelay is drain_delay's default behind a load balancer: twice
// a typical health check interval of 5 s, so the balancer has seen a
// failed /readyz check and taken the server out before its clients
// reconnect. It also covers HAProxy's defaults (inter 2s, fall 3: out
// after at most 8 s). Without a balancer nothing probes /readyz, and
// waiting would only delay the clients' reconnect: the default is 0.
const DefaultDrainDelay = 10 * time.Second

// maxFileSize bounds a config file: real ones are a few KiB, even with 500
// route rules; anything larger is a mistake (a binary, a log).
const maxFileSize = 4 << 20

// File is the YAML document.
type File struct {
	Listen string `yaml:"listen"`
	TLS    struct {
		Cert            string `yaml:"cert"`
		Key             string `yaml:"key"`
		PFX             string `yaml:"pfx"`
		PFXPasswordFile string `yaml:"pfx_password_file"`
		ExtraRootsDir   string `yaml:"extra_roots_dir"` // more trusted CAs for outbound TLS (R-T4)
	} `yaml:"tls"`
	Site SiteFile `yaml:"site"`
	// Health overrides the health thresholds (R-O2); keys left out keep
	// their defaults.
	Health         map[string]yaml.Node `yaml:"health"`
	Pool           string               `yaml:"pool"`
	Pool6          string               `yaml:"pool6"` // IPv6 pool of dual-stack sessions (tunnel.Config.Pool6); empty: IPv4 only
	DNS            []string             `yaml:"dns"`
	SearchDomains  []string             `yaml:"search_domains"`
	SplitInclude   []string             `yaml:"split_include"`
	SplitExclude   []string             `yaml:"split_exclude"`
	MTU            int                  `yaml:"mtu"`
	DPD            Duration             `yaml:"dpd"`
	Keepalive      Duration             `yaml:"keepalive"`
	IdleTimeout    Duration             `yaml:"idle_timeout"`
	UDPIdleTimeout Duration             `yaml:"udp_idle_timeout"` // 0: 2 minutes
	SessionTimeout Duration             `yaml:"session_timeout"`
	ReconnectGrace Duration             `yaml:"reconnect_grace"`
	// DrainDelay: how long a stopping server stays up, answering /readyz
	// with 503, before it tells its clients to reconnect (R-O4). Default
	// DefaultDrainDelay behind a balancer (proxy_protocol_from), else 0.
	DrainDelay     *Duration     `yaml:"drain_delay"`
	Banner         string        `yaml:"banner"`
	PreLoginBanner string        `yaml:"pre_login_banner"` // on the sign-in forms, before credentials
	DNSProxy       DNSProxy      `yaml:"dns_proxy"`
	Identity       *IdentityFile `yaml:"identity"`
	Users          []User        `yaml:"users"`
	Log            LogConfig     `yaml:"log"`
	DemoPage       *bool         `yaml:"demo_page"`
	HostAddrs      []string      `yaml:"host_addrs"`
	// ProxyProtocolFrom lists trusted load balancers' networks: the PROXY
	// protocol header is required from them and refused from others.
	ProxyProtocolFrom []string `yaml:"proxy_protocol_from"`
	// BanExempt lists networks whose failed sign-ins earn no ban points.
	BanExempt  []string  `yaml:"ban_exempt"`
	DisableUDP bool      `yaml:"disable_udp"` // TCP-only: no QUIC, no DTLS (R-P3)
	DTLS       string    `yaml:"dtls"`        // auto|psk|legacy|off (R-P5)
	DTLSPort   int       `yaml:"dtls_port"`   // 0: DTLS shares the listen port with QUIC
	AdminHTTP  string    `yaml:"admin_http"`  // /metrics, /healthz, /readyz listener; "" = off
	SecretPath string    `yaml:"secret_path"`
	Proxy      ProxyFile `yaml:"proxy"`
	Limits     struct {
		MaxSessions int `yaml:"max_sessions"` // 0: the pool's size
	} `yaml:"limits"`
}

// DNSProxy configures the in-tunnel DNS proxy (see tunnel.Config.DNSProxy).
type DNSProxy struct {
	Disable   bool     `yaml:"disable"`   // forward DNS like any other flow
	Upstreams []string `yaml:"upstreams"` // default: the dns addresses
	Public    []string `yaml:"public"`    // resolvers for non-internal names; none: REFUSED
	Domains   []string `yaml:"domains"`   // extra internal domains besides search_domains
	NDots     int      `yaml:"ndots"`
	Timeout   Duration `yaml:"timeout"`
}

// User is a static lab user with a bcrypt password hash.
type User struct {
	Name         string   `yaml:"name"`
	PasswordHash string   `yaml:"password_hash"`
	Groups       []string `yaml:"groups"`
}

// LogConfig selects the log level and format.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info (default), warn, error
	Format string `yaml:"format"` // text (default) or json
	// Access is the per-flow access log: 0 off, 1 flows, 2 flows and DNS
	// queries (R-O3).
	Access int `yaml:"access"`
}

// Duration is a time.Duration written as "30s", "5m", "1h".
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (examples: 30s, 5m, 1h)", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// Config is a loaded, validated configuration.
type Config struct {
	Tunnel   tunnel.Config
	Users    []User
	Log      LogConfig
	DemoPage bool
	// AdminHTTP is the admin listener's address (metrics and probes).
	AdminHTTP string
	// CertSource names the configured certificate files (zero: generated).
	CertSource certutil.Source
	// CertWarnings are the R-T2 warnings about the configured certificate.
	CertWarnings []string
	Site         SiteFile
	// SiteStore is site.store (nil: no site store); the binary connects
	// to it at start.
	SiteStore *SiteStore
	// ExtraRootsDir holds extra trusted root CAs for outbound TLS.
	ExtraRootsDir string
	// Health are the health thresholds (defaults plus the file's keys).
	Health health.Thresholds
	// IdentityFile is the identity section as written; BuildIdentity
	// turns it into authenticators, policy, bans and a cookie sealer.
	IdentityFile *IdentityFile
	dir          string // the config file's directory, for relative paths
}

// mustYAML re-encodes a decoded section (always encodable).
func mustYAML(v any) []byte {
	b, _ := yaml.Marshal(v)
	return b
}

// SiteFile is the site section (R-S1, R-S2).
type SiteFile struct {
	Name     string `yaml:"name"`
	Host     string `yaml:"host"`      // public FQDN or IP clients dial; the certificate must cover it
	CheckURL string `yaml:"check_url"` // internal-network check (R-S3)
	// Servers is the number of servers of the site (the pool's strides);
	// ServerIndex is this server's stride, 1 to Servers (0: from a hash of
	// ServerName); ServerName defaults to the host name. See tunnel.Site.
	Servers     int    `yaml:"servers"`
	ServerIndex int    `yaml:"server_index"`
	ServerName  string `yaml:"server_name"`
	// Store is the site store (etcd): revocations, bans, health records
	// and address leases shared by the servers. Absent: none.
	Store *StoreFile `yaml:"store"`
	// Strict refuses resumes while the store is unreachable (needs
	// Store). See tunnel.Site.Strict.
	Strict bool `yaml:"strict"`
}

// StoreFile is site.store: how this server reaches the site's etcd.
type StoreFile struct {
	Endpoints []string `yaml:"endpoints"` // etcd client URLs, http:// or https://
	Prefix    string   `yaml:"prefix"`    // the site's key prefix; default /underpass/<site.name>/
	CA        string   `yaml:"ca"`        // verifies etcd's certificate (https)
	Cert      string   `yaml:"cert"`      // this server's client certificate and key
	Key       string   `yaml:"key"`
	// ServerConfig: the server configuration (every key but the
	// per-server ones, see LocalKeys) comes from the store, where
	// `underpass site push` puts it; this file then holds only per-server
	// keys.
	ServerConfig bool `yaml:"server_config"`
	// Cache is where the last site configuration applied is kept, so the
	// server starts while the store is down. Default: site-config.yaml in
	// the state directory.
	Cache string `yaml:"cache"`
}

// SiteStore is site.store after validation, with file paths resolved.
type SiteStore struct {
	Endpoints                 []string
	Prefix                    string
	CAFile, CertFile, KeyFile string
	ServerConfig              bool   // the server configuration comes from the store
	CacheFile                 string // site.store.cache, resolved; "": the binary's default
}

// ProxyFile is the proxy section: settings pushed to clients (R-C6).
type ProxyFile struct {
	PACURL  string   `yaml:"pac_url"`
	Server  string   `yaml:"server"`
	Exclude []string `yaml:"exclude"`
}

// rel resolves a path from the config file against the file's directory.
func (c *Config) rel(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.dir, p)
}

// Error lists every problem in a file, each prefixed with file:line.
type Error struct {
	File     string
	Problems []string
}

func (e *Error) Error() string {
	return fmt.Sprintf("config %s: %d problem(s):\n  %s", e.File, len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// Load reads and validates the file at path. Relative paths inside it
// (certificate files) are resolved against the file's directory.
func Load(path string) (*Config, error) {
	b, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, b)
}

// readFile reads a config file of at most maxFileSize bytes.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxFileSize {
		return nil, &Error{File: path, Problems: []string{fmt.Sprintf("file larger than %d bytes", maxFileSize)}}
	}
	return b, nil
}

// Parse validates a YAML document; name is used in messages and to resolve
// relative paths. Every problem is listed at once, in an *Error.
func Parse(name string, b []byte) (*Config, error) {
	return parse(name, []part{{name: name, b: b, role: whole}})
}

// parse validates the configuration the parts make together (their
// top-level keys are disjoint: see sitecfg.go); name is the file the
// result's relative paths resolve against and the *Error's File.
func parse(name string, parts []part) (*Config, error) {
	p := &parser{name: name, e: &Error{File: name}, lines: map[string]string{}}
	roots := make([]*yaml.Node, 0, len(parts))
	for _, pt := range parts {
		root, ok := p.decodePart(pt)
		if !ok {
			return nil, p.e
		}
		roots = append(roots, root)
	}
	b := parts[0].b
	if len(parts) > 1 {
		b = mustYAML(mergeRoots(roots))
	}
	// Unknown keys and wrong types are reported above, per part; what
	// did decode is validated too, so one pass lists every problem.
	var f File
	_ = yaml.Unmarshal(b, &f)
	if len(parts) == 1 && parts[0].role == siteDoc {
		f.placeholderSessionKey()
	}

	c := &Config{Log: f.Log, Users: f.Users, DemoPage: f.DemoPage == nil || *f.DemoPage,
		IdentityFile: f.Identity, dir: filepath.Dir(name)}
	p.addressing(&f, &c.Tunnel)
	p.tunnelSettings(&f, c)
	p.logAndUsers(&f)
	validateIdentity(f.Identity, c.rel, p.bad)
	p.siteAndHealth(&f, c)
	p.certificate(&f, c)
	p.tunnelProblems(&c.Tunnel)
	if len(p.e.Problems) > 0 {
		return nil, p.e
	}
	return c, nil
}

// parser is one Parse under way: the file's name, where each top-level
// key is ("file:line"), and the problems found so far.
type parser struct {
	name  string
	lines map[string]string
	e     *Error
}

// decodePart checks one part strictly (unknown keys, wrong types, keys
// its role does not allow) and notes where its top-level keys are. ok is
// false when the part is not YAML at all.
func (p *parser) decodePart(pt part) (root *yaml.Node, ok bool) {
	root = &yaml.Node{}
	if err := yaml.Unmarshal(pt.b, root); err != nil {
		p.e.Problems = append(p.e.Problems, yamlMsg(pt.name, err)...)
		return nil, false
	}
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(pt.b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		p.e.Problems = append(p.e.Problems, yamlMsg(pt.name, err)...)
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, false
		}
	}
	for k, l := range keyLines(root) {
		p.lines[k] = fmt.Sprintf("%s:%d", pt.name, l)
	}
	p.checkRole(pt, root, &f)
	return root, true
}

// bad records a problem with key ("file:line: key: ...").
func (p *parser) bad(key, format string, args ...any) {
	p.problem(key, key+": "+fmt.Sprintf(format, args...))
}

// problem records msg at the line of top-level key lineKey, or at the
// file when the file does not have that key.
func (p *parser) problem(lineKey, msg string) {
	if at, ok := p.lines[lineKey]; ok {
		p.e.Problems = append(p.e.Problems, at+": "+msg)
		return
	}
	p.e.Problems = append(p.e.Problems, fmt.Sprintf("%s: %s", p.name, msg))
}

// addressing reads the pool, DNS and host addresses, search domains and
// split routes.
func (p *parser) addressing(f *File, t *tunnel.Config) {
	bad := p.bad
	t.ListenAddr = f.Listen
	if f.Pool != "" {
		pool, err := netip.ParsePrefix(f.Pool)
		if err != nil {
			bad("pool", "%v", err)
		}
		t.Pool = pool
	}
	if f.Pool6 != "" {
		pool6, err := netip.ParsePrefix(f.Pool6)
		if err != nil {
			bad("pool6", "%v", err)
		}
		t.Pool6 = pool6
	}
	for i, s := range f.DNS {
		a, err := netip.ParseAddr(s)
		if err != nil {
			bad(fmt.Sprintf("dns[%d]", i), "%q is not an IP address", s)
			continue
		}
		t.DNS = append(t.DNS, a)
	}
	for i, s := range f.HostAddrs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			bad(fmt.Sprintf("host_addrs[%d]", i), "%q is not an IP address", s)
			continue
		}
		t.HostAddrs = append(t.HostAddrs, a)
	}
	t.ProxyProtocolFrom = p.prefixes("proxy_protocol_from", f.ProxyProtocolFrom)
	t.BanExempt = p.prefixes("ban_exempt", f.BanExempt)
	t.SearchDomains = f.SearchDomains
	var perrs []error
	t.SplitInclude, perrs = policy.ParsePrefixes("split_include", f.SplitInclude)
	for _, err := range perrs {
		bad("split_include", "%v", err)
	}
	t.SplitExclude, perrs = policy.ParsePrefixes("split_exclude", f.SplitExclude)
	for _, err := range perrs {
		bad("split_exclude", "%v", err)
	}
}

// prefixes parses a list of networks (CIDR, or a bare address for one
// host) under key.
func (p *parser) prefixes(key string, ss []string) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range ss {
		pr, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				p.bad(key, "%s[%d]: %q is not a network (want a CIDR such as 10.0.0.0/24, or an address)", key, i, s)
				continue
			}
			pr = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, pr)
	}
	return out
}

// tunnelSettings reads the timers, the DNS proxy, UDP and DTLS, limits,
// the admin listener, the secret path and the browser proxy.
func (p *parser) tunnelSettings(f *File, c *Config) {
	bad, t := p.bad, &c.Tunnel
	t.MTU = f.MTU
	t.DPD = time.Duration(f.DPD)
	t.Keepalive = time.Duration(f.Keepalive)
	t.IdleTimeout = time.Duration(f.IdleTimeout)
	t.UDPIdleTimeout = time.Duration(f.UDPIdleTimeout)
	t.SessionTimeout = time.Duration(f.SessionTimeout)
	t.ReconnectGrace = time.Duration(f.ReconnectGrace)
	switch {
	case f.DrainDelay != nil:
		t.DrainDelay = time.Duration(*f.DrainDelay)
	case len(f.ProxyProtocolFrom) > 0:
		t.DrainDelay = DefaultDrainDelay
	}
	t.Banner = f.Banner
	t.PreLoginBanner = f.PreLoginBanner
	t.DisableDNSProxy = f.DNSProxy.Disable
	t.DNSProxy.Upstreams = f.DNSProxy.Upstreams
	t.DNSProxy.Public = f.DNSProxy.Public
	t.DNSProxy.Domains = f.DNSProxy.Domains
	t.DNSProxy.NDots = f.DNSProxy.NDots
	t.DNSProxy.Timeout = time.Duration(f.DNSProxy.Timeout)
	t.DisableUDP = f.DisableUDP
	if m, err := tunnel.ParseDTLSMode(f.DTLS); err != nil {
		bad("dtls", "%q: want auto, psk, legacy or off", f.DTLS)
	} else {
		t.DTLS = m
	}
	if f.DTLSPort < 0 || f.DTLSPort > 65535 {
		bad("dtls_port", "%d: want 1-65535, or 0 for the listen port", f.DTLSPort)
	}
	t.DTLSPort = f.DTLSPort
	t.MaxSessions = f.Limits.MaxSessions
	c.AdminHTTP = f.AdminHTTP
	if f.AdminHTTP != "" {
		if _, _, err := net.SplitHostPort(f.AdminHTTP); err != nil {
			bad("admin_http", "%q: want host:port (e.g. 127.0.0.1:8444)", f.AdminHTTP)
		}
	}
	t.SecretPath = f.SecretPath
	t.Proxy = tunnel.ProxySettings{PACURL: f.Proxy.PACURL, Server: f.Proxy.Server, Exclude: f.Proxy.Exclude}
}

// logAndUsers checks the log section and the static users.
func (p *parser) logAndUsers(f *File) {
	bad := p.bad
	if f.Log.Access < 0 || f.Log.Access > 2 {
		bad("log", "access %d: want 0 (off), 1 (flows) or 2 (flows and DNS)", f.Log.Access)
	}

	switch f.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		bad("log", "level %q: want debug, info, warn or error", f.Log.Level)
	}
	switch f.Log.Format {
	case "", "text", "json":
	default:
		bad("log", "format %q: want text or json", f.Log.Format)
	}
	seen := map[string]bool{}
	for i, u := range f.Users {
		k := fmt.Sprintf("users[%d]", i)
		switch {
		case u.Name == "":
			bad("users", "%s: name is required", k)
		case seen[u.Name]:
			bad("users", "%s: duplicate user %q", k, u.Name)
		}
		seen[u.Name] = true
		if !strings.HasPrefix(u.PasswordHash, "$2") {
			bad("users", "%s: password_hash must be a bcrypt hash ($2a$/$2b$/$2y$...)", k)
		}
	}

}

// siteAndHealth reads the extra roots, health thresholds and site.
func (p *parser) siteAndHealth(f *File, c *Config) {
	bad := p.bad
	c.Site = f.Site
	c.Tunnel.Site = tunnel.Site{Servers: f.Site.Servers, ServerIndex: f.Site.ServerIndex, ServerName: f.Site.ServerName, Strict: f.Site.Strict}
	if f.Site.Strict && f.Site.Store == nil {
		bad("site", "strict: true needs site.store (strict mode refuses resumes while the site store is unreachable)")
	}
	if d := c.rel(f.TLS.ExtraRootsDir); d != "" {
		if _, err := outbound.Roots(d); err != nil {
			bad("tls", "extra_roots_dir: %v", err)
		}
		c.ExtraRootsDir = d
	}
	c.Health = health.DefaultThresholds
	if len(f.Health) > 0 {
		dec := yaml.NewDecoder(bytes.NewReader(mustYAML(f.Health)))
		dec.KnownFields(true)
		if err := dec.Decode(&c.Health); err != nil {
			bad("health", "%v", err)
		}
	}
	if f.Site.CheckURL != "" {
		if u, err := url.Parse(f.Site.CheckURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("site", "check_url %q: want an http or https URL", f.Site.CheckURL)
		}
	}
	p.siteStore(f, c)
	if h := f.Site.Host; h != "" {
		if _, err := netip.ParseAddr(h); err != nil && dnsname.Check(h) != nil || strings.Contains(h, "*") {
			bad("site", "host %q: want the public FQDN or IP address clients dial", h)
		}
	}
}

// siteStore reads site.store.
func (p *parser) siteStore(f *File, c *Config) {
	sf := f.Site.Store
	if sf == nil {
		return
	}
	bad := func(format string, args ...any) { p.bad("site", "store: "+format, args...) }
	if len(sf.Endpoints) == 0 {
		bad("endpoints: at least one etcd client URL (http://host:2379)")
	}
	st := &SiteStore{Prefix: sf.Prefix, CAFile: c.rel(sf.CA), CertFile: c.rel(sf.Cert), KeyFile: c.rel(sf.Key),
		ServerConfig: sf.ServerConfig, CacheFile: c.rel(sf.Cache)}
	for i, e := range sf.Endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			bad("endpoints[%d]: %q: want an etcd client URL, http://host:port or https://host:port", i, e)
			continue
		}
		if u.Scheme == "http" && (sf.CA != "" || sf.Cert != "") {
			bad("endpoints[%d]: %q: TLS files are set, so use https://", i, e)
		}
		st.Endpoints = append(st.Endpoints, e)
	}
	switch {
	case st.Prefix == "" && f.Site.Name != "":
		st.Prefix = "/underpass/" + f.Site.Name + "/"
	case st.Prefix == "":
		st.Prefix = "/underpass/"
	case !strings.HasPrefix(st.Prefix, "/"):
		bad("prefix %q: must start with /", st.Prefix)
	}
	if (sf.Cert == "") != (sf.Key == "") {
		bad("set both cert and key, or neither")
	}
	for _, fl := range []struct{ key, path string }{{"ca", st.CAFile}, {"cert", st.CertFile}, {"key", st.KeyFile}} {
		if fl.path == "" {
			continue
		}
		if _, err := os.Stat(fl.path); err != nil {
			bad("%s: %v", fl.key, err)
		}
	}
	c.SiteStore = st
}

// certificate loads and checks the configured certificate, if any (none:
// the binary makes a self-signed one).
func (p *parser) certificate(f *File, c *Config) {
	bad, t := p.bad, &c.Tunnel
	src := certutil.Source{CertFile: c.rel(f.TLS.Cert), KeyFile: c.rel(f.TLS.Key), PFXFile: c.rel(f.TLS.PFX)}
	switch {
	case src.PFXFile != "" && (src.CertFile != "" || src.KeyFile != ""):
		bad("tls", "set pfx, or cert and key, not both")
	case (src.CertFile == "") != (src.KeyFile == ""):
		bad("tls", "set both cert and key, or neither (a self-signed certificate is generated)")
	case src.CertFile != "" || src.PFXFile != "":
		if f.TLS.PFXPasswordFile != "" {
			pw, err := certutil.ReadPasswordFile(c.rel(f.TLS.PFXPasswordFile))
			if err != nil {
				bad("tls", "pfx_password_file: %v", err)
			}
			src.PFXPassword = pw
		}
		cert, err := src.Load()
		if err != nil {
			bad("tls", "%v", err)
			break
		}
		r := certutil.Check(cert, f.Site.Host, nil, time.Now())
		for _, m := range r.Errors {
			bad("tls", "certificate: %s", m)
		}
		c.CertWarnings = r.Warnings
		t.Certificate = cert
		c.CertSource = src
	}

}

// tunnelProblems adds what tunnel.Config.Validate finds (ranges, routes),
// in the file's spelling. The authenticator is supplied by the caller, so
// it is not reported missing here.
func (p *parser) tunnelProblems(t *tunnel.Config) {
	if err := t.Validate(); err != nil {
		var ce *tunnel.ConfigError
		if errors.As(err, &ce) {
			for _, pe := range ce.Errs {
				var fe *tunnel.FieldError
				// The caller supplies the authenticator and the site store
				// (from site.store, which siteAndHealth checks strict against).
				if errors.As(pe, &fe) && (fe.Field == "Authenticator" || fe.Field == "Site.Strict") {
					continue
				}
				key, msg := fieldProblem(pe)
				p.problem(strings.SplitN(key, ".", 2)[0], msg)
			}
		}
	}
}

// tunnelKeys maps tunnel.Config's field names, as tunnel.FieldError and
// tunnel.ReloadResult give them, to this file's keys. Fields the file
// cannot set (Dialer, Logger, Events, ...) are missing: Key returns those
// unchanged.
var tunnelKeys = map[string]string{
	"ListenAddr": "listen", "Certificate": "tls", "GetCertificate": "tls",
	"Pool": "pool", "Pool6": "pool6", "MTU": "mtu", "DNS": "dns", "SearchDomains": "search_domains",
	"SplitInclude": "split_include", "SplitExclude": "split_exclude",
	"DPD": "dpd", "Keepalive": "keepalive", "IdleTimeout": "idle_timeout", "UDPIdleTimeout": "udp_idle_timeout",
	"SessionTimeout": "session_timeout", "ReconnectGrace": "reconnect_grace", "DrainDelay": "drain_delay", "Banner": "banner", "PreLoginBanner": "pre_login_banner",
	"MaxSessions": "limits.max_sessions", "DisableUDP": "disable_udp", "DTLS": "dtls", "DTLSPort": "dtls_port",
	"DNSProxy": "dns_proxy", "HostAddrs": "host_addrs", "SecretPath": "secret_path", "FlowLog": "log.access",
	"Proxy": "proxy", "Proxy.PACURL": "proxy.pac_url", "Proxy.Server": "proxy.server", "Proxy.Exclude": "proxy.exclude",
	"Authenticator": "identity", "OfferBearer": "identity.oidc.offer_bearer", "Policy": "identity.policy",
	"KeepSessionPastTokenExpiry": "identity.keep_session_past_token_expiry", "Bans": "identity.bans",
	"Sealer": "identity.session_key", "ClientCerts": "identity.client_certs", "SSO": "identity.sso",
	"ProxyProtocolFrom": "proxy_protocol_from", "BanExempt": "ban_exempt",
	"Site": "site", "Site.Servers": "site.servers", "Site.ServerIndex": "site.server_index", "Site.ServerName": "site.server_name",
	"Site.Store": "site.store", "Site.Strict": "site.strict",
}

// Key returns the config file's key for a tunnel.Config field name, or
// the name itself for a field the file cannot set.
func Key(field string) string {
	if k, ok := tunnelKeys[field]; ok {
		return k
	}
	return field
}

// Keys maps Key over fields.
func Keys(fields []string) []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = Key(f)
	}
	return out
}

// fieldProblem renders one problem tunnel found in the Config built
// from the file, in the file's spelling: the key it belongs to and the
// message ("split_include[2] 10.1.2.3/8: host bits set ...").
func fieldProblem(err error) (key, msg string) {
	var fe *tunnel.FieldError
	if !errors.As(err, &fe) {
		return "", err.Error()
	}
	key = Key(fe.Field)
	var re *policy.RuleError
	switch {
	case errors.As(fe.Err, &re) && re.List == "pool": // the key: pool, or pool6 for the IPv6 pool
		return key, fmt.Sprintf("%s %s: %s", key, re.Prefix, re.Reason)
	case errors.As(fe.Err, &re):
		r := *re
		r.List = key
		return key, r.Error()
	case fe.Index >= 0:
		return key, fmt.Sprintf("%s[%d]: %v", key, fe.Index, fe.Err)
	default:
		return key, fmt.Sprintf("%s: %v", key, fe.Err)
	}
}

// keyLines maps each top-level key to its line.
func keyLines(root *yaml.Node) map[string]int {
	out := map[string]int{}
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return out
	}
	m := root.Content[0]
	if m.Kind != yaml.MappingNode {
		return out
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		out[m.Content[i].Value] = m.Content[i].Line
	}
	return out
}

// yamlMsg turns a yaml error into file:line messages.
func yamlMsg(name string, err error) []string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		out := make([]string, 0, len(te.Errors))
		for _, m := range te.Errors {
			out = append(out, name+": "+m)
		}
		return out
	}
	return []string{name + ": " + err.Error()}
}
