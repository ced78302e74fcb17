package cstp

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// The route codec: how a prefix travels in X-CSTP-Split-Include and
// X-CSTP-Split-Exclude, and how configuration files write one. It is the one
// place that turns a dotted IPv4 netmask into a prefix length.
//
//	IPv4: 10.0.0.0/255.0.0.0 (what openconnect and ocserv exchange; a
//	      prefix length, 10.0.0.0/8, is accepted on input)
//	IPv6: fd00::/8 (CIDR only: a dotted mask makes no sense for 128 bits)
//	host: 192.0.2.7 or fd00::1 (no mask: a /32 or /128)

// RouteError is the error ParseRoute returns.
type RouteError struct {
	Input  string // the text that failed to parse
	Reason string // what is wrong, e.g. "netmask 255.0.255.0 is not contiguous"
}

func (e *RouteError) Error() string {
	return fmt.Sprintf("cstp: route %q: %s", e.Input, e.Reason)
}

// FormatRoute writes p as openconnect expects it in a split route header:
// an IPv4 prefix as address/dotted-netmask (10.0.0.0/255.0.0.0), anything
// else (IPv6, including IPv4-mapped IPv6) in CIDR notation. The address is
// written as it is in p, host bits included; the caller masks if it wants
// a network address. An invalid p yields "invalid Prefix", as p.String().
func FormatRoute(p netip.Prefix) string {
	if p.IsValid() && p.Addr().Is4() {
		return p.Addr().String() + "/" + Netmask(p.Bits())
	}
	return p.String()
}

// ParseRoute reads a route: a CIDR prefix (10.0.0.0/8, fd00::/8), an IPv4
// address with a dotted netmask (10.0.0.0/255.0.0.0), or a bare address (a
// host route: /32 or /128). The prefix comes back as written, host bits
// included (10.1.2.3/8 stays 10.1.2.3/8), so that a configuration checker
// can point at non-canonical input; call Masked for the network. So for
// every valid p without a zone, ParseRoute(FormatRoute(p)) == p.
//
// It is strict: no surrounding spaces, no IPv6 zone, a netmask must be
// contiguous, a prefix length must be plain decimal (no sign, no leading
// zero) and at most 32 or 128. Errors are *RouteError; their Reason texts
// are what internal/core/policy shows for a bad configuration entry.
func ParseRoute(s string) (netip.Prefix, error) {
	fail := func(format string, args ...any) (netip.Prefix, error) {
		return netip.Prefix{}, &RouteError{Input: s, Reason: fmt.Sprintf(format, args...)}
	}
	if s == "" {
		return fail("empty entry")
	}
	addrPart, maskPart, hasMask := strings.Cut(s, "/")
	a, err := netip.ParseAddr(addrPart)
	if err != nil {
		return fail("not an IP address or CIDR prefix")
	}
	if a.Zone() != "" {
		return fail("an IPv6 zone is not allowed in a route")
	}
	if !hasMask {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	if strings.Contains(maskPart, ".") {
		m, err := netip.ParseAddr(maskPart)
		if err != nil || !m.Is4() {
			return fail("netmask is not a dotted IPv4 address")
		}
		if !a.Is4() {
			return fail("a dotted netmask needs an IPv4 address")
		}
		bits, ok := NetmaskBits(m)
		if !ok {
			return fail("netmask %s is not contiguous", m)
		}
		return netip.PrefixFrom(a, bits), nil
	}
	// Plain decimal only: netip.ParsePrefix would also reject "+8" or
	// "08", but say why.
	bits, ok := decimal(maskPart)
	if !ok {
		return fail("prefix length is not a decimal number")
	}
	if bits > a.BitLen() {
		return fail("prefix length %d exceeds %d", bits, a.BitLen())
	}
	return netip.PrefixFrom(a, bits), nil
}

// Netmask writes an IPv4 prefix length as a dotted netmask: 16 ->
// "255.255.0.0" (X-CSTP-Netmask, and the mask half of an IPv4 route). It
// panics if bits is outside [0, 32], like a slice index out of range: the
// caller holds a prefix length, which cannot be.
func Netmask(bits int) string {
	if bits < 0 || bits > 32 {
		panic(fmt.Sprintf("cstp: IPv4 prefix length %d out of range", bits))
	}
	m := ^uint32(0) << (32 - bits) // bits 0: a shift by 32 yields 0 in Go
	return netip.AddrFrom4([4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}).String()
}

// NetmaskBits converts a dotted IPv4 netmask to a prefix length, reporting
// whether it is a contiguous IPv4 mask (ones, then zeros). 255.255.252.0 ->
// 22, true; 255.0.255.0 -> false; an IPv6 address -> false.
func NetmaskBits(m netip.Addr) (bits int, ok bool) {
	if !m.Is4() {
		return 0, false
	}
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	for v&(1<<31) != 0 {
		v <<= 1
		bits++
	}
	return bits, v == 0
}

// decimal parses a non-negative decimal number written plainly: digits
// only, no sign, no leading zero (except "0" itself), no overflow of int.
func decimal(s string) (int, bool) {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}
