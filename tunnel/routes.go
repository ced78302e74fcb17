package tunnel

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"

	connectip "github.com/quic-go/connect-ip-go"
)

// span is an inclusive IPv4 range.
type span struct{ lo, hi uint32 }

func u32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func addr32(x uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], x)
	return netip.AddrFrom4(b)
}

func prefixSpan(p netip.Prefix) span {
	lo := u32(p.Masked().Addr())
	return span{lo, lo | uint32(uint64(1)<<(32-p.Bits())-1)}
}

// routeRanges turns include-minus-exclude (IPv4; empty include = all) plus
// single addresses that must stay reachable (the gateway, the DNS servers)
// into the sorted, disjoint ranges a ROUTE_ADVERTISEMENT capsule carries
// (RFC 9484 4.7.3).
func routeRanges(include, exclude []netip.Prefix, extra []netip.Addr) []connectip.IPRoute {
	var in []span
	if len(include) == 0 {
		in = []span{{0, ^uint32(0)}}
	}
	for _, p := range include {
		if p.Addr().Is4() {
			in = append(in, prefixSpan(p))
		}
	}
	in = mergeSpans(in)
	for _, p := range exclude {
		if p.Addr().Is4() {
			in = subtractSpan(in, prefixSpan(p))
		}
	}
	for _, a := range extra {
		if a.Is4() {
			x := u32(a)
			in = append(in, span{x, x})
		}
	}
	in = mergeSpans(in)
	out := make([]connectip.IPRoute, 0, len(in))
	for _, s := range in {
		out = append(out, connectip.IPRoute{StartIP: addr32(s.lo), EndIP: addr32(s.hi)})
	}
	return out
}

// mergeSpans sorts and joins overlapping or adjacent spans.
func mergeSpans(ss []span) []span {
	if len(ss) == 0 {
		return ss
	}
	slices.SortFunc(ss, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
	out := ss[:1]
	for _, s := range ss[1:] {
		last := &out[len(out)-1]
		if last.hi == ^uint32(0) || s.lo <= last.hi+1 {
			last.hi = max(last.hi, s.hi)
			continue
		}
		out = append(out, s)
	}
	return out
}

// subtractSpan removes x from the sorted disjoint spans ss.
func subtractSpan(ss []span, x span) []span {
	out := make([]span, 0, len(ss)+1)
	for _, s := range ss {
		if x.hi < s.lo || x.lo > s.hi {
			out = append(out, s)
			continue
		}
		if x.lo > s.lo {
			out = append(out, span{s.lo, x.lo - 1})
		}
		if x.hi < s.hi {
			out = append(out, span{x.hi + 1, s.hi})
		}
	}
	return out
}
