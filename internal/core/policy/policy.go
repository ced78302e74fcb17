// Package policy decides which destinations a tunnel client may reach and
// which split-tunnel routes the gateway pushes (SPEC R-C3, R-D3).
//
// Clients are told their routes, but a client may install whatever routes it
// likes, so the gateway enforces them: every packet a client sends is checked
// with Policy.Allow before the gateway re-originates its flow. Allow runs per
// packet, so New compiles the rules into a sorted table of disjoint address
// ranges per address family and Allow is a binary search over it: no
// allocation, about log2(2*rules) comparisons.
//
// The rules, first match wins (see Policy.Allow for the exact list): the
// gateway and pushed DNS addresses are always reachable; multicast,
// broadcast and unspecified never; other clients never; the gateway host
// itself (loopback, link-local, its own addresses) only if an include rule
// names it (lies inside that special range, or is the host's own /32); then exclude, then include (none = everything).
package policy

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
)

// Config is the input to New.
type Config struct {
	// Include lists the split-include routes; empty means a full tunnel
	// (everything not otherwise blocked is reachable).
	Include []netip.Prefix
	// Exclude lists destinations clients may not reach through the tunnel.
	Exclude []netip.Prefix
	// Pool is the client address range: never reachable, so sessions cannot
	// reach each other.
	Pool netip.Prefix
	// Pool6 is the optional IPv6 client address range of dual-stack
	// sessions: never reachable either. The zero Prefix: none.
	Pool6 netip.Prefix
	// Gateway is the gateway's in-tunnel address: always reachable. May be
	// the zero Addr.
	Gateway netip.Addr
	// DNS lists the pushed DNS servers: always reachable (the gateway
	// intercepts them).
	DNS []netip.Addr
	// HostAddrs lists the gateway host's own addresses: blocked unless an
	// include rule names them (see Allow).
	HostAddrs []netip.Addr
}

// Policy is a compiled, immutable Config; safe for concurrent use.
type Policy struct {
	cfg Config // normalised: addresses unmapped, zones dropped
	v4  table4
	v6  table6
}

// Special ranges (R-D3). Each entry's reason is in its comment.
var (
	// Blocked as "not a host": multicast, limited broadcast, and the
	// unspecified address. 0.0.0.0/8 as a whole, because Linux delivers
	// 0.0.0.0 to the local host and rejects the rest of 0/8 as a
	// destination (RFC 1122 3.2.1.3: "this network", never a destination).
	notHost = []netip.Prefix{
		netip.MustParsePrefix("224.0.0.0/4"),        // IPv4 multicast
		netip.MustParsePrefix("255.255.255.255/32"), // limited broadcast
		netip.MustParsePrefix("0.0.0.0/8"),          // unspecified / "this network"
		netip.MustParsePrefix("ff00::/8"),           // IPv6 multicast
		netip.MustParsePrefix("::/128"),             // IPv6 unspecified
	}
	// The gateway host itself, blocked unless an include rule names it (see Allow).
	hostRanges = []netip.Prefix{
		netip.MustParsePrefix("127.0.0.0/8"),    // IPv4 loopback
		netip.MustParsePrefix("169.254.0.0/16"), // IPv4 link-local, incl. 169.254.169.254 (cloud metadata)
		netip.MustParsePrefix("::1/128"),        // IPv6 loopback
		netip.MustParsePrefix("fe80::/10"),      // IPv6 link-local
		// Cloud metadata services at IPv6 addresses, which a host socket
		// reaches without crossing any router: AWS IMDS (fd00:ec2::254,
		// on Nitro instances with IPv6) and Google Compute Engine's
		// metadata server on IPv6-only VMs (fd20:ce::254).
		netip.MustParsePrefix("fd00:ec2::254/128"),
		netip.MustParsePrefix("fd20:ce::254/128"),
	}
)

// New compiles cfg. It fails (with the *RuleError values of Validate, and
// for bad DNS or HostAddrs entries, joined) when the rules are invalid or
// Pool is not a valid masked prefix.
func New(cfg Config) (*Policy, error) {
	pools := []netip.Prefix{cfg.Pool}
	if cfg.Pool6.IsValid() {
		pools = append(pools, cfg.Pool6)
	}
	errs := Validate(cfg.Include, cfg.Exclude, pools...)
	if !cfg.Pool.IsValid() || cfg.Pool != canonical(cfg.Pool) {
		errs = append(errs, &RuleError{List: "pool", Index: -1, Prefix: cfg.Pool, Reason: "must be a valid prefix in canonical form"})
	}
	if cfg.Pool6.IsValid() && (!cfg.Pool6.Addr().Is6() || cfg.Pool6.Addr().Is4In6() || cfg.Pool6 != cfg.Pool6.Masked()) {
		errs = append(errs, &RuleError{List: "pool", Index: -1, Prefix: cfg.Pool6, Reason: "an IPv6 pool must be a masked IPv6 prefix"})
	}
	c := Config{
		Include: canonicalAll(cfg.Include),
		Exclude: canonicalAll(cfg.Exclude),
		Pool:    cfg.Pool,
		Pool6:   cfg.Pool6,
		Gateway: cfg.Gateway.Unmap().WithZone(""),
	}
	for _, l := range []struct {
		name string
		in   []netip.Addr
		out  *[]netip.Addr
	}{{"dns", cfg.DNS, &c.DNS}, {"host_addrs", cfg.HostAddrs, &c.HostAddrs}} {
		for i, a := range l.in {
			if !a.IsValid() {
				errs = append(errs, &RuleError{List: l.name, Index: i, Reason: "not a valid address"})
				continue
			}
			*l.out = append(*l.out, a.Unmap().WithZone(""))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	p := &Policy{cfg: c}
	p.compile()
	return p, nil
}

func canonicalAll(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		out[i] = canonical(p)
	}
	return out
}

// Allow reports whether a client may send a packet to dst. IPv4-mapped IPv6
// addresses are unmapped first. The rules, first match wins:
//
//  1. the Gateway or a DNS address: allowed;
//  2. multicast (224.0.0.0/4, ff00::/8), limited broadcast
//     (255.255.255.255), unspecified (0.0.0.0/8, ::): denied;
//  3. inside Pool or Pool6 (another client): denied;
//  4. the gateway host — loopback (127.0.0.0/8, ::1), link-local
//     (169.254.0.0/16 incl. 169.254.169.254, fe80::/10), the IPv6 cloud
//     metadata addresses (fd00:ec2::254, fd20:ce::254) and HostAddrs —
//     denied, unless an Include prefix names dst explicitly: it contains
//     dst and lies inside dst's special range (e.g. 169.254.169.254/32;
//     Validate refuses such a prefix for loopback, which the stack cannot
//     forward to), or, for a HostAddrs address, is that address's
//     own /32 or /128. A broad include such as 10.0.0.0/8 does not open a
//     host address 10.1.2.3: the operator must write 10.1.2.3/32.
//     Such an address then goes on to rules 5-7;
//  5. inside an Exclude prefix: denied;
//  6. Include empty (full tunnel): allowed;
//  7. inside an Include prefix: allowed; otherwise denied.
//
// Allow does not allocate; it is one binary search over the compiled table.
func (p *Policy) Allow(dst netip.Addr) bool {
	dst = dst.Unmap()
	if dst.Is4() {
		b := dst.As4()
		return p.v4.lookup(binary.BigEndian.Uint32(b[:]))
	}
	if dst.Is6() {
		return p.v6.lookup(u128From(dst))
	}
	return false
}

// Routes returns the routes to push to clients (copies; the caller may
// modify them). With a full tunnel (no include rules) include is empty, as
// any include would turn the client into split-tunnel mode. With split
// tunnelling, include also gets a host route (/32 or /128) for the Gateway
// and each DNS address the client would otherwise not send into the tunnel:
// one that no include contains, or that an exclude contains.
func (p *Policy) Routes() (include, exclude []netip.Prefix) {
	exclude = slices.Clone(p.cfg.Exclude)
	if len(p.cfg.Include) == 0 {
		return nil, exclude
	}
	include = slices.Clone(p.cfg.Include)
	extra := append([]netip.Addr{p.cfg.Gateway}, p.cfg.DNS...)
	for _, a := range extra {
		if !a.IsValid() {
			continue
		}
		h := netip.PrefixFrom(a, a.BitLen())
		if slices.Contains(include, h) {
			continue
		}
		if !containedBy(p.cfg.Include, a) || containedBy(p.cfg.Exclude, a) {
			include = append(include, h)
		}
	}
	return include, exclude
}

func containedBy(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// namedBy reports whether an include rule names dst explicitly: the rule
// contains dst and lies inside block, the special range dst belongs to (a
// host range, or the host address itself as a /32 or /128). So a broad
// route such as 10.0.0.0/8 never opens the gateway host by accident; the
// operator has to write 10.1.2.3/32 (or 127.0.0.0/8) to mean it.
func namedBy(include []netip.Prefix, dst netip.Addr, block netip.Prefix) bool {
	for _, p := range include {
		if p.Contains(dst) && p.Bits() >= block.Bits() && block.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// decide is the rule list of Allow, evaluated literally by linear scans.
// compile uses it once per range of the table; tests use it as the oracle.
func (p *Policy) decide(dst netip.Addr) bool {
	dst = dst.Unmap()
	c := &p.cfg
	if dst == c.Gateway || slices.Contains(c.DNS, dst) {
		return true
	}
	if containedBy(notHost, dst) {
		return false
	}
	if c.Pool.Contains(dst) || c.Pool6.Contains(dst) {
		return false
	}
	for _, hr := range hostRanges {
		if hr.Contains(dst) && !namedBy(c.Include, dst, hr) {
			return false
		}
	}
	if slices.Contains(c.HostAddrs, dst) && !namedBy(c.Include, dst, netip.PrefixFrom(dst, dst.BitLen())) {
		return false
	}
	if containedBy(c.Exclude, dst) {
		return false
	}
	if len(c.Include) == 0 {
		return true
	}
	return containedBy(c.Include, dst)
}

// compile builds the lookup tables. Every rule is a range of addresses; the
// start of each range and the address after its end are boundaries. Between
// two consecutive boundaries no rule starts or ends, so decide gives the
// same answer for every address there, and evaluating it at the boundary
// itself is enough. Adjacent ranges with the same answer are merged.
func (p *Policy) compile() {
	var ranges []netip.Prefix
	ranges = append(ranges, notHost...)
	ranges = append(ranges, hostRanges...)
	ranges = append(ranges, p.cfg.Include...)
	ranges = append(ranges, p.cfg.Exclude...)
	ranges = append(ranges, p.cfg.Pool)
	if p.cfg.Pool6.IsValid() {
		ranges = append(ranges, p.cfg.Pool6)
	}
	for _, a := range append(append([]netip.Addr{p.cfg.Gateway}, p.cfg.DNS...), p.cfg.HostAddrs...) {
		if a.IsValid() {
			ranges = append(ranges, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	for _, is4 := range []bool{true, false} {
		bounds := []u128{{}} // the family's first address
		for _, r := range ranges {
			if r.Addr().Is4() != is4 {
				continue
			}
			lo, hi := prefixRange(r)
			bounds = append(bounds, lo)
			if next, ok := hi.inc(is4); ok {
				bounds = append(bounds, next)
			}
		}
		slices.SortFunc(bounds, u128.cmp)
		bounds = slices.Compact(bounds)
		var (
			starts []u128
			allow  []bool
		)
		for _, b := range bounds {
			v := p.decide(b.addr(is4))
			if len(allow) > 0 && allow[len(allow)-1] == v {
				continue
			}
			starts = append(starts, b)
			allow = append(allow, v)
		}
		if is4 {
			p.v4.starts = make([]uint32, len(starts))
			for i, s := range starts {
				p.v4.starts[i] = uint32(s.lo)
			}
			p.v4.allow = allow
		} else {
			p.v6 = table6{starts: starts, allow: allow}
		}
	}
}

// table4 maps IPv4 addresses to verdicts: range i is
// [starts[i], starts[i+1]) and starts[0] == 0.
type table4 struct {
	starts []uint32
	allow  []bool
}

func (t *table4) lookup(x uint32) bool {
	// Find the last start <= x; starts[0] is 0, so there is one.
	lo, hi := 0, len(t.starts)
	for hi-lo > 1 {
		m := int(uint(lo+hi) >> 1)
		if t.starts[m] <= x {
			lo = m
		} else {
			hi = m
		}
	}
	return t.allow[lo]
}

// table6 is table4 for IPv6.
type table6 struct {
	starts []u128
	allow  []bool
}

func (t *table6) lookup(x u128) bool {
	lo, hi := 0, len(t.starts)
	for hi-lo > 1 {
		m := int(uint(lo+hi) >> 1)
		if t.starts[m].cmp(x) <= 0 {
			lo = m
		} else {
			hi = m
		}
	}
	return t.allow[lo]
}

// u128 is an address as a number; IPv4 uses the low 32 bits.
type u128 struct{ hi, lo uint64 }

func u128From(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func (x u128) addr(is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(x.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], x.hi)
	binary.BigEndian.PutUint64(b[8:], x.lo)
	return netip.AddrFrom16(b)
}

func (x u128) cmp(y u128) int {
	switch {
	case x.hi < y.hi || x.hi == y.hi && x.lo < y.lo:
		return -1
	case x == y:
		return 0
	}
	return 1
}

// inc returns x+1, or false if x is the family's last address.
func (x u128) inc(is4 bool) (u128, bool) {
	if is4 {
		if x.lo >= 1<<32-1 {
			return x, false
		}
		return u128{lo: x.lo + 1}, true
	}
	if x.lo != ^uint64(0) {
		return u128{x.hi, x.lo + 1}, true
	}
	if x.hi != ^uint64(0) {
		return u128{x.hi + 1, 0}, true
	}
	return x, false
}

// prefixRange returns the first and last address of a masked prefix.
func prefixRange(p netip.Prefix) (lo, hi u128) {
	lo = u128From(p.Masked().Addr())
	host := p.Addr().BitLen() - p.Bits()
	hi = lo
	switch {
	case host >= 64:
		hi.lo = ^uint64(0)
		hi.hi |= ^uint64(0) >> (128 - host) // the low host-64 bits (a shift by 64 gives 0)
	case host > 0:
		hi.lo |= (uint64(1) << host) - 1
	}
	return lo, hi
}
