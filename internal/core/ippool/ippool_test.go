package ippool

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
)

var (
	mp = netip.MustParsePrefix
	ma = netip.MustParseAddr
)

func TestNew(t *testing.T) {
	tests := []struct {
		name     string
		prefix   string
		reserved []string
		wantErr  error
		wantCap  int
	}{
		{"v4 /16", "169.254.0.0/16", nil, nil, 65534},
		{"v4 /16 with gateway", "169.254.0.0/16", []string{"169.254.0.1"}, nil, 65533},
		{"v4 /24 reserve net and broadcast is a no-op", "10.0.0.0/24", []string{"10.0.0.0", "10.0.0.255"}, nil, 254},
		{"v4 duplicate reserved", "10.0.0.0/24", []string{"10.0.0.1", "10.0.0.1"}, nil, 253},
		{"v4 mapped reserved", "10.0.0.0/24", []string{"::ffff:10.0.0.1"}, nil, 253},
		{"v4 /30", "10.0.0.0/30", nil, nil, 2},
		{"v4 /30 with gateway", "10.0.0.0/30", []string{"10.0.0.1"}, nil, 1},
		{"v4 /30 fully reserved", "10.0.0.0/30", []string{"10.0.0.1", "10.0.0.2"}, ErrTooSmall, 0},
		{"v4 /31", "10.0.0.0/31", nil, ErrTooSmall, 0},
		{"v4 /32", "10.0.0.1/32", nil, ErrTooSmall, 0},
		{"v4 /8 clamped", "10.0.0.0/8", nil, nil, MaxAddrs},
		{"v4 /0 clamped", "0.0.0.0/0", nil, nil, MaxAddrs},
		{"not masked", "10.1.2.3/16", nil, ErrNotMasked, 0},
		{"reserved outside", "10.0.0.0/24", []string{"10.0.1.1"}, ErrBadReserved, 0},
		{"reserved other family", "10.0.0.0/24", []string{"fd00::1"}, ErrBadReserved, 0},
		{"v6 /64 clamped", "fd00::/64", []string{"fd00::1"}, nil, MaxAddrs - 1},
		{"v6 /120", "fd00::/120", nil, nil, 255},
		{"v6 /127", "fd00::/127", nil, nil, 1},
		{"v6 /128", "fd00::1/128", nil, ErrTooSmall, 0},
		{"v4-mapped prefix", "::ffff:10.0.0.0/120", nil, ErrInvalidPrefix, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var res []netip.Addr
			for _, r := range tt.reserved {
				res = append(res, ma(r))
			}
			p, err := New(mp(tt.prefix), res...)
			if tt.wantErr != nil {
				var pe *PrefixError
				if !errors.Is(err, tt.wantErr) || !errors.As(err, &pe) {
					t.Fatalf("New: got %v, want *PrefixError wrapping %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if p.Cap() != tt.wantCap {
				t.Errorf("Cap = %d, want %d", p.Cap(), tt.wantCap)
			}
			if p.Prefix() != mp(tt.prefix) {
				t.Errorf("Prefix = %v", p.Prefix())
			}
		})
	}
	if _, err := New(netip.Prefix{}); !errors.Is(err, ErrInvalidPrefix) {
		t.Errorf("zero prefix: %v", err)
	}
	if _, err := New(mp("10.0.0.0/24"), netip.Addr{}); !errors.Is(err, ErrBadReserved) {
		t.Errorf("zero reserved: %v", err)
	}
}

// allocAll drains p, failing on duplicates, and returns the addresses in
// allocation order.
func allocAll(t *testing.T, p *Pool) []netip.Addr {
	t.Helper()
	seen := make(map[netip.Addr]bool, p.Cap())
	var out []netip.Addr
	for i := 0; ; i++ {
		a, err := p.Allocate(fmt.Sprint("k", i))
		if errors.Is(err, ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if seen[a] {
			t.Fatalf("address %v handed out twice", a)
		}
		if !p.Contains(a) {
			t.Fatalf("address %v not Contained", a)
		}
		seen[a] = true
		out = append(out, a)
	}
	if len(out) != p.Cap() || p.Len() != p.Cap() {
		t.Fatalf("handed out %d, Len %d, Cap %d", len(out), p.Len(), p.Cap())
	}
	return out
}

func TestEdgeCases(t *testing.T) {
	tests := []struct {
		prefix   string
		reserved []string
		want     []string
	}{
		{"10.0.0.0/30", nil, []string{"10.0.0.1", "10.0.0.2"}},
		{"10.0.0.0/30", []string{"10.0.0.1"}, []string{"10.0.0.2"}},
		{"10.0.0.0/29", []string{"10.0.0.1", "10.0.0.3"}, []string{"10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"}},
		{"fd00::/126", []string{"fd00::1"}, []string{"fd00::2", "fd00::3"}},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			var res []netip.Addr
			for _, r := range tt.reserved {
				res = append(res, ma(r))
			}
			p, err := New(mp(tt.prefix), res...)
			if err != nil {
				t.Fatal(err)
			}
			got := allocAll(t, p)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			for _, r := range res {
				if p.Contains(r) {
					t.Errorf("Contains(reserved %v)", r)
				}
				p.Release(r) // must be a no-op
			}
			if p.Len() != p.Cap() {
				t.Errorf("releasing reserved changed Len to %d", p.Len())
			}
		})
	}
}

func TestContains(t *testing.T) {
	p, err := New(mp("10.0.0.0/24"), ma("10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		a    string
		want bool
	}{
		{"10.0.0.0", false}, {"10.0.0.1", false}, {"10.0.0.2", true}, {"10.0.0.254", true},
		{"10.0.0.255", false}, {"10.0.1.2", false}, {"::ffff:10.0.0.2", true}, {"fd00::2", false},
	} {
		if got := p.Contains(ma(c.a)); got != c.want {
			t.Errorf("Contains(%s) = %v, want %v", c.a, got, c.want)
		}
	}
	if p.Contains(netip.Addr{}) {
		t.Error("Contains(zero)")
	}
}

func TestStickiness(t *testing.T) {
	p, err := New(mp("10.0.0.0/29"), ma("10.0.0.1")) // 5 usable: .2 - .6
	if err != nil {
		t.Fatal(err)
	}
	must := func(key string) netip.Addr {
		t.Helper()
		a, err := p.Allocate(key)
		if err != nil {
			t.Fatalf("Allocate(%s): %v", key, err)
		}
		return a
	}
	a := must("alice")
	if again := must("alice"); again != a {
		t.Fatalf("holding key got %v then %v", a, again)
	}
	if p.Len() != 1 {
		t.Fatalf("Len = %d after repeated Allocate", p.Len())
	}
	if got, ok := p.Lookup("alice"); !ok || got != a {
		t.Fatalf("Lookup = %v %v", got, ok)
	}
	b := must("bob")
	p.Release(a)
	p.Release(a) // idempotent
	if p.Len() != 1 {
		t.Fatalf("Len = %d after double release", p.Len())
	}
	if _, ok := p.Lookup("alice"); ok {
		t.Fatal("Lookup found a released address")
	}
	// Others take never-used addresses before alice's old one.
	c, d, e := must("carol"), must("dave"), must("erin")
	for _, x := range []netip.Addr{c, d, e} {
		if x == a {
			t.Fatalf("released address %v reused while fresh ones remained", a)
		}
	}
	if got := must("alice"); got != a {
		t.Fatalf("alice came back to %v, want %v", got, a)
	}
	if _, err := p.Allocate("frank"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("full pool: %v", err)
	}
	// Released in order b, c, d: a newcomer gets the least recently
	// released (b); bob then loses his claim and gets the next (c), so
	// carol loses hers too.
	p.Release(b)
	p.Release(c)
	p.Release(d)
	if got := must("frank"); got != b {
		t.Fatalf("frank got %v, want least recently released %v", got, b)
	}
	if got := must("bob"); got != c {
		t.Fatalf("bob got %v, want %v", got, c)
	}
	if got := must("dave"); got != d {
		t.Fatalf("dave got %v, want his own %v", got, d)
	}
	if _, err := p.Allocate("carol"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("carol: %v", err)
	}
	if _, err := p.Allocate(""); !errors.Is(err, ErrEmptyKey) {
		t.Fatalf("empty key: %v", err)
	}
	p.Release(ma("192.0.2.1")) // foreign: no-op
	p.Release(netip.Addr{})
	if p.Len() != p.Cap() {
		t.Fatalf("Len %d Cap %d", p.Len(), p.Cap())
	}
}

// TestSlash16 hands out every address of a /16 and checks uniqueness, then
// churns to exercise the free list.
func TestSlash16(t *testing.T) {
	p, err := New(mp("169.254.0.0/16"), ma("169.254.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	all := allocAll(t, p)
	if len(all) != 65533 {
		t.Fatalf("got %d addresses", len(all))
	}
	for i := 0; i < len(all); i += 2 {
		p.Release(all[i])
	}
	// Re-allocating with new keys reuses in release order.
	for i := 0; i < len(all); i += 2 {
		a, err := p.Allocate(fmt.Sprint("new", i))
		if err != nil {
			t.Fatal(err)
		}
		if a != all[i] {
			t.Fatalf("got %v, want %v (release order)", a, all[i])
		}
	}
	if p.Len() != p.Cap() {
		t.Fatalf("Len %d", p.Len())
	}
}

func TestConcurrent(t *testing.T) {
	p, err := New(mp("10.0.0.0/20"), ma("10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	const workers, rounds = 8, 500 // at most 8*50 keys held at once, far below Cap
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		held = map[netip.Addr]string{}
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				key := fmt.Sprintf("w%d-%d", w, r%50)
				a, err := p.Allocate(key)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if k, ok := held[a]; ok && k != key {
					t.Errorf("%v held by %s and %s", a, k, key)
				}
				held[a] = key
				mu.Unlock()
				if r%3 == 0 {
					mu.Lock()
					delete(held, a)
					mu.Unlock()
					p.Release(a)
				}
				p.Lookup(key)
				p.Len()
			}
		}()
	}
	wg.Wait()
	if p.Len() != len(held) {
		t.Errorf("Len %d, tracked %d", p.Len(), len(held))
	}
}

func BenchmarkAllocateRelease(b *testing.B) {
	p, err := New(mp("169.254.0.0/16"), ma("169.254.0.1"))
	if err != nil {
		b.Fatal(err)
	}
	// Fill half the pool so the free list and map are realistically sized.
	keys := make([]string, p.Cap())
	for i := range keys {
		keys[i] = fmt.Sprint("session-", i)
	}
	half := len(keys) / 2
	for _, k := range keys[:half] {
		if _, err := p.Allocate(k); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := keys[half+i%(len(keys)-half)]
		a, err := p.Allocate(k)
		if err != nil {
			b.Fatal(err)
		}
		p.Release(a)
		i++
	}
}
