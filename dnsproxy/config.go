package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Defaults applied by [New] to zero Config fields.
const (
	// DefaultNDots is resolv.conf's default: only dotless names are expanded.
	DefaultNDots = 1
	// DefaultTimeout bounds one upstream attempt: a healthy recursive
	// resolver answers a cold lookup well within it.
	DefaultTimeout = 2 * time.Second
	// DefaultQueryTimeout bounds a whole client query. It is below glibc's
	// 5 s retransmission timeout so the client gets SERVFAIL, not silence.
	DefaultQueryTimeout = 4 * time.Second
	// DefaultDeadTime is how long a server that timed out is skipped: long
	// enough to spare clients repeated timeouts, short enough to notice
	// recovery quickly.
	DefaultDeadTime = 30 * time.Second
	// DefaultCacheEntries bounds the cache's entry count (a few records per
	// device for tens of thousands of devices).
	DefaultCacheEntries = 65536
	// DefaultCacheBytes bounds the cache's memory estimate.
	DefaultCacheBytes = 32 << 20
	// DefaultMaxTTL caps positive caching so corporate record changes
	// (failovers) reach clients within an hour.
	DefaultMaxTTL = time.Hour
	// DefaultNegativeTTL caps negative caching so newly created corporate
	// names resolve within a minute.
	DefaultNegativeTTL = time.Minute
	// DefaultMaxInFlight bounds queries being resolved concurrently on
	// the slow path (cache misses); each holds a goroutine and a few KiB.
	DefaultMaxInFlight = 1024
)

// Limits enforced by [New].
const (
	// maxSearch bounds the search list: each suffix may cost an upstream
	// round trip per short-name lookup, all within QueryTimeout.
	maxSearch = 16
	// maxNDots is resolv.conf's cap on ndots.
	maxNDots = 15
	// maxUpstreams bounds the failover list; more servers cannot be tried
	// within one query timeout anyway.
	maxUpstreams = 8
)

// Dialer opens outbound connections to upstream servers. net.Dialer and
// the gateway's netstack.Dialer satisfy it.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config configures a [Server]. The zero value of every optional field
// selects the documented default.
type Config struct {
	// Upstreams are the corporate DNS servers, "ip" or "ip:port" (port 53
	// by default), tried in order with failover. At least one is required.
	Upstreams []string
	// Public are the resolvers for names outside the internal domains,
	// same format. Empty means such names are answered REFUSED.
	Public []string
	// Search is the DNS suffix search list; the first is the default
	// domain. Every suffix is also an internal domain.
	Search []string
	// Domains are extra internal domains (besides Search) whose names go
	// to Upstreams. "." makes every name internal.
	Domains []string
	// NDots: names with fewer dots are tried with each search suffix
	// first. Default DefaultNDots.
	NDots int

	// Timeout bounds one upstream attempt. Default DefaultTimeout.
	Timeout time.Duration
	// QueryTimeout bounds the resolution of one client query, failover and
	// search expansion included. Default DefaultQueryTimeout.
	QueryTimeout time.Duration
	// DeadTime is how long a server that timed out is skipped. Default
	// DefaultDeadTime.
	DeadTime time.Duration

	// CacheEntries bounds the number of cached answers. Default
	// DefaultCacheEntries; negative disables the cache.
	CacheEntries int
	// CacheBytes bounds the cache's memory estimate. Default
	// DefaultCacheBytes.
	CacheBytes int
	// MinTTL raises record TTLs below it (0: keep them).
	MinTTL time.Duration
	// MaxTTL caps positive answers' TTLs. Default DefaultMaxTTL.
	MaxTTL time.Duration
	// NegativeTTL caps how long NXDOMAIN/NODATA answers are cached.
	// Default DefaultNegativeTTL.
	NegativeTTL time.Duration

	// MaxInFlight bounds concurrently resolving UDP/TCP queries; beyond
	// it UDP queries are dropped (the client retries). Default
	// DefaultMaxInFlight.
	MaxInFlight int

	// Dialer reaches the upstream servers. Default &net.Dialer{}.
	Dialer Dialer
	// Logger receives upstream state changes and internal errors. Nil
	// means silent.
	Logger *slog.Logger
	// Metrics, if set, is called for every query and upstream exchange.
	Metrics Metrics
	// AccessLog, if set, is called once per client query (access-log
	// level 2: DNS flows).
	AccessLog func(AccessEntry)
}

// ConfigError reports one invalid Config field.
type ConfigError struct {
	Field string // e.g. "Upstreams[1]"
	Value string // the offending value, if any
	Err   error
}

func (e *ConfigError) Error() string {
	if e.Value != "" {
		return fmt.Sprintf("dnsproxy: Config.%s %q: %v", e.Field, e.Value, e.Err)
	}
	return fmt.Sprintf("dnsproxy: Config.%s: %v", e.Field, e.Err)
}

func (e *ConfigError) Unwrap() error { return e.Err }

// normalize validates c and returns a copy with defaults applied. Every
// problem is reported, joined.
func (c Config) normalize() (Config, error) {
	var errs []error
	bad := func(field, value, format string, args ...any) {
		errs = append(errs, &ConfigError{Field: field, Value: value, Err: fmt.Errorf(format, args...)})
	}

	servers := func(field string, in []string, required bool) []string {
		if required && len(in) == 0 {
			bad(field, "", "at least one server is required")
		}
		if len(in) > maxUpstreams {
			bad(field, "", "%d servers, at most %d are supported", len(in), maxUpstreams)
		}
		out := make([]string, 0, len(in))
		for i, s := range in {
			ap, err := parseServer(s)
			if err != nil {
				bad(fmt.Sprintf("%s[%d]", field, i), s, "%v", err)
				continue
			}
			out = append(out, ap.String())
		}
		return out
	}
	c.Upstreams = servers("Upstreams", c.Upstreams, true)
	c.Public = servers("Public", c.Public, false)

	domains := func(field string, in []string, rootOK bool) []string {
		out := make([]string, 0, len(in))
		for i, d := range in {
			n, err := normalizeDomain(d, rootOK)
			if err != nil {
				bad(fmt.Sprintf("%s[%d]", field, i), d, "%v", err)
				continue
			}
			out = append(out, n)
		}
		return out
	}
	if len(c.Search) > maxSearch {
		bad("Search", "", "%d suffixes, at most %d are supported", len(c.Search), maxSearch)
	}
	c.Search = domains("Search", c.Search, false)
	c.Domains = domains("Domains", c.Domains, true)

	switch {
	case c.NDots == 0:
		c.NDots = DefaultNDots
	case c.NDots < 0 || c.NDots > maxNDots:
		bad("NDots", fmt.Sprint(c.NDots), "must be between 1 and %d", maxNDots)
	}

	dur := func(field string, d *time.Duration, def time.Duration) {
		switch {
		case *d == 0:
			*d = def
		case *d < 0:
			bad(field, d.String(), "must not be negative")
		}
	}
	dur("Timeout", &c.Timeout, DefaultTimeout)
	dur("QueryTimeout", &c.QueryTimeout, DefaultQueryTimeout)
	dur("DeadTime", &c.DeadTime, DefaultDeadTime)
	dur("MaxTTL", &c.MaxTTL, DefaultMaxTTL)
	dur("NegativeTTL", &c.NegativeTTL, DefaultNegativeTTL)
	if c.MinTTL < 0 {
		bad("MinTTL", c.MinTTL.String(), "must not be negative")
	}
	if c.MinTTL > c.MaxTTL {
		bad("MinTTL", c.MinTTL.String(), "exceeds MaxTTL %v", c.MaxTTL)
	}
	if c.Timeout > c.QueryTimeout {
		bad("Timeout", c.Timeout.String(), "exceeds QueryTimeout %v", c.QueryTimeout)
	}
	if c.CacheEntries == 0 {
		c.CacheEntries = DefaultCacheEntries
	}
	switch {
	case c.CacheBytes == 0:
		c.CacheBytes = DefaultCacheBytes
	case c.CacheBytes < 0:
		bad("CacheBytes", fmt.Sprint(c.CacheBytes), "must not be negative")
	}
	switch {
	case c.MaxInFlight == 0:
		c.MaxInFlight = DefaultMaxInFlight
	case c.MaxInFlight < 0:
		bad("MaxInFlight", fmt.Sprint(c.MaxInFlight), "must not be negative")
	}
	if c.Dialer == nil {
		c.Dialer = &net.Dialer{}
	}
	return c, errors.Join(errs...)
}

// parseServer accepts "ip" or "ip:port". Host names are rejected: resolving
// them would need DNS before the DNS proxy works.
func parseServer(s string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		if a.Zone() != "" {
			return netip.AddrPort{}, errors.New("zoned addresses are not supported")
		}
		return netip.AddrPortFrom(a, 53), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, errors.New(`want "ip" or "ip:port" (host names are not accepted)`)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, errors.New("port 0")
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, errors.New("zoned addresses are not supported")
	}
	return ap, nil
}

// normalizeDomain returns d as a lower-case FQDN.
func normalizeDomain(d string, rootOK bool) (string, error) {
	d = strings.ToLower(strings.TrimSpace(d))
	if d == "." || d == "" {
		if rootOK && d == "." {
			return ".", nil
		}
		return "", errors.New("not a domain name")
	}
	d = strings.TrimSuffix(d, ".")
	if len(d) > 253 { // 253: longest presentation name (255 wire bytes)
		return "", errors.New("name too long")
	}
	for l := range strings.SplitSeq(d, ".") {
		if !validLabel(l) {
			return "", errors.New("not a domain name (letters, digits, '-' and '_' in labels of 1 to 63 bytes)")
		}
	}
	return d + ".", nil
}

// validLabel accepts host-name labels, plus '_' for service labels.
func validLabel(l string) bool {
	if len(l) == 0 || len(l) > 63 {
		return false
	}
	for _, c := range []byte(l) {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
