package policy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var (
	mp = netip.MustParsePrefix
	ma = netip.MustParseAddr
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, mp(s))
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, ma(s))
	}
	return out
}

func mustNew(t testing.TB, c Config) *Policy {
	t.Helper()
	p, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAllow(t *testing.T) {
	base := Config{
		Pool:      mp("169.254.0.0/16"),
		Gateway:   ma("169.254.0.1"),
		DNS:       addrs("10.0.0.53", "192.0.2.53", "fd00::53"),
		HostAddrs: addrs("192.0.2.10", "10.1.2.3", "fd00::10", "fe80::1%eth0"),
	}
	split := base
	split.Include = prefixes("10.0.0.0/8", "fd00::/8", "172.16.0.0/12")
	split.Exclude = prefixes("10.9.0.0/16", "10.0.0.0/24", "fd00:9::/32")
	named := base // 169.254.169.254 is named, so the pool must move
	named.Pool, named.Gateway = mp("10.250.0.0/16"), ma("10.250.0.1")
	named.Include = prefixes("126.0.0.0/7", "169.254.169.254/32", "192.0.2.10/32", "fe80::/10", "8.8.8.0/24")
	named.Exclude = prefixes("127.0.0.128/25")
	dual := base // a dual-stack gateway (full tunnel): an IPv6 pool too
	dual.Pool6 = mp("fd7a:1::/64")
	metadata6 := base // the IPv6 metadata address named by its /128
	metadata6.Include = prefixes("fd00:ec2::254/128", "fd00::/16")
	tests := []struct {
		cfg  Config
		name string
		dst  string
		want bool
	}{
		// 1. gateway and DNS always
		{base, "gateway", "169.254.0.1", true},
		{base, "gateway mapped", "::ffff:169.254.0.1", true},
		{split, "dns outside include", "192.0.2.53", true},
		{split, "dns inside exclude", "10.0.0.53", true},
		{split, "dns v6", "fd00::53", true},
		// 2. not a host
		{base, "multicast", "224.0.0.1", false},
		{base, "multicast high", "239.255.255.250", false},
		{base, "broadcast", "255.255.255.255", false},
		{base, "unspecified", "0.0.0.0", false},
		{base, "this network", "0.1.2.3", false},
		{base, "v6 multicast", "ff02::1", false},
		{base, "v6 unspecified", "::", false},
		{named, "multicast even if included", "224.0.0.1", false},
		// 3. pool
		{base, "other client", "169.254.3.4", false},
		{base, "pool broadcast", "169.254.255.255", false},
		{base, "metadata is in the pool here", "169.254.169.254", false},
		{dual, "other dual-stack client", "fd7a:1::9", false},
		{dual, "IPv6 pool's first address", "fd7a:1::1", false},
		{dual, "just past the IPv6 pool", "fd7a:1:0:1::1", true},
		{dual, "just before the IPv6 pool", "fd7a:0:ffff:ffff:ffff:ffff:ffff:ffff", true},
		{base, "no IPv6 pool: an ordinary destination", "fd7a:1::9", true},
		// 4. gateway host
		{base, "loopback full tunnel", "127.0.0.1", false},
		{base, "loopback high", "127.255.255.254", false},
		{base, "v6 loopback", "::1", false},
		{base, "v6 link-local", "fe80::1234", false},
		{base, "host addr", "192.0.2.10", false},
		{base, "host addr mapped", "::ffff:192.0.2.10", false},
		{base, "host addr v6", "fd00::10", false},
		{base, "host addr zone stripped", "fe80::1", false},
		{split, "host addr under a broad include 10/8", "10.1.2.3", false},
		{named, "host addr named by its /32", "192.0.2.10", true},
		{named, "loopback under a broad include 126.0.0.0/7", "127.0.0.5", false},
		{named, "the rest of that include", "126.1.2.3", true},
		{split, "host addr not included", "192.0.2.10", false},
		{named, "loopback excluded", "127.0.0.200", false},
		{named, "metadata named", "169.254.169.254", true},
		{named, "metadata neighbour not named", "169.254.169.253", false},
		{named, "other client, named pool", "10.250.0.9", false},
		{named, "named pool gateway", "10.250.0.1", true},
		{named, "host addr named", "192.0.2.10", true},
		{named, "v6 loopback", "::1", false},
		{named, "v6 link-local named", "fe80::99", true},
		{base, "AWS IPv6 metadata, full tunnel", "fd00:ec2::254", false},
		{base, "GCE IPv6 metadata, full tunnel", "fd20:ce::254", false},
		{base, "AWS IPv6 metadata neighbour", "fd00:ec2::253", true},
		{split, "AWS IPv6 metadata under a broad include fd00::/8", "fd00:ec2::254", false},
		{metadata6, "AWS IPv6 metadata named by its /128", "fd00:ec2::254", true},
		// 5-7. exclude, include
		{base, "full tunnel", "8.8.8.8", true},
		{base, "full tunnel v6", "2001:db8::1", true},
		{split, "included", "10.200.0.1", true},
		{split, "included mapped", "::ffff:10.200.0.1", true},
		{split, "included second", "172.31.255.255", true},
		{split, "excluded /16", "10.9.1.1", false},
		{split, "excluded /24", "10.0.0.1", false},
		{split, "not included", "8.8.8.8", false},
		{split, "just past include", "172.32.0.0", false},
		{split, "v6 included", "fd01::1", true},
		{split, "v6 excluded", "fd00:9::1", false},
		{split, "v6 not included", "2001:db8::1", false},
		{named, "named include", "8.8.8.8", true},
		{named, "zero addr", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustNew(t, tt.cfg)
			var dst netip.Addr
			if tt.dst != "" {
				dst = ma(tt.dst)
			}
			if got := p.Allow(dst); got != tt.want {
				t.Errorf("Allow(%s) = %v, want %v", tt.dst, got, tt.want)
			}
			if dst.IsValid() {
				if got := p.decide(dst); got != tt.want {
					t.Errorf("decide(%s) = %v, want %v", tt.dst, got, tt.want)
				}
			}
		})
	}
}

// TestAllowMatchesDecide compares the compiled table with the literal rule
// list on random configurations, at every boundary and next to it.
func TestAllowMatchesDecide(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	randPrefix4 := func() netip.Prefix {
		var b [4]byte
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		b[0] = byte(1 + r.IntN(254)) // never a 0.0.0.0 network address
		return netip.PrefixFrom(netip.AddrFrom4(b), 8+r.IntN(25)).Masked()
	}
	randPrefix6 := func() netip.Prefix {
		var b [16]byte
		b[0], b[1], b[15] = 0xfd, byte(r.IntN(4)), byte(r.IntN(256))
		return netip.PrefixFrom(netip.AddrFrom16(b), 8+r.IntN(121)).Masked()
	}
	for iter := range 50 {
		c := Config{Pool: mp("100.64.0.0/16"), Gateway: ma("100.64.0.1"), DNS: addrs("10.0.0.53"), HostAddrs: addrs("10.1.1.1", "127.0.0.1")}
		seen := map[netip.Prefix]bool{}
		add := func(dst *[]netip.Prefix, n int) {
			for range n {
				p := randPrefix4()
				if r.IntN(4) == 0 {
					p = randPrefix6()
				}
				if seen[p] || p.Overlaps(c.Pool) || dst == &c.Include && insideLoopback(p) {
					continue
				}
				seen[p] = true
				*dst = append(*dst, p)
			}
		}
		if iter%5 != 0 {
			add(&c.Include, r.IntN(200))
		}
		add(&c.Exclude, r.IntN(100))
		p := mustNew(t, c)
		var probes []netip.Addr
		for _, pr := range slices.Concat(c.Include, c.Exclude, notHost, hostRanges, []netip.Prefix{c.Pool}) {
			lo, hi := prefixRange(pr)
			is4 := pr.Addr().Is4()
			for _, x := range []u128{lo, hi} {
				a := x.addr(is4)
				probes = append(probes, a, a.Prev(), a.Next())
			}
		}
		for range 2000 {
			var b [4]byte
			for i := range b {
				b[i] = byte(r.IntN(256))
			}
			probes = append(probes, netip.AddrFrom4(b))
		}
		for _, a := range probes {
			if !a.IsValid() {
				continue
			}
			if got, want := p.Allow(a), p.decide(a); got != want {
				t.Fatalf("iter %d: Allow(%s) = %v, decide = %v", iter, a, got, want)
			}
		}
	}
}

func TestRoutes(t *testing.T) {
	base := Config{Pool: mp("169.254.0.0/16"), Gateway: ma("169.254.0.1"), DNS: addrs("10.0.0.53", "192.0.2.53", "10.9.0.53")}
	for _, tt := range []struct {
		name           string
		include        []netip.Prefix
		exclude        []netip.Prefix
		wantInc, wantE string
	}{
		{"full tunnel", nil, prefixes("10.9.0.0/16"), "[]", "[10.9.0.0/16]"},
		{"split", prefixes("10.0.0.0/8"), prefixes("10.9.0.0/16"),
			"[10.0.0.0/8 169.254.0.1/32 192.0.2.53/32 10.9.0.53/32]", "[10.9.0.0/16]"},
		{"already named", prefixes("192.0.2.53/32", "10.0.0.0/8"), nil,
			"[192.0.2.53/32 10.0.0.0/8 169.254.0.1/32]", "[]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			c.Include, c.Exclude = tt.include, tt.exclude
			p := mustNew(t, c)
			inc, exc := p.Routes()
			if fmt.Sprint(inc) != tt.wantInc || fmt.Sprint(exc) != tt.wantE {
				t.Errorf("Routes = %v %v, want %s %s", inc, exc, tt.wantInc, tt.wantE)
			}
			if len(inc) > 0 {
				inc[0] = netip.Prefix{} // callers own the copies
				if again, _ := p.Routes(); again[0] == inc[0] {
					t.Error("Routes returned internal storage")
				}
			}
		})
	}
}

func TestValidateAllAtOnce(t *testing.T) {
	include := prefixes(
		"10.0.0.0/8",     // 0 fine
		"0.0.0.0/0",      // 1 default route
		"10.1.2.3/16",    // 2 not canonical
		"10.0.0.0/8",     // 3 duplicate of 0
		"169.254.8.0/24", // 4 overlaps pool
		"::/0",           // 5 default route v6
	)
	include = append(include, netip.Prefix{}, mp("::ffff:10.0.0.0/104")) // 6 invalid, 7 mapped
	exclude := prefixes(
		"0.0.0.0/8",    // 0 network 0.0.0.0
		"10.0.0.0/8",   // 1 also included
		"192.0.2.0/24", // 2 fine
		"192.0.2.0/24", // 3 duplicate
	)
	errs := Validate(include, exclude, mp("169.254.0.0/16"))
	want := []struct {
		list   string
		index  int
		reason string
	}{
		{"include", 1, "full tunnel use no include rules"},
		{"include", 2, "write 10.1.0.0/16"},
		{"include", 3, "duplicate of include[0]"},
		{"include", 5, "network address ::"},
		{"include", 6, "not a valid prefix"},
		{"include", 7, "write 10.0.0.0/8"},
		{"include", 7, "duplicate of include[0]"},
		{"exclude", 0, "network address 0.0.0.0"},
		{"exclude", 1, "also include[0]"},
		{"exclude", 3, "duplicate of exclude[2]"},
		{"pool", 1, "overlaps include[1]"},
		{"pool", 4, "overlaps include[4]"},
		// include[5] ::/0 and include[7] (IPv4 10.0.0.0/8) do not overlap the pool.
	}
	if len(errs) != len(want) {
		for _, e := range errs {
			t.Log(e)
		}
		t.Fatalf("got %d errors, want %d", len(errs), len(want))
	}
	for i, w := range want {
		var re *RuleError
		if !errors.As(errs[i], &re) {
			t.Fatalf("error %d is %T", i, errs[i])
		}
		if re.List != w.list || re.Index != w.index || !strings.Contains(re.Reason, w.reason) {
			t.Errorf("error %d = %+v (%v), want %s[%d] %q", i, re, re, w.list, w.index, w.reason)
		}
	}
	// Each pool is checked: an IPv6 pool inside an include rule.
	errs = Validate(prefixes("10.0.0.0/8", "fd00::/8"), nil, mp("169.254.0.0/16"), mp("fd7a::/64"))
	var re *RuleError
	if len(errs) != 1 || !errors.As(errs[0], &re) || re.List != "pool" || re.Index != 1 || re.Prefix != mp("fd7a::/64") {
		t.Errorf("IPv6 pool overlapping include[1]: %v", errs)
	}
	if errs := Validate(prefixes("10.0.0.0/8"), prefixes("10.1.0.0/16"), mp("169.254.0.0/16")); len(errs) != 0 {
		t.Errorf("valid rules: %v", errs)
	}
	if errs := Validate(nil, nil, netip.Prefix{}); len(errs) != 0 {
		t.Errorf("empty: %v", errs)
	}
}

// TestValidateLoopback: an include rule inside loopback is refused (the
// stack drops packets to loopback as martians, so it could never work); a
// broader rule that merely covers loopback, and any exclude, are fine.
func TestValidateLoopback(t *testing.T) {
	tests := []struct {
		include, exclude string
		refused          bool
	}{
		{include: "127.0.0.0/8", refused: true},
		{include: "127.0.0.1/32", refused: true},
		{include: "127.1.0.0/16", refused: true},
		{include: "::1/128", refused: true},
		{include: "::ffff:127.0.0.1/128", refused: true}, // and not canonical
		{include: "126.0.0.0/7"},
		{include: "10.0.0.0/8", exclude: "127.0.0.0/8"},
		{include: "10.0.0.0/8", exclude: "::1/128"},
		{include: "::2/128"},
	}
	for _, tt := range tests {
		t.Run(tt.include+"-"+tt.exclude, func(t *testing.T) {
			var exclude []netip.Prefix
			if tt.exclude != "" {
				exclude = prefixes(tt.exclude)
			}
			var loopback *RuleError
			for _, err := range Validate(prefixes(tt.include), exclude, mp("100.64.0.0/16")) {
				var re *RuleError
				if errors.As(err, &re) && strings.Contains(re.Reason, "loopback cannot be reached") {
					loopback = re
				} else if !strings.Contains(err.Error(), "canonical") {
					t.Errorf("unexpected: %v", err)
				}
			}
			if got := loopback != nil; got != tt.refused {
				t.Fatalf("refused for loopback = %v (%v), want %v", got, loopback, tt.refused)
			}
			if loopback != nil && (loopback.List != "include" || loopback.Index != 0) {
				t.Errorf("error on %s[%d], want include[0]", loopback.List, loopback.Index)
			}
		})
	}
}

func TestValidateRuleLimit(t *testing.T) {
	gen := func(n int) []netip.Prefix {
		out := make([]netip.Prefix, n)
		for i := range out {
			out[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		}
		return out
	}
	pool := mp("169.254.0.0/16")
	tests := []struct {
		name       string
		inc, exc   int
		wantErr    bool
		list       string
		firstIndex int
	}{
		{"500 include", 500, 0, false, "", 0},
		{"300+200", 300, 200, false, "", 0},
		{"501 include", 501, 0, true, "include", 500},
		{"300+201", 300, 201, true, "exclude", 200},
		{"0+501", 0, 501, true, "exclude", 500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			all := gen(tt.inc + tt.exc)
			inc, exc := all[:tt.inc], all[tt.inc:]
			errs := Validate(inc, exc, pool)
			if !tt.wantErr {
				if len(errs) != 0 {
					t.Fatalf("unexpected %v", errs)
				}
				if _, err := New(Config{Include: inc, Exclude: exc, Pool: pool}); err != nil {
					t.Fatal(err)
				}
				return
			}
			var re *RuleError
			if len(errs) != 1 || !errors.As(errs[0], &re) || re.List != tt.list || re.Index != tt.firstIndex || !strings.Contains(re.Error(), "500") {
				t.Fatalf("got %v", errs)
			}
			if _, err := New(Config{Include: inc, Exclude: exc, Pool: pool}); err == nil {
				t.Fatal("New accepted too many rules")
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	_, err := New(Config{
		Include:   prefixes("0.0.0.0/8"),
		Pool:      mp("169.254.1.2/16"),
		DNS:       []netip.Addr{{}},
		HostAddrs: []netip.Addr{ma("10.0.0.1"), {}},
	})
	var lists []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var re *RuleError
		if !errors.As(e, &re) {
			t.Fatalf("%T", e)
		}
		lists = append(lists, fmt.Sprintf("%s[%d]", re.List, re.Index))
	}
	if got := strings.Join(lists, " "); got != "include[0] pool[-1] dns[0] host_addrs[1]" {
		t.Errorf("got %s (%v)", got, err)
	}
	if _, err := New(Config{}); err == nil {
		t.Error("zero pool accepted")
	}
	for _, p6 := range []string{"10.1.0.0/16", "fd7a::1/64", "::ffff:10.0.0.0/104"} {
		if _, err := New(Config{Pool: mp("169.254.0.0/16"), Pool6: mp(p6)}); err == nil {
			t.Errorf("IPv6 pool %s accepted", p6)
		}
	}
}

func TestParsePrefixes(t *testing.T) {
	tests := []struct {
		in   string
		want string // prefix, or "!" + substring of the reason
	}{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{" 10.0.0.0/8 ", "10.0.0.0/8"},
		{"10.1.2.3/8", "10.1.2.3/8"}, // kept as written; Validate complains
		{"10.0.0.0/255.0.0.0", "10.0.0.0/8"},
		{"192.168.4.0/255.255.252.0", "192.168.4.0/22"},
		{"1.2.3.4/255.255.255.255", "1.2.3.4/32"},
		{"10.0.0.0/0.0.0.0", "10.0.0.0/0"},
		{"10.0.0.0/255.0.255.0", "!not contiguous"},
		{"10.0.0.0/255.0.0", "!netmask"},
		{"fd00::/255.0.0.0", "!needs an IPv4"},
		{"10.0.0.0/ffff::", "!decimal"},
		{"192.0.2.7", "192.0.2.7/32"},
		{"fd00::1", "fd00::1/128"},
		{"fd00::/8", "fd00::/8"},
		{"fe80::1%eth0", "!zone"},
		{"10.0.0.0/33", "!exceeds 32"},
		{"fd00::/129", "!exceeds 128"},
		{"10.0.0.0/08", "!decimal"},
		{"10.0.0.0/+8", "!decimal"},
		{"10.0.0.0/", "!decimal"},
		{"10.0.0.0/8/8", "!decimal"},
		{"", "!empty"},
		{"example.com", "!not an IP"},
		{"10.0.0/8", "!not an IP"},
	}
	var in []string
	for _, tt := range tests {
		in = append(in, tt.in)
	}
	got, errs := ParsePrefixes("split_include", in)
	gi, ei := 0, 0
	for i, tt := range tests {
		if strings.HasPrefix(tt.want, "!") {
			var re *RuleError
			if ei >= len(errs) || !errors.As(errs[ei], &re) {
				t.Fatalf("%q: missing error", tt.in)
			}
			ei++
			if re.List != "split_include" || re.Index != i || re.Input != tt.in || !strings.Contains(re.Reason, tt.want[1:]) {
				t.Errorf("%q: error %+v", tt.in, re)
			}
			if !strings.Contains(re.Error(), fmt.Sprintf("split_include[%d]", i)) {
				t.Errorf("error text %q does not name the entry", re)
			}
			continue
		}
		if gi >= len(got) || got[gi].String() != tt.want {
			t.Fatalf("%q: got %v, want %s", tt.in, got[min(gi, len(got)-1)], tt.want)
		}
		gi++
	}
	if gi != len(got) || ei != len(errs) {
		t.Errorf("extra results: %v %v", got[gi:], errs[ei:])
	}
}

func FuzzParsePrefixes(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "10.0.0.0/255.0.0.0", "1.2.3.4", "fd00::/8", "::ffff:1.2.3.4/120", "fe80::1%x", "", "/", "1.2.3.4/-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, errs := ParsePrefixes("l", []string{s})
		if len(got)+len(errs) != 1 {
			t.Fatalf("%q: %d prefixes, %d errors", s, len(got), len(errs))
		}
		if len(got) == 1 {
			p := got[0]
			if !p.IsValid() || p.Addr().Zone() != "" {
				t.Fatalf("%q: invalid result %v", s, p)
			}
			if want, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil && want != p {
				t.Fatalf("%q: got %v, netip says %v", s, p, want)
			}
			// The result round-trips through its own string form.
			again, errs := ParsePrefixes("l", []string{p.String()})
			if len(errs) != 0 || again[0] != p {
				t.Fatalf("%q: %v does not round-trip: %v %v", s, p, again, errs)
			}
			_ = Validate(got, nil, netip.Prefix{})
		}
		if len(errs) == 1 {
			var re *RuleError
			if !errors.As(errs[0], &re) || re.Input != s || re.Error() == "" {
				t.Fatalf("%q: bad error %v", s, errs[0])
			}
		}
	})
}

// benchPolicy has 300 include and 200 exclude rules (the R-C3 maximum), a
// few DNS and host addresses.
func benchPolicy(b testing.TB) *Policy {
	var inc, exc []netip.Prefix
	for i := range 300 {
		inc = append(inc, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i / 2), byte(i % 2 * 128), 0}), 17))
	}
	for i := range 200 {
		exc = append(exc, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i / 2), byte(i%2*128 + 1), 0}), 24))
	}
	return mustNew(b, Config{
		Include: inc, Exclude: exc, Pool: mp("169.254.0.0/16"), Gateway: ma("169.254.0.1"),
		DNS: addrs("10.0.0.53", "10.1.0.53"), HostAddrs: addrs("192.0.2.10", "10.5.5.5", "fd00::1"),
	})
}

func BenchmarkAllow(b *testing.B) {
	p := benchPolicy(b)
	r := rand.New(rand.NewPCG(3, 4))
	dsts := make([]netip.Addr, 1024) // power of two: cheap index mask
	for i := range dsts {
		dsts[i] = netip.AddrFrom4([4]byte{10, byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(256))})
	}
	b.Run("v4", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			p.Allow(dsts[i&(len(dsts)-1)])
			i++
		}
	})
	v6 := ma("2001:db8::1")
	b.Run("v6", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p.Allow(v6)
		}
	})
	if n := testing.AllocsPerRun(100, func() { p.Allow(dsts[0]) }); n != 0 {
		b.Fatalf("Allow allocates %v times", n)
	}
}

func TestAllowNoAlloc(t *testing.T) {
	p := benchPolicy(t)
	a, m := ma("10.3.3.3"), ma("::ffff:10.3.3.3")
	if n := testing.AllocsPerRun(100, func() { p.Allow(a); p.Allow(m) }); n != 0 {
		t.Fatalf("Allow allocates %v times", n)
	}
}
