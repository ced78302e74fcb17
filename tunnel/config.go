package tunnel

import (
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/dnsproxy"
	"github.com/underpass/underpass/internal/core/cstp"
	"github.com/underpass/underpass/internal/core/dnsname"
	"github.com/underpass/underpass/internal/core/ippool"
	"github.com/underpass/underpass/internal/core/policy"
	"github.com/underpass/underpass/netstack"
	"github.com/underpass/underpass/tunnel/site"
)

// Defaults applied to zero-valued Config fields. Each carries its reason.
const (
	// DefaultListenAddr is the AnyConnect standard port on every interface (R-C4).
	DefaultListenAddr = ":443"
	// DefaultMTU is the tunnel MTU pushed to clients. On the TLS path a
	// frame is one TLS record, not one IP datagram on the wire, so the
	// tunnel MTU is bounded by the TLS record size (16 KiB) rather than the
	// path MTU. Big packets cut per-packet work on both ends roughly tenfold.
	// 16000 leaves room for the 8-byte CSTP header under the 16384-byte record
	// limit with margin for clients that add their own framing slack.
	DefaultMTU = 16000
	// MinMTU is the smallest tunnel MTU accepted: 1280 is the IPv6 minimum,
	// and openconnect refuses IPv6 below it.
	MinMTU = cstp.MinMTU
	// MaxMTU is the largest MTU whose frame (8-byte header + packet) still
	// fits one TLS record (16384 bytes), as openconnect requires.
	MaxMTU = cstp.MaxMTU
	// DefaultSessionTimeout is R-C5's default: clients re-authenticate hourly.
	DefaultSessionTimeout = time.Hour
	// DefaultDPD is the dead-peer-detection interval pushed to clients: 30 s
	// notices a dead mobile client within a minute without costing radio time.
	DefaultDPD = 30 * time.Second
	// DefaultKeepalive keeps NAT bindings on the client's path warm; most
	// consumer NATs expire idle TCP mappings after minutes, 20 s is ample.
	DefaultKeepalive = 20 * time.Second
	// DefaultReconnectGrace is how long a session whose connection dropped
	// keeps its address and cookie: openconnect retries for up to 300 s
	// (its --reconnect-timeout default) before giving up.
	DefaultReconnectGrace = 300 * time.Second
	// DefaultHandshakeTimeout bounds TLS handshake plus request headers, so
	// a client that stops mid-handshake cannot hold a connection.
	DefaultHandshakeTimeout = 15 * time.Second
)

// DefaultPool is the recommended client address range (R-C1): link-local
// space cannot collide with corporate ranges.
var DefaultPool = netip.MustParsePrefix("169.254.0.0/16")

// Config configures a Gateway. The zero value of every field is useful; New
// copies the Config, so changing it afterwards has no effect.
type Config struct {
	// ListenAddr is the TCP address ListenAndServe binds. Default ":443".
	ListenAddr string
	// ProxyProtocolFrom lists the networks of trusted load balancers
	// (HAProxy, nginx stream) in front of the TCP listener. A connection
	// from them must open with a PROXY protocol header, v1 or v2 (the
	// HAProxy PROXY protocol specification); one without is refused, and
	// so is a header from any other address. The client address the
	// header carries is the connection's address everywhere: the ban
	// check before TLS, ban points, telemetry, the access log and
	// Sessions. A header with the LOCAL command (v2) or UNKNOWN (v1), the
	// balancer's own health check, keeps the balancer's address, which
	// never earns ban points. Empty: no PROXY protocol, every peer is a
	// client. QUIC and DTLS (UDP) do not carry it: balance them by source
	// address or let clients reach the servers directly.
	ProxyProtocolFrom []netip.Prefix

	// Certificate is the TLS server certificate (full chain). Either it or
	// GetCertificate is required to serve TLS.
	Certificate *tls.Certificate
	// GetCertificate, if set, is consulted on each handshake, so a
	// certificate can be rotated without a restart.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)

	// Authenticator checks sign-ins. Required.
	Authenticator auth.Authenticator

	// OfferBearer answers openconnect's first request (when it advertises
	// X-Support-HTTP-Auth) with 401 WWW-Authenticate: Bearer, so a client
	// started with --token-mode=oidc signs in with its token; clients
	// without a token fall back to the XML form. The Authenticator must
	// accept Credentials.BearerToken (auth.OIDC does).
	OfferBearer bool
	// Policy is the access policy, checked at sign-in, again whenever a
	// cookie resumes a session, and on every renewal of an SSO sign-in
	// (auth.SSOConfig.Refresh). nil admits every authenticated identity.
	Policy auth.Policy
	// Bans, if set, earns failed sign-ins ban points per source IP; a
	// banned IP is refused before any TLS work. Behind a load balancer the
	// source is the client address the PROXY protocol carries (see
	// ProxyProtocolFrom).
	Bans *auth.Bans
	// BanExempt lists networks whose failed sign-ins never earn ban
	// points, as ocserv exempts local addresses: a reverse proxy on the
	// same host, a monitoring probe. The networks in ProxyProtocolFrom are
	// exempt as well: their own address only shows on their health checks.
	BanExempt []netip.Prefix
	// ClientCerts, if set, requests client certificates in the TLS
	// handshake; a verified certificate signs the client in at once.
	ClientCerts *auth.Certificates
	// Sealer, if set, makes session cookies sealed tokens that every
	// gateway sharing its key can resume without a new sign-in (R-S2).
	// nil: opaque random cookies known only to this gateway.
	Sealer *auth.Sealer
	// SSO, if set, offers browser sign-in (SSO v2 external browser,
	// openconnect --external-browser; shared/docs/sso.md) to every client
	// whose init advertises it; others, and any client that posts to
	// <SecretPath>/password, get the password form. Its browser endpoints
	// are served under <SecretPath>/sso/. Set auth.SSOConfig.PublicURL to
	// this gateway's public URL (with SecretPath). With
	// auth.SSOConfig.Refresh, an SSO session is renewed through SSO each
	// time its ID token expires (while connected: within a second; on a
	// resume: before the policy check); a failed renewal ends it
	// (EndRenewalFailed, or EndPolicyDenied when the policy refuses the
	// renewed identity).
	SSO *auth.SSO
	// KeepSessionPastTokenExpiry lets a token-based session run to
	// SessionTimeout; by default it ends when the token expires.
	KeepSessionPastTokenExpiry bool

	// Pool is the client address range. Default DefaultPool. The first
	// usable address is the gateway's own in-tunnel address.
	Pool netip.Prefix
	// Pool6, if set, makes sessions dual-stack: each also leases an IPv6
	// address from this prefix (a ULA /64 such as fd7a:5c3e:11::/64, or a
	// corporate prefix), sticky like the IPv4 one and sealed in the cookie
	// next to it, and a client that asks for IPv6 (openconnect's
	// X-CSTP-Address-Type: IPv6,IPv4 or X-CSTP-Full-IPv6-Capability) is
	// given it as X-CSTP-Address-IP6 "addr/len", with the IPv6 routes and
	// resolvers in their -IP6 headers. Its flows are re-originated from
	// the gateway host's IPv6 sockets. It must be a masked IPv6 prefix of
	// at most /126 outside loopback, link-local, multicast and the
	// IPv4-mapped range; its first address after the network address is
	// kept back (never leased), as the IPv4 pool's is for the gateway.
	// Only the first ippool.MaxAddrs addresses of a larger prefix are
	// leased. With SplitInclude set, list the IPv6 networks too:
	// openconnect's vpnc-script sends all IPv6 into the tunnel when it
	// gets an IPv6 address and no IPv6 include route, and the gateway then
	// refuses every IPv6 destination that is not included. The zero
	// Prefix (the default): IPv4 only, exactly as without this field.
	Pool6 netip.Prefix
	// DNS servers pushed to clients (at most 3 are used by openconnect).
	DNS []netip.Addr
	// SearchDomains is the DNS suffix search list; the first is the
	// default domain.
	SearchDomains []string
	// SplitInclude lists the networks clients reach through the tunnel; empty
	// means everything (full tunnel). SplitExclude carves networks out.
	// The gateway enforces these whatever routes a client installs.
	SplitInclude []netip.Prefix
	SplitExclude []netip.Prefix

	// MTU is the tunnel MTU. Default DefaultMTU.
	MTU int
	// DPD is the dead-peer-detection interval. Default DefaultDPD.
	DPD time.Duration
	// Keepalive is the keepalive interval pushed to clients. Default
	// DefaultKeepalive.
	Keepalive time.Duration
	// IdleTimeout ends a session that moved no data for this long. Zero
	// means no idle timeout.
	IdleTimeout time.Duration
	// UDPIdleTimeout ends a forwarded UDP flow (its mapping: the source
	// port the gateway dialed from) after this long without traffic in
	// either direction. Zero means netstack.DefaultUDPIdleTimeout, 2
	// minutes (RFC 4787 REQ-5); at least 1s.
	UDPIdleTimeout time.Duration
	// SessionTimeout ends every session this long after sign-in; the
	// client must sign in again. Default DefaultSessionTimeout.
	SessionTimeout time.Duration
	// ReconnectGrace is how long a session survives without a connection
	// before its address is released. Default DefaultReconnectGrace.
	ReconnectGrace time.Duration
	// DrainDelay is how long Shutdown waits, once Ready reports draining
	// (a load balancer's readiness check on /readyz then fails), before it
	// stops accepting and tells the clients to reconnect (R-O4): by then
	// the balancer has taken this server out and sends their reconnects to
	// the other servers of the site. Zero: no wait (no balancer probes
	// this server). The underpass binary defaults it to 10 s behind a
	// balancer (see its drain_delay key). Must not be negative.
	DrainDelay time.Duration
	// Banner is shown to users after sign-in.
	Banner string
	// PreLoginBanner, if set, is shown on the sign-in form and the SSO form
	// before any credential is asked (an acceptable-use notice), and again
	// with every failed try: openconnect prints a form's <banner>. It may
	// span lines.
	PreLoginBanner string
	// MaxSessions caps signed-in sessions; sign-ins past it are refused
	// with "gateway full" (a load balancer sends the client elsewhere).
	// 0: limited only by the pool. In a site (Site.Servers set) the pool
	// is shared, so Validate requires Site.Servers × MaxSessions addresses
	// in it: R-C1's "a /16 serves 64,000 clients" is per server, and a /16
	// serves 64,000 across the whole site.
	MaxSessions int

	// Site places the gateway in a site of several servers behind a load
	// balancer, sharing Pool and the Sealer's key (R-S2).
	Site Site

	// DNSProxy tunes the in-tunnel DNS proxy that answers queries sent to
	// the DNS addresses (UDP and TCP port 53): the gateway intercepts them
	// and resolves through the proxy, with its cache, search-suffix
	// expansion and split DNS. Upstreams defaults to the DNS addresses
	// themselves (reached from the gateway host), Search to SearchDomains,
	// Dialer to Config.Dialer, Logger to Config.Logger. In a full tunnel
	// with neither Public nor Domains set, every name is internal. In a
	// split tunnel without Public resolvers the internal domains are
	// pushed as split-DNS domains (X-CSTP-Split-DNS), since the proxy
	// refuses other names.
	DNSProxy dnsproxy.Config
	// DisableDNSProxy leaves queries to the DNS addresses alone: they are
	// forwarded like any other flow.
	DisableDNSProxy bool

	// Dialer re-originates client flows. Default &net.Dialer{}.
	Dialer netstack.Dialer
	// Pinger forwards clients' ICMP echo requests to corporate hosts. nil
	// means the host's own ping sockets (netstack.HostPinger) when Dialer
	// is nil too; with a custom Dialer and no Pinger, pings to other hosts
	// are refused (administratively prohibited), since the embedder owns
	// the network path.
	Pinger netstack.Pinger
	// HostAddrs are the gateway host's own addresses, unreachable from
	// clients unless an include route names them. Default: the addresses
	// of every local interface at New.
	HostAddrs []netip.Addr

	// SecretPath, if set (e.g. "/vpn-4f9c"), hides the VPN behind a path:
	// clients use https://host/<SecretPath> (openconnect) or the
	// CONNECT-IP template https://host/<SecretPath>/.well-known/masque/ip/;
	// every other request gets the hosting site's ordinary answer.
	SecretPath string

	// Proxy is the web proxy configuration pushed to clients (R-C6).
	Proxy ProxySettings

	// DisableUDP makes the gateway TCP-only (R-P3): no QUIC and no DTLS.
	DisableUDP bool

	// DTLS chooses the AnyConnect UDP channel's mode (R-P5, dtls.md):
	// DTLSAuto (the zero value) offers PSK-NEGOTIATE to clients that ask
	// for it on a TLS 1.3 CSTP connection and legacy DTLS 1.2 resumption
	// otherwise; DTLSOff keeps AnyConnect clients on CSTP. DTLS runs only
	// where the gateway serves it (ServeDTLS, ServeTCPAndUDP).
	DTLS DTLSMode
	// DTLSPort, if set, is the UDP port ServeTCPAndUDP serves DTLS on,
	// apart from QUIC (which keeps the TCP port number). 0: DTLS shares
	// the TCP port number with QUIC (RFC 9443 demultiplexing), as the
	// reference product's firewall rule (UDP 443) expects.
	DTLSPort int

	// FlowLog, if set, receives one record per forwarded flow when it
	// ends (the access log, R-O3). It runs on the flow's goroutine: keep it
	// quick. FlowLogDNS adds a record per DNS query the in-tunnel proxy
	// answers.
	FlowLog    func(FlowRecord)
	FlowLogDNS bool

	// Events, if set, receives the session core's typed records (sign-in,
	// failed sign-in, ban, connect, disconnect, takeover, session end), on
	// the goroutine where they happen: keep it quick. The log carries the
	// same facts as text; Events is for programs.
	Events func(Event)

	// Logger receives structured logs. Default: silent.
	Logger *slog.Logger
}

// Site describes this gateway's place among the servers of a site.
// Every server of a site has the same Pool and Sealer key; a client whose
// server dies reconnects through the balancer to another server, which
// resumes its sealed cookie and claims the address sealed in it, so the
// client keeps its address (openconnect 9.01 aborts a reconnect that
// returns another one). The zero value is a single server.
//
// Each server hands out addresses of its own stride of the pool first: the
// pool is split into Servers equal contiguous strides, and a server borrows
// from the others only when its stride is full. So servers that sign
// clients in at once do not hand out the same address; a borrowed address
// may still collide with another server's session until the site store
// leases addresses site-wide, and then the resume that finds it taken is
// refused (503) rather than given another address.
type Site struct {
	// Servers is the number of servers in the site (the stride count).
	// 0 or 1: the whole pool is this server's.
	Servers int
	// ServerIndex is this server's stride, 1 to Servers. 0: derived
	// from ServerName (FNV-1a hash modulo Servers), so two servers may
	// share a stride by chance; set it to be sure.
	ServerIndex int
	// ServerName names this server in its site. Default: the host name
	// (os.Hostname).
	ServerName string
	// Store, if set, shares revocations, bans and health records with the
	// other servers of the site (package site; the underpass binary's is
	// etcd). An operator's Disconnect or a client's logoff revokes the
	// session everywhere: the server running it ends it and every server
	// refuses its cookie. A ban earned here bans the address everywhere;
	// LiftBan lifts it everywhere. The health record is rewritten every
	// 3 s (siteAnnounceEvery).
	//
	// The store is never on the packet path, in a sign-in or in Ready:
	// records apply here first and are queued for the store, which is
	// retried every second while unreachable (up to 32,768 queued
	// records; Stats.SiteStore). The one risk of an outage: a session
	// revoked here can resume on another server until the store is back
	// or its cookie expires.
	//
	// A store that also implements site.Leases (the binary's etcd store
	// does) leases addresses for the whole site: every sign-in confirms
	// the local pool's pick with it and every resume claims its cookie's
	// address from it (compare-and-swap), so no two live sessions of the
	// site hold one address, even when a stride is borrowed or a server
	// restarts while its clients resume elsewhere. A resume whose address
	// another session of the site holds is refused with 503, as a local
	// conflict is. These calls are the store's only ones on a client's
	// path, bounded by 2 s (siteCallTimeout); while the store does not
	// answer, the local pool decides alone and the lease is queued, then
	// claimed when the store is back (a conflict is then counted and
	// logged, and neither session is ended; Stats.SiteStore).
	Store site.Store
	// Strict refuses resumes of sessions from other servers (a sealed
	// cookie this server does not know yet) with 503 and X-Reason "site
	// store unavailable…" while the store does not answer, on CSTP and
	// CONNECT-IP alike: during an outage a revoked cookie could resume
	// here, and an address could be claimed twice. Sign-ins still work
	// (they check credentials, and take addresses from this server's
	// stride), and so do reconnects of sessions live here. Needs Store.
	Strict bool
}

// name is ServerName or the host name.
func (s Site) name() string {
	if s.ServerName != "" {
		return s.ServerName
	}
	name, _ := os.Hostname()
	return name
}

// FieldError is one problem with one Config field. Field is the Go
// field's name, dotted into nested structs ("MTU", "SearchDomains",
// "Proxy.Exclude"); Index is the element of a slice field, or -1 for the
// field as a whole. Err says what is wrong (for route rules, a
// *policy.RuleError). A program with its own config syntax maps Field to
// its own spelling; the underpass binary's config file does that with a
// table (internal/daemon/config).
type FieldError struct {
	Field string
	Index int
	Err   error
}

func (e *FieldError) Error() string {
	var re *policy.RuleError
	if errors.As(e.Err, &re) {
		return re.Error() // names its list and element itself
	}
	if e.Index >= 0 {
		return fmt.Sprintf("%s[%d]: %v", e.Field, e.Index, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Field, e.Err)
}

// Unwrap returns Err.
func (e *FieldError) Unwrap() error { return e.Err }

// fieldErrs collects FieldErrors.
type fieldErrs []error

// add records a problem with field as a whole.
func (fe *fieldErrs) add(field, format string, args ...any) {
	*fe = append(*fe, &FieldError{Field: field, Index: -1, Err: fmt.Errorf(format, args...)})
}

// addAt records a problem with element i of field.
func (fe *fieldErrs) addAt(field string, i int, format string, args ...any) {
	*fe = append(*fe, &FieldError{Field: field, Index: i, Err: fmt.Errorf(format, args...)})
}

// ConfigError lists every problem found in a Config, each a *FieldError.
type ConfigError struct {
	Errs []error
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "tunnel: invalid config (%d problem", len(e.Errs))
	if len(e.Errs) != 1 {
		b.WriteString("s")
	}
	b.WriteString("):")
	for _, err := range e.Errs {
		b.WriteString("\n  - ")
		b.WriteString(err.Error())
	}
	return b.String()
}

// Unwrap returns the individual problems, for errors.Is and errors.As.
func (e *ConfigError) Unwrap() []error { return e.Errs }

// withDefaults returns a copy of c with zero fields defaulted.
func (c Config) withDefaults() Config {
	if c.ListenAddr == "" {
		c.ListenAddr = DefaultListenAddr
	}
	if !c.Pool.IsValid() {
		c.Pool = DefaultPool
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.DPD == 0 {
		c.DPD = DefaultDPD
	}
	if c.Keepalive == 0 {
		c.Keepalive = DefaultKeepalive
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = DefaultSessionTimeout
	}
	if c.ReconnectGrace == 0 {
		c.ReconnectGrace = DefaultReconnectGrace
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.DNS = append([]netip.Addr(nil), c.DNS...)
	c.SearchDomains = append([]string(nil), c.SearchDomains...)
	c.SplitInclude = append([]netip.Prefix(nil), c.SplitInclude...)
	c.SplitExclude = append([]netip.Prefix(nil), c.SplitExclude...)
	c.HostAddrs = append([]netip.Addr(nil), c.HostAddrs...)
	c.ProxyProtocolFrom = append([]netip.Prefix(nil), c.ProxyProtocolFrom...)
	c.BanExempt = append([]netip.Prefix(nil), c.BanExempt...)
	c.Proxy.Exclude = append([]string(nil), c.Proxy.Exclude...)
	return c
}

// Validate reports every problem in c (after defaults) at once, as a
// *ConfigError of *FieldError values, or nil.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs fieldErrs

	if c.Authenticator == nil {
		errs.add("Authenticator", "required")
	}
	if c.DTLS < DTLSAuto || c.DTLS > DTLSOff {
		errs.add("DTLS", "mode %d unknown (want DTLSAuto, DTLSPSK, DTLSLegacy or DTLSOff)", c.DTLS)
	}
	if c.DTLSPort < 0 || c.DTLSPort > 65535 {
		errs.add("DTLSPort", "%d out of range [0, 65535]", c.DTLSPort)
	}
	if c.MTU < MinMTU || c.MTU > MaxMTU {
		errs.add("MTU", "%d out of range [%d, %d]", c.MTU, MinMTU, MaxMTU)
	}
	if !c.Pool.Addr().Is4() {
		errs.add("Pool", "%s: must be an IPv4 prefix", c.Pool)
	} else if c.Pool.Bits() > 30 {
		errs.add("Pool", "%s: too small (need at least a /30: network, gateway, one client, broadcast)", c.Pool)
	} else if c.Pool != c.Pool.Masked() {
		errs.add("Pool", "%s: host bits set (did you mean %s?)", c.Pool, c.Pool.Masked())
	}
	errs = append(errs, c.validatePool6()...)
	for i, a := range c.DNS {
		if !a.IsValid() || a.IsUnspecified() {
			errs.addAt("DNS", i, "%v: not a usable address", a)
		}
	}
	for i, d := range c.SearchDomains {
		if err := dnsname.Check(d); err != nil {
			errs.addAt("SearchDomains", i, "%q: %v", d, err)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"DPD", c.DPD}, {"Keepalive", c.Keepalive}, {"SessionTimeout", c.SessionTimeout}, {"ReconnectGrace", c.ReconnectGrace}} {
		if d.v < time.Second {
			errs.add(d.name, "%v: must be at least 1s", d.v)
		}
	}
	if c.DrainDelay < 0 {
		errs.add("DrainDelay", "%v: must not be negative", c.DrainDelay)
	}
	if c.MaxSessions < 0 {
		errs.add("MaxSessions", "%d: must not be negative (0: no limit)", c.MaxSessions)
	}
	errs = append(errs, c.validateSite()...)
	for _, f := range []struct {
		name string
		v    []netip.Prefix
	}{{"ProxyProtocolFrom", c.ProxyProtocolFrom}, {"BanExempt", c.BanExempt}} {
		for i, p := range f.v {
			switch {
			case !p.IsValid():
				errs.addAt(f.name, i, "%v: not a network", p)
			case p != p.Masked():
				errs.addAt(f.name, i, "%s: host bits set (did you mean %s?)", p, p.Masked())
			}
		}
	}
	if c.IdleTimeout < 0 {
		errs.add("IdleTimeout", "%v: must not be negative (0 disables it)", c.IdleTimeout)
	}
	if c.UDPIdleTimeout != 0 && c.UDPIdleTimeout < time.Second {
		errs.add("UDPIdleTimeout", "%v: must be at least 1s (0: %v)", c.UDPIdleTimeout, netstack.DefaultUDPIdleTimeout)
	}
	if strings.ContainsAny(c.Banner, "\r\n") {
		errs.add("Banner", "must be a single line (it travels in an HTTP header)")
	}
	for _, err := range policy.Validate(c.SplitInclude, c.SplitExclude, c.Pool, c.Pool6) {
		errs = append(errs, ruleFieldError(err))
	}
	errs = append(errs, c.Proxy.validate()...)
	if p := c.SecretPath; p != "" && (!strings.HasPrefix(p, "/") || p == "/" || strings.HasSuffix(p, "/") ||
		strings.ContainsAny(p, " ?#%\t\r\n")) {
		errs.add("SecretPath", "%q: want a path like /vpn-4f9c (leading '/', no trailing '/', no query)", p)
	}
	if c.SSO != nil && c.SSO.BasePath() != c.SecretPath {
		errs.add("SSO", "its public URL's path %q must be SecretPath %q: the browser's steps are served there", c.SSO.BasePath(), c.SecretPath)
	}
	if len(errs) == 0 {
		return nil
	}
	return &ConfigError{Errs: errs}
}

// ruleFieldError places a route rule's problem (a *policy.RuleError) on
// the Config field its list came from, naming the list by that field.
func ruleFieldError(err error) error {
	var re *policy.RuleError
	if !errors.As(err, &re) {
		return &FieldError{Field: "SplitInclude", Index: -1, Err: err}
	}
	r := *re
	switch re.List {
	case "include":
		r.List = "SplitInclude"
		return &FieldError{Field: r.List, Index: r.Index, Err: &r}
	case "exclude":
		r.List = "SplitExclude"
		return &FieldError{Field: r.List, Index: r.Index, Err: &r}
	default: // "pool": the pool (Pool, or Pool6 when an IPv6 prefix) overlaps include rule Index
		if re.Prefix.Addr().Is6() {
			return &FieldError{Field: "Pool6", Index: -1, Err: &r}
		}
		return &FieldError{Field: "Pool", Index: -1, Err: &r}
	}
}

// reservedFor6 are the IPv6 ranges Pool6 may not overlap, each a range
// whose addresses cannot be a tunnel client's (RFC 4291 2.4, 2.5.5.2).
var reservedFor6 = []struct {
	p    netip.Prefix
	what string
}{
	{netip.MustParsePrefix("::/127"), "the unspecified and loopback addresses"},
	{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped addresses"},
	{netip.MustParsePrefix("fe80::/10"), "link-local addresses"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// validatePool6 checks the optional IPv6 pool.
func (c Config) validatePool6() fieldErrs {
	var errs fieldErrs
	p := c.Pool6
	if p == (netip.Prefix{}) {
		return nil
	}
	switch {
	case !p.IsValid() || !p.Addr().Is6() || p.Addr().Is4In6():
		errs.add("Pool6", "%s: must be an IPv6 prefix (IPv4 addresses come from Pool)", p)
	case p.Addr().Zone() != "":
		errs.add("Pool6", "%s: must not have a zone", p)
	case p.Bits() > 126:
		// The network address and the kept-back first address, plus one client.
		errs.add("Pool6", "%s: too small (need at least a /126: network, the gateway's, one client)", p)
	case p != p.Masked():
		errs.add("Pool6", "%s: host bits set (did you mean %s?)", p, p.Masked())
	default:
		for _, r := range reservedFor6 {
			if r.p.Overlaps(p) {
				errs.add("Pool6", "%s: overlaps %s (%s)", p, r.what, r.p)
			}
		}
	}
	return errs
}

// poolClients returns the number of client addresses in a pool: the
// prefix less the network address, the IPv4 broadcast address and the
// gateway's (IPv4) or kept-back (IPv6) first address, capped at
// ippool.MaxAddrs (which counts from the address after the network's).
func poolClients(p netip.Prefix) int {
	hostBits := p.Addr().BitLen() - p.Bits()
	if hostBits > 20 { // 2^21 > ippool.MaxAddrs (2^20)
		return ippool.MaxAddrs - 1
	}
	n := 1<<hostBits - 1 // past the network address
	if p.Addr().Is4() {
		n-- // broadcast
	}
	return min(n, ippool.MaxAddrs) - 1
}

// validateSite checks Site against the pool and MaxSessions.
func (c Config) validateSite() fieldErrs {
	var errs fieldErrs
	s := c.Site
	if s.Strict && s.Store == nil {
		errs.add("Site.Strict", "strict mode needs Site.Store")
	}
	if s.Servers < 0 {
		errs.add("Site.Servers", "%d: must not be negative (0: a single server)", s.Servers)
		return errs
	}
	if s.ServerIndex < 0 || s.ServerIndex > max(s.Servers, 1) || (s.Servers == 0 && s.ServerIndex > 0) {
		errs.add("Site.ServerIndex", "%d: want 1 to the site's server count (%d), or 0 to derive it from the server name", s.ServerIndex, s.Servers)
	}
	if !c.Pool.Addr().Is4() || c.Pool.Bits() > 30 || c.Pool != c.Pool.Masked() {
		return errs // reported as a Pool problem already
	}
	servers := max(s.Servers, 1)
	pools := []struct {
		field string
		p     netip.Prefix
	}{{"Pool", c.Pool}}
	if c.Pool6.IsValid() && len(c.validatePool6()) == 0 {
		pools = append(pools, struct { // every session leases one address of each family
			field string
			p     netip.Prefix
		}{"Pool6", c.Pool6})
	}
	for _, pl := range pools {
		n := poolClients(pl.p)
		switch {
		case servers > n:
			errs.add("Site.Servers", "%d: more servers than client addresses in %s %s (%d)", servers, pl.field, pl.p, n)
		case c.MaxSessions > 0 && servers*c.MaxSessions > n:
			// The pool is shared by the whole site: every server may be full at once.
			errs.add(pl.field, "%s holds %d client addresses, fewer than %d server(s) × %d sessions each = %d (the pool is shared by the whole site)",
				pl.p, n, servers, c.MaxSessions, servers*c.MaxSessions)
		}
	}
	return errs
}

// stride returns the pool stride count and this server's stride
// (0-based) for Site.
func (s Site) stride() (count, own int) {
	count = max(s.Servers, 1)
	switch {
	case s.ServerIndex > 0:
		return count, s.ServerIndex - 1
	case count == 1:
		return 1, 0
	}
	name := s.name()
	h := fnv.New32a()
	_, _ = h.Write([]byte(name))
	return count, int(h.Sum32() % uint32(count))
}
