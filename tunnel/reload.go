package tunnel

import (
	"fmt"
	"reflect"
	"slices"
)

// ReloadResult says what a Reload changed. Names are the config file's
// spelling (split_include, pool, ...).
type ReloadResult struct {
	// Applied lists changed settings now in force: for sign-ins,
	// handshakes and tunnel connections from now on; route enforcement
	// binds live sessions at once.
	Applied []string
	// NeedRestart lists changed settings that keep their old value until
	// the gateway restarts.
	NeedRestart []string
}

// liveField is a setting Reload applies without a restart.
type liveField struct {
	name string
	get  func(*Config) any
}

// restartField is a setting fixed at New: Reload reports a change and
// keeps the running value.
type restartField struct {
	name string
	get  func(*Config) any
	keep func(dst, src *Config)
}

// Settings Reload can change. Function and interface values compare by
// identity: a rebuilt authenticator counts as changed.
var liveFields = []liveField{
	{"tls.certificate", func(c *Config) any { return c.Certificate }},
	{"tls.get_certificate", func(c *Config) any { return funcID(c.GetCertificate) }},
	{"authenticator", func(c *Config) any { return c.Authenticator }},
	{"offer_bearer", func(c *Config) any { return c.OfferBearer }},
	{"policy", func(c *Config) any { return c.Policy }},
	{"keep_session_past_token_expiry", func(c *Config) any { return c.KeepSessionPastTokenExpiry }},
	{"search_domains", func(c *Config) any { return c.SearchDomains }},
	{"split_include", func(c *Config) any { return c.SplitInclude }},
	{"split_exclude", func(c *Config) any { return c.SplitExclude }},
	{"dpd", func(c *Config) any { return c.DPD }},
	{"keepalive", func(c *Config) any { return c.Keepalive }},
	{"idle_timeout", func(c *Config) any { return c.IdleTimeout }},
	{"session_timeout", func(c *Config) any { return c.SessionTimeout }},
	{"reconnect_grace", func(c *Config) any { return c.ReconnectGrace }},
	{"banner", func(c *Config) any { return c.Banner }},
	{"limits.max_sessions", func(c *Config) any { return c.MaxSessions }},
	{"proxy", func(c *Config) any { return c.Proxy }},
	{"secret_path", func(c *Config) any { return c.SecretPath }},
	{"log.access", func(c *Config) any { return [2]any{funcID(c.FlowLog), c.FlowLogDNS} }},
}

// Settings fixed at New, each with why.
var restartFields = []restartField{
	// The listeners are bound once.
	{"listen", func(c *Config) any { return c.ListenAddr }, func(d, s *Config) { d.ListenAddr = s.ListenAddr }},
	{"disable_udp", func(c *Config) any { return c.DisableUDP }, func(d, s *Config) { d.DisableUDP = s.DisableUDP }},
	{"dtls", func(c *Config) any { return [2]any{c.DTLS, c.DTLSPort} }, func(d, s *Config) { d.DTLS, d.DTLSPort = s.DTLS, s.DTLSPort }},
	// Live sessions hold addresses of the pool and the stack's MTU.
	{"pool", func(c *Config) any { return c.Pool }, func(d, s *Config) { d.Pool = s.Pool }},
	{"mtu", func(c *Config) any { return c.MTU }, func(d, s *Config) { d.MTU = s.MTU }},
	// The DNS proxy listens on the DNS addresses inside the stack.
	{"dns", func(c *Config) any { return c.DNS }, func(d, s *Config) { d.DNS = s.DNS }},
	{"dns_proxy", func(c *Config) any { return dnsProxyKey(c) }, func(d, s *Config) {
		d.DNSProxy, d.DisableDNSProxy = s.DNSProxy, s.DisableDNSProxy
	}},
	// Ban points and sealed cookies are state: replacing them would lift
	// every ban or log every client out.
	{"identity.bans", func(c *Config) any { return c.Bans }, func(d, s *Config) { d.Bans = s.Bans }},
	{"identity.session_key", func(c *Config) any { return c.Sealer }, func(d, s *Config) { d.Sealer = s.Sealer }},
	// The TLS configuration asks for client certificates or not.
	{"identity.client_certs", func(c *Config) any { return c.ClientCerts }, func(d, s *Config) { d.ClientCerts = s.ClientCerts }},
	{"dialer", func(c *Config) any { return c.Dialer }, func(d, s *Config) { d.Dialer = s.Dialer }},
	{"host_addrs", func(c *Config) any { return c.HostAddrs }, func(d, s *Config) { d.HostAddrs = s.HostAddrs }},
	{"logger", func(c *Config) any { return c.Logger }, func(d, s *Config) { d.Logger = s.Logger }},
}

// funcID makes a func comparable by identity.
func funcID(f any) any {
	v := reflect.ValueOf(f)
	if !v.IsValid() || v.IsNil() {
		return uintptr(0)
	}
	return v.Pointer()
}

// dnsProxyKey is the comparable part of the DNS proxy settings.
func dnsProxyKey(c *Config) any {
	d := c.DNSProxy
	return fmt.Sprint(c.DisableDNSProxy, d.Upstreams, d.Public, d.Domains, d.Search, d.NDots, d.Timeout,
		funcID(d.AccessLog), d.Dialer, d.Logger)
}

// Reload applies cfg to the running gateway without dropping sessions
// (R-C7). cfg is validated like New's; on error nothing changes. Settings
// that need a restart keep their running values and are listed in
// NeedRestart; a nil Logger, Dialer or HostAddrs in cfg means "keep". Live
// sessions keep the DPD, timeouts and routes they were pushed; the gateway
// enforces the new routes for every session at once, since enforcement is
// a security boundary.
func (g *Gateway) Reload(cfg Config) (ReloadResult, error) {
	if err := cfg.Validate(); err != nil {
		return ReloadResult{}, err
	}
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	old := g.conf()
	next := cfg.withDefaults()
	if cfg.Logger == nil {
		next.Logger = old.Logger
	}
	if cfg.Dialer == nil {
		next.Dialer = old.Dialer
	}
	if cfg.HostAddrs == nil {
		next.HostAddrs = old.HostAddrs
	}
	var res ReloadResult
	for _, f := range restartFields {
		if !reflect.DeepEqual(f.get(old), f.get(&next)) {
			res.NeedRestart = append(res.NeedRestart, f.name)
			f.keep(&next, old)
		}
	}
	for _, f := range liveFields {
		if !reflect.DeepEqual(f.get(old), f.get(&next)) {
			res.Applied = append(res.Applied, f.name)
		}
	}
	if next.Certificate == nil && next.GetCertificate == nil && (old.Certificate != nil || old.GetCertificate != nil) {
		return ReloadResult{}, &ConfigError{Errs: []error{fmt.Errorf("tls: no certificate (a reload cannot remove it)")}}
	}
	pol := g.policy.Load()
	if slices.Contains(res.Applied, "split_include") || slices.Contains(res.Applied, "split_exclude") {
		var err error
		if pol, err = compilePolicy(next, g.gwAddr); err != nil {
			return ReloadResult{}, err
		}
	}
	g.cur.Store(&next)
	g.policy.Store(pol)
	if len(res.Applied) > 0 || len(res.NeedRestart) > 0 {
		g.log.Info("configuration reloaded", "applied", res.Applied, "need_restart", res.NeedRestart)
	}
	return res, nil
}
