package cstp

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseRoute(t *testing.T) {
	tests := []struct {
		in   string
		want string // prefix, or "!" + the whole reason
	}{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"10.1.2.3/8", "10.1.2.3/8"}, // as written: host bits kept
		{"10.0.0.0/255.0.0.0", "10.0.0.0/8"},
		{"192.168.4.0/255.255.252.0", "192.168.4.0/22"},
		{"1.2.3.4/255.255.255.255", "1.2.3.4/32"},
		{"10.0.0.0/0.0.0.0", "10.0.0.0/0"},
		{"0.0.0.0/0", "0.0.0.0/0"},
		{"192.0.2.7", "192.0.2.7/32"},
		{"fd00::1", "fd00::1/128"},
		{"fd00::/8", "fd00::/8"},
		{"::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104"},
		{"10.0.0.0/255.0.255.0", "!netmask 255.0.255.0 is not contiguous"},
		{"10.0.0.0/255.0.0", "!netmask is not a dotted IPv4 address"},
		{"10.0.0.0/::ffff:255.0.0.0", "!netmask is not a dotted IPv4 address"},
		{"fd00::/255.0.0.0", "!a dotted netmask needs an IPv4 address"},
		{"10.0.0.0/ffff::", "!prefix length is not a decimal number"},
		{"fe80::1%eth0", "!an IPv6 zone is not allowed in a route"},
		{"fe80::%eth0/64", "!an IPv6 zone is not allowed in a route"},
		{"10.0.0.0/33", "!prefix length 33 exceeds 32"},
		{"fd00::/129", "!prefix length 129 exceeds 128"},
		{"10.0.0.0/08", "!prefix length is not a decimal number"},
		{"10.0.0.0/+8", "!prefix length is not a decimal number"},
		{"10.0.0.0/-1", "!prefix length is not a decimal number"},
		{"10.0.0.0/", "!prefix length is not a decimal number"},
		{"10.0.0.0/8/8", "!prefix length is not a decimal number"},
		{"10.0.0.0/99999999999999999999", "!prefix length is not a decimal number"},
		{" 10.0.0.0/8", "!not an IP address or CIDR prefix"},
		{"", "!empty entry"},
		{"example.com", "!not an IP address or CIDR prefix"},
		{"10.0.0/8", "!not an IP address or CIDR prefix"},
	}
	for _, tt := range tests {
		p, err := ParseRoute(tt.in)
		if reason, bad := strings.CutPrefix(tt.want, "!"); bad {
			var re *RouteError
			if !errors.As(err, &re) || re.Input != tt.in || re.Reason != reason {
				t.Errorf("ParseRoute(%q) = %v, %v; want reason %q", tt.in, p, err, reason)
			}
			continue
		}
		if err != nil || p.String() != tt.want {
			t.Errorf("ParseRoute(%q) = %v, %v; want %s", tt.in, p, err, tt.want)
		}
	}
}

func TestFormatRoute(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.0/8":          "10.0.0.0/255.0.0.0",
		"10.0.0.53/32":        "10.0.0.53/255.255.255.255",
		"0.0.0.0/0":           "0.0.0.0/0.0.0.0",
		"198.18.0.0/15":       "198.18.0.0/255.254.0.0",
		"10.1.2.3/8":          "10.1.2.3/255.0.0.0",
		"fd00::/8":            "fd00::/8",
		"::ffff:10.0.0.0/104": "::ffff:10.0.0.0/104",
	} {
		if got := FormatRoute(netip.MustParsePrefix(in)); got != want {
			t.Errorf("FormatRoute(%s) = %s, want %s", in, got, want)
		}
	}
	if got := FormatRoute(netip.Prefix{}); got != "invalid Prefix" {
		t.Errorf("zero prefix: %q", got)
	}
}

func TestNetmask(t *testing.T) {
	for bits := 0; bits <= 32; bits++ {
		m := Netmask(bits)
		got, ok := NetmaskBits(netip.MustParseAddr(m))
		if !ok || got != bits {
			t.Errorf("Netmask(%d) = %s -> %d %v", bits, m, got, ok)
		}
	}
	for bits, want := range map[int]string{0: "0.0.0.0", 16: "255.255.0.0", 22: "255.255.252.0", 32: "255.255.255.255"} {
		if got := Netmask(bits); got != want {
			t.Errorf("Netmask(%d) = %s, want %s", bits, got, want)
		}
	}
	for _, bad := range []string{"255.0.255.0", "0.0.0.1", "::", "ffff:ffff::"} {
		if _, ok := NetmaskBits(netip.MustParseAddr(bad)); ok {
			t.Errorf("NetmaskBits(%s) ok", bad)
		}
	}
	for _, bits := range []int{-1, 33} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Netmask(%d) did not panic", bits)
				}
			}()
			Netmask(bits)
		}()
	}
}

// FuzzRouteRoundTrip checks both directions: any text ParseRoute accepts
// formats back to the same prefix, and any prefix built from raw bytes
// survives FormatRoute then ParseRoute (masked or not).
func FuzzRouteRoundTrip(f *testing.F) {
	for _, s := range []string{"10.0.0.0/255.0.0.0", "10.1.2.3/8", "fd00::/8", "192.0.2.7", "fd00::1", "::ffff:10.0.0.0/104", "0.0.0.0/0", "10.0.0.0/255.0.255.0"} {
		f.Add(s, []byte{10, 1, 2, 3}, 8)
	}
	f.Add("", []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 64)
	f.Fuzz(func(t *testing.T, s string, raw []byte, bits int) {
		if p, err := ParseRoute(s); err == nil {
			if back, err := ParseRoute(FormatRoute(p)); err != nil || back != p {
				t.Fatalf("%q -> %v -> %q -> %v, %v", s, p, FormatRoute(p), back, err)
			}
		} else if p.IsValid() {
			t.Fatalf("%q: error %v with prefix %v", s, err, p)
		}
		a, ok := netip.AddrFromSlice(raw)
		if !ok {
			return
		}
		p := netip.PrefixFrom(a, bits)
		if !p.IsValid() {
			return
		}
		for _, q := range []netip.Prefix{p, p.Masked()} {
			back, err := ParseRoute(FormatRoute(q))
			if err != nil || back != q || back.Masked() != p.Masked() {
				t.Fatalf("%v -> %q -> %v, %v", q, FormatRoute(q), back, err)
			}
		}
	})
}
