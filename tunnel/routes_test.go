package tunnel

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/underpass/underpass/internal/core/masque"
)

func fmtRoutes(rs []masque.IPRoute) string {
	var b []string
	for _, r := range rs {
		b = append(b, fmt.Sprintf("%v-%v", r.Start, r.End))
	}
	return strings.Join(b, " ")
}

// TestRouteRanges: the ROUTE_ADVERTISEMENT ranges (RFC 9484 4.7.3) for
// IPv4 as before dual stack, and for a dual-stack session the IPv6 ranges
// after them: include minus exclude plus the must-reach addresses, merged
// and sorted; a full tunnel is each whole family; a split tunnel naming no
// IPv6 network routes no IPv6.
func TestRouteRanges(t *testing.T) {
	mp := netip.MustParsePrefix
	ma := netip.MustParseAddr
	for _, tc := range []struct {
		name             string
		include, exclude []netip.Prefix
		extra            []netip.Addr
		v6               bool
		want             string
	}{
		{"full tunnel, IPv4 session", nil, nil, nil, false, "0.0.0.0-255.255.255.255"},
		{"full tunnel, dual stack", nil, nil, nil, true,
			"0.0.0.0-255.255.255.255 ::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
		{"split, IPv6 routes only for a dual-stack session", []netip.Prefix{mp("10.0.0.0/8"), mp("fd00:1::/48")}, nil, nil, false,
			"10.0.0.0-10.255.255.255"},
		{"split, dual stack", []netip.Prefix{mp("fd00:1::/48"), mp("10.0.0.0/8")}, []netip.Prefix{mp("fd00:1:0:5::/64")},
			[]netip.Addr{ma("169.254.0.1"), ma("fd00:9::53")}, true,
			"10.0.0.0-10.255.255.255 169.254.0.1-169.254.0.1 " +
				"fd00:1::-fd00:1:0:4:ffff:ffff:ffff:ffff fd00:1:0:6::-fd00:1:0:ffff:ffff:ffff:ffff:ffff fd00:9::53-fd00:9::53"},
		{"split naming no IPv6 network", []netip.Prefix{mp("10.0.0.0/8")}, nil, nil, true, "10.0.0.0-10.255.255.255"},
		{"adjacent and overlapping merge", []netip.Prefix{mp("10.0.0.0/9"), mp("10.128.0.0/9"), mp("fd00::/16"), mp("fd00:1::/32"), mp("fd01::/16")},
			nil, nil, true, "10.0.0.0-10.255.255.255 fd00::-fd01:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
		{"exclude at the family's edges", nil, []netip.Prefix{mp("0.0.0.0/8"), mp("255.0.0.0/8"), mp("::/8"), mp("ff00::/8")}, nil, true,
			"1.0.0.0-254.255.255.255 100::-feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
	} {
		if got := fmtRoutes(routeRanges(tc.include, tc.exclude, tc.extra, tc.v6)); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}
