package tunnel

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
)

// ReloadResult says what a Reload changed, by the names of Config's
// fields ("SplitInclude", "MTU"; a pair set together is named by its
// first: "DTLS" for DTLS and DTLSPort, "DNSProxy" for DNSProxy and
// DisableDNSProxy, "FlowLog" for FlowLog and FlowLogDNS). A program with
// its own config syntax maps them to its spelling, as it does FieldError.
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
	{"Certificate", func(c *Config) any { return c.Certificate }},
	{"GetCertificate", func(c *Config) any { return funcID(c.GetCertificate) }},
	{"Authenticator", func(c *Config) any { return c.Authenticator }},
	{"OfferBearer", func(c *Config) any { return c.OfferBearer }},
	{"Policy", func(c *Config) any { return c.Policy }},
	// Browser sign-in keeps its state sealed in the client and browser; a
	// rebuilt one loses only its replay cache (one-time values live ~1 to
	// 10 minutes).
	{"SSO", func(c *Config) any { return c.SSO }},
	{"KeepSessionPastTokenExpiry", func(c *Config) any { return c.KeepSessionPastTokenExpiry }},
	{"SearchDomains", func(c *Config) any { return c.SearchDomains }},
	{"SplitInclude", func(c *Config) any { return c.SplitInclude }},
	{"SplitExclude", func(c *Config) any { return c.SplitExclude }},
	{"DPD", func(c *Config) any { return c.DPD }},
	{"Keepalive", func(c *Config) any { return c.Keepalive }},
	{"IdleTimeout", func(c *Config) any { return c.IdleTimeout }},
	{"SessionTimeout", func(c *Config) any { return c.SessionTimeout }},
	{"ReconnectGrace", func(c *Config) any { return c.ReconnectGrace }},
	{"DrainDelay", func(c *Config) any { return c.DrainDelay }},
	{"Banner", func(c *Config) any { return c.Banner }},
	{"PreLoginBanner", func(c *Config) any { return c.PreLoginBanner }},
	{"MaxSessions", func(c *Config) any { return c.MaxSessions }},
	{"Proxy", func(c *Config) any { return c.Proxy }},
	{"SecretPath", func(c *Config) any { return c.SecretPath }},
	{"FlowLog", func(c *Config) any { return [2]any{funcID(c.FlowLog), c.FlowLogDNS} }},
	// Read per connection and per failed sign-in.
	{"ProxyProtocolFrom", func(c *Config) any { return c.ProxyProtocolFrom }},
	{"BanExempt", func(c *Config) any { return c.BanExempt }},
}

// Settings fixed at New, each with why.
var restartFields = []restartField{
	// The listeners are bound once.
	{"ListenAddr", func(c *Config) any { return c.ListenAddr }, func(d, s *Config) { d.ListenAddr = s.ListenAddr }},
	{"DisableUDP", func(c *Config) any { return c.DisableUDP }, func(d, s *Config) { d.DisableUDP = s.DisableUDP }},
	{"DTLS", func(c *Config) any { return [2]any{c.DTLS, c.DTLSPort} }, func(d, s *Config) { d.DTLS, d.DTLSPort = s.DTLS, s.DTLSPort }},
	// Live sessions hold addresses of the pool and the stack's MTU.
	{"Pool", func(c *Config) any { return c.Pool }, func(d, s *Config) { d.Pool = s.Pool }},
	{"Pool6", func(c *Config) any { return c.Pool6 }, func(d, s *Config) { d.Pool6 = s.Pool6 }},
	// The pool's strides are cut once.
	{"Site", func(c *Config) any { return c.Site }, func(d, s *Config) { d.Site = s.Site }},
	{"MTU", func(c *Config) any { return c.MTU }, func(d, s *Config) { d.MTU = s.MTU }},
	// The stack's UDP forwarder is configured once.
	{"UDPIdleTimeout", func(c *Config) any { return c.UDPIdleTimeout }, func(d, s *Config) { d.UDPIdleTimeout = s.UDPIdleTimeout }},
	// The DNS proxy listens on the DNS addresses inside the stack.
	{"DNS", func(c *Config) any { return c.DNS }, func(d, s *Config) { d.DNS = s.DNS }},
	{"DNSProxy", func(c *Config) any { return dnsProxyKey(c) }, func(d, s *Config) {
		d.DNSProxy, d.DisableDNSProxy = s.DNSProxy, s.DisableDNSProxy
	}},
	// Ban points and sealed cookies are state: replacing them would lift
	// every ban or log every client out.
	{"Bans", func(c *Config) any { return c.Bans }, func(d, s *Config) { d.Bans = s.Bans }},
	{"Sealer", func(c *Config) any { return c.Sealer }, func(d, s *Config) { d.Sealer = s.Sealer }},
	// The TLS configuration asks for client certificates or not.
	{"ClientCerts", func(c *Config) any { return c.ClientCerts }, func(d, s *Config) { d.ClientCerts = s.ClientCerts }},
	{"Dialer", func(c *Config) any { return c.Dialer }, func(d, s *Config) { d.Dialer = s.Dialer }},
	{"Pinger", func(c *Config) any { return c.Pinger }, func(d, s *Config) { d.Pinger = s.Pinger }},
	{"HostAddrs", func(c *Config) any { return c.HostAddrs }, func(d, s *Config) { d.HostAddrs = s.HostAddrs }},
	{"Logger", func(c *Config) any { return c.Logger }, func(d, s *Config) { d.Logger = s.Logger }},
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
		return ReloadResult{}, &ConfigError{Errs: []error{&FieldError{Field: "Certificate", Index: -1,
			Err: errors.New("none: a reload cannot remove the certificate")}}}
	}
	pol := g.policy.Load()
	if slices.Contains(res.Applied, "SplitInclude") || slices.Contains(res.Applied, "SplitExclude") {
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
	g.event(Event{Kind: EventReload, Applied: slices.Clone(res.Applied), NeedRestart: slices.Clone(res.NeedRestart)})
	return res, nil
}
