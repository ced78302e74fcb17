package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/underpass/underpass/internal/core/cstp"
)

// MaxRules is the most include plus exclude rules a site may have (SPEC
// R-C3, matching the reference product's limit).
const MaxRules = 500

// RuleError describes one bad rule. Validate and ParsePrefixes return only
// *RuleError values.
type RuleError struct {
	// List names the list the rule is in: "include", "exclude", "pool", or
	// the list name given to ParsePrefixes or New ("dns", "host_addrs").
	List string
	// Index is the rule's position in List. For List "pool" it is the index
	// of the include rule the pool overlaps.
	Index int
	// Prefix is the rule (for "pool": the pool). Zero when Input did not
	// parse.
	Prefix netip.Prefix
	// Input is the text that failed to parse (ParsePrefixes only).
	Input string
	// Reason says what is wrong and, where possible, what to write instead.
	Reason string
}

func (e *RuleError) Error() string {
	switch {
	case e.Input != "" || !e.Prefix.IsValid():
		return fmt.Sprintf("%s[%d] %q: %s", e.List, e.Index, e.Input, e.Reason)
	case e.List == "pool":
		return fmt.Sprintf("pool %s: %s", e.Prefix, e.Reason)
	default:
		return fmt.Sprintf("%s[%d] %s: %s", e.List, e.Index, e.Prefix, e.Reason)
	}
}

// Validate checks split-tunnel rules (SPEC R-C3, R-C1) and returns every
// problem at once, each a *RuleError, in a stable order:
//
//   - more than MaxRules include plus exclude rules (reported once, on the
//     first rule over the limit);
//   - an invalid (zero) prefix;
//   - a rule whose network address is 0.0.0.0 or :: (it covers the default
//     route; a full tunnel is written as no include rules);
//   - a prefix not in canonical form: host bits set (10.1.2.3/8 should be
//     10.0.0.0/8) or IPv4-mapped IPv6 (::ffff:10.0.0.0/104 should be
//     10.0.0.0/8);
//   - a duplicate within a list, or a prefix both included and excluded;
//   - an include rule inside loopback (127.0.0.0/8, ::1/128): see
//     insideLoopback;
//   - a pool overlapping an include rule (List "pool", Index of the rule,
//     Prefix the pool): each of pools (the IPv4 pool, and a dual-stack
//     gateway's IPv6 pool) in turn.
//
// An invalid pool is not reported here (the caller validates the pool
// itself); it only skips the overlap check.
func Validate(include, exclude []netip.Prefix, pools ...netip.Prefix) []error {
	var errs []error
	add := func(list string, i int, p netip.Prefix, format string, args ...any) {
		errs = append(errs, &RuleError{List: list, Index: i, Prefix: p, Reason: fmt.Sprintf(format, args...)})
	}
	if n := len(include) + len(exclude); n > MaxRules {
		list, i, p := "include", MaxRules, netip.Prefix{}
		if len(include) <= MaxRules {
			list, i = "exclude", MaxRules-len(include)
			p = exclude[i]
		} else {
			p = include[i]
		}
		add(list, i, p, "too many rules: %d include + %d exclude = %d, at most %d in total",
			len(include), len(exclude), n, MaxRules)
	}
	firstInclude := map[netip.Prefix]int{}
	for _, l := range []struct {
		name  string
		rules []netip.Prefix
	}{{"include", include}, {"exclude", exclude}} {
		first := map[netip.Prefix]int{}
		for i, p := range l.rules {
			if !p.IsValid() {
				add(l.name, i, p, "not a valid prefix")
				continue
			}
			c := canonical(p)
			if c.Addr().IsUnspecified() {
				if l.name == "include" {
					add(l.name, i, p, "network address %s covers the default route: for a full tunnel use no include rules", c.Addr())
				} else {
					add(l.name, i, p, "network address %s covers the default route: excluding it leaves nothing to tunnel", c.Addr())
				}
			}
			if c != p {
				add(l.name, i, p, "not in canonical form: write %s", c)
			}
			if l.name == "include" && insideLoopback(c) {
				add(l.name, i, p, "loopback cannot be reached through the tunnel: to reach a service on the gateway host, "+
					"include that host's own address as a /32 or /128 and have the service listen there")
			}
			if j, ok := first[c]; ok {
				add(l.name, i, p, "duplicate of %s[%d]", l.name, j)
				continue
			}
			first[c] = i
			if l.name == "include" {
				firstInclude[c] = i
			} else if j, ok := firstInclude[c]; ok {
				add(l.name, i, p, "also include[%d]: a prefix cannot be both included and excluded", j)
			}
		}
	}
	for _, pool := range pools {
		if !pool.IsValid() {
			continue
		}
		pc := canonical(pool)
		for i, p := range include {
			if p.IsValid() && canonical(p).Overlaps(pc) {
				add("pool", i, pool, "client address pool overlaps include[%d] %s", i, p)
			}
		}
	}
	return errs
}

// canonical returns p masked, with an IPv4-mapped IPv6 prefix of at least
// /96 turned into its IPv4 form (/96 is where the IPv4 part starts).
func canonical(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// ParsePrefixes parses a list of rules. Each entry is a CIDR (10.0.0.0/8,
// fd00::/8), an IPv4 address with a dotted netmask (10.0.0.0/255.0.0.0), or
// a bare address (a /32 or /128). Surrounding spaces are ignored. Prefixes
// are returned as written (not masked), so Validate can point out
// non-canonical ones; entries that do not parse are left out and reported
// as *RuleError naming list, index and input.
func ParsePrefixes(list string, ss []string) ([]netip.Prefix, []error) {
	var (
		out  []netip.Prefix
		errs []error
	)
	for i, s := range ss {
		p, reason := parsePrefix(strings.TrimSpace(s))
		if reason != "" {
			errs = append(errs, &RuleError{List: list, Index: i, Input: s, Reason: reason})
			continue
		}
		out = append(out, p)
	}
	return out, errs
}

// parsePrefix parses one entry with cstp.ParseRoute, the one parser of
// routes and dotted netmasks, returning its reason when it fails.
func parsePrefix(s string) (netip.Prefix, string) {
	p, err := cstp.ParseRoute(s)
	if err != nil {
		var re *cstp.RouteError
		if errors.As(err, &re) {
			return netip.Prefix{}, re.Reason
		}
		return netip.Prefix{}, err.Error()
	}
	return p, ""
}

// insideLoopback reports whether the canonical prefix p lies inside
// loopback (127.0.0.0/8 or ::1/128), so that it would name the gateway
// host's loopback for Policy.Allow (rule 4). Such an include is refused:
// every client packet to a loopback destination arrives at the gateway's
// gVisor stack on a non-loopback NIC, which drops it as a martian (RFC 1122
// 3.2.1.3 (g): 127/8 must not appear outside a host; RFC 4291 2.5.3 for
// ::1), so the client's flow would hang without an answer. Left unnamed,
// loopback stays denied and the client gets a prompt refusal (a RST or an
// ICMP administratively-prohibited). A broader include (126.0.0.0/7, say)
// is accepted: it does not name loopback, whose part of it stays denied.
func insideLoopback(p netip.Prefix) bool {
	return p.Bits() >= loopback4.Bits() && loopback4.Contains(p.Addr()) || p == loopback6
}

var (
	loopback4 = netip.MustParsePrefix("127.0.0.0/8")
	loopback6 = netip.MustParsePrefix("::1/128")
)
