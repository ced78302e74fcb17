package tunnel

import (
	"net/netip"
	"slices"

	"github.com/underpass/underpass/internal/core/masque"
)

// span is an inclusive range of addresses of one family.
type span struct{ lo, hi netip.Addr }

// prefixSpan is the range p covers.
func prefixSpan(p netip.Prefix) span {
	p = p.Masked()
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	hi, _ := netip.AddrFromSlice(b)
	return span{p.Addr(), hi}
}

// routeRanges turns include-minus-exclude (empty include = all) plus
// single addresses that must stay reachable (the gateway, the DNS servers)
// into the sorted, disjoint ranges a ROUTE_ADVERTISEMENT capsule carries
// (RFC 9484 4.7.3: IPv4 ranges first, each family in ascending order).
// IPv6 ranges are included only with v6 (a dual-stack session); a split
// tunnel that names no IPv6 network routes no IPv6.
func routeRanges(include, exclude []netip.Prefix, extra []netip.Addr, v6 bool) []masque.IPRoute {
	var out []masque.IPRoute
	for _, fam := range []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")} {
		is4 := fam.Addr().Is4()
		if !is4 && !v6 {
			break
		}
		var in []span
		if len(include) == 0 {
			in = []span{prefixSpan(fam)}
		}
		for _, p := range include {
			if p.Addr().Is4() == is4 {
				in = append(in, prefixSpan(p))
			}
		}
		in = mergeSpans(in)
		for _, p := range exclude {
			if p.Addr().Is4() == is4 {
				in = subtractSpan(in, prefixSpan(p))
			}
		}
		for _, a := range extra {
			if a.Is4() == is4 {
				in = append(in, span{a, a})
			}
		}
		for _, s := range mergeSpans(in) {
			out = append(out, masque.IPRoute{Start: s.lo, End: s.hi})
		}
	}
	return out
}

// mergeSpans sorts and joins overlapping or adjacent spans (of one
// family).
func mergeSpans(ss []span) []span {
	if len(ss) == 0 {
		return ss
	}
	slices.SortFunc(ss, func(a, b span) int { return a.lo.Compare(b.lo) })
	out := ss[:1]
	for _, s := range ss[1:] {
		last := &out[len(out)-1]
		if next := last.hi.Next(); !next.IsValid() || s.lo.Compare(next) <= 0 { // the family's last address, or touching
			if s.hi.Compare(last.hi) > 0 {
				last.hi = s.hi
			}
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
		if x.hi.Less(s.lo) || s.hi.Less(x.lo) {
			out = append(out, s)
			continue
		}
		if s.lo.Less(x.lo) {
			out = append(out, span{s.lo, x.lo.Prev()})
		}
		if x.hi.Less(s.hi) {
			out = append(out, span{x.hi.Next(), s.hi})
		}
	}
	return out
}
