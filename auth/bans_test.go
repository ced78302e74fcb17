package auth

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestBansBruteForce(t *testing.T) {
	clk := newFakeClock()
	b := NewBans(BanConfig{Threshold: 20, BanFor: 5 * time.Minute, Decay: time.Minute, Now: clk.Now})
	attacker := netip.MustParseAddr("192.0.2.1")
	other := netip.MustParseAddr("192.0.2.2")

	for i := 1; i <= 9; i++ {
		if b.AddFailure(attacker, 0) {
			t.Fatalf("banned after %d failures", i)
		}
	}
	if !b.AddFailure(attacker, 0) || !b.Banned(attacker) {
		t.Fatal("not banned after 10 failures")
	}
	if b.Banned(other) {
		t.Fatal("another IP is banned")
	}
	if l := b.List(); len(l) != 1 || l[0].Addr != attacker || !l[0].Until.Equal(clk.Now().Add(5*time.Minute)) {
		t.Fatalf("List = %+v", l)
	}
	// Failures during the ban do not extend it.
	clk.Add(4 * time.Minute)
	b.AddFailure(attacker, 0)
	clk.Add(61 * time.Second)
	if b.Banned(attacker) {
		t.Fatal("ban did not expire")
	}
	if len(b.List()) != 0 {
		t.Fatal("expired ban listed")
	}
	if b.AddFailure(attacker, 0) {
		t.Fatal("a single failure after the ban re-banned")
	}
}

func TestBansDecay(t *testing.T) {
	clk := newFakeClock()
	b := NewBans(BanConfig{Threshold: 20, Decay: time.Minute, Now: clk.Now})
	ip := netip.MustParseAddr("198.51.100.7")
	// A user mistyping every other minute for two hours is never banned.
	for range 60 {
		if b.AddFailure(ip, 0) {
			t.Fatal("slow failures banned")
		}
		clk.Add(2 * time.Minute)
	}
	b.AddFailure(ip, 10)
	if got := b.Points(ip); got < 10 || got > 13 {
		t.Fatalf("points = %d", got)
	}
	clk.Add(20 * time.Minute)
	if got := b.Points(ip); got != 0 {
		t.Fatalf("points after decay = %d", got)
	}
}

func TestBansLiftAndNormalise(t *testing.T) {
	clk := newFakeClock()
	b := NewBans(BanConfig{Threshold: 2, Now: clk.Now})
	v6 := netip.MustParseAddr("2001:db8:1:2::10")
	b.AddFailure(v6, 2)
	if !b.Banned(netip.MustParseAddr("2001:db8:1:2:ffff::1")) {
		t.Fatal("same /64 not banned")
	}
	if b.Banned(netip.MustParseAddr("2001:db8:1:3::10")) {
		t.Fatal("other /64 banned")
	}
	v4 := netip.MustParseAddr("203.0.113.9")
	b.AddFailure(netip.MustParseAddr("::ffff:203.0.113.9"), 2)
	if !b.Banned(v4) {
		t.Fatal("IPv4-mapped address not normalised")
	}
	if !b.Lift(v4) || b.Banned(v4) || b.Lift(v4) {
		t.Fatal("Lift")
	}
	if b.Banned(netip.Addr{}) || b.AddFailure(netip.Addr{}, 1) {
		t.Fatal("invalid address")
	}
}

// TestBansSprayBounded: a spray of distinct sources keeps memory capped and
// does not evict active bans of other sources.
func TestBansSprayBounded(t *testing.T) {
	clk := newFakeClock()
	b := NewBans(BanConfig{Threshold: 4, MaxEntries: 1000, MaxBans: 100, Now: clk.Now})
	victim := netip.MustParseAddr("10.255.0.1")
	b.AddFailure(victim, 4)
	base := netip.MustParseAddr("10.0.0.0")
	a := base
	for range 100_000 {
		a = a.Next()
		b.AddFailure(a, 1)
	}
	if n := b.Len(); n > 1100 {
		t.Fatalf("%d entries after spray, cap 1100", n)
	}
	if !b.Banned(victim) {
		t.Fatal("spray of scores evicted a ban")
	}
	// Sprayed bans are capped too (oldest evicted).
	for range 500 {
		a = a.Next()
		b.AddFailure(a, 4)
	}
	if len(b.List()) > 100 {
		t.Fatalf("%d bans, cap 100", len(b.List()))
	}
}

func TestBansConcurrent(t *testing.T) {
	b := NewBans(BanConfig{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := netip.AddrFrom4([4]byte{10, 0, byte(g), 1})
			for range 1000 {
				b.AddFailure(ip, 1)
				b.Banned(ip)
				_ = b.List()
			}
		}()
	}
	wg.Wait()
	if len(b.List()) != 8 {
		t.Fatalf("bans = %d", len(b.List()))
	}
}

func BenchmarkBanned(b *testing.B) {
	bans := NewBans(BanConfig{})
	ip := netip.MustParseAddr("192.0.2.1")
	bans.AddFailure(ip, 100)
	for b.Loop() {
		bans.Banned(ip)
	}
}

// TestBansImpose: a ban decided elsewhere (the site store) applies until
// its end, never shortens a longer one, ignores past ends, and can be
// lifted.
func TestBansImpose(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := NewBans(BanConfig{Now: func() time.Time { return now }, Threshold: 6})
	a := netip.MustParseAddr("192.0.2.9")
	tests := []struct {
		name   string
		until  time.Time
		banned bool
		end    time.Time
	}{
		{"past end ignored", now.Add(-time.Second), false, time.Time{}},
		{"imposed", now.Add(time.Minute), true, now.Add(time.Minute)},
		{"extended", now.Add(2 * time.Minute), true, now.Add(2 * time.Minute)},
		{"never shortened", now.Add(30 * time.Second), true, now.Add(2 * time.Minute)},
	}
	for _, tt := range tests {
		if got := b.Impose(a, tt.until); got != tt.banned {
			t.Errorf("%s: Impose = %v, want %v", tt.name, got, tt.banned)
		}
		end, ok := b.BannedUntil(a)
		if ok != tt.banned || !end.Equal(tt.end) {
			t.Errorf("%s: BannedUntil = %v %v, want %v %v", tt.name, end, ok, tt.end, tt.banned)
		}
	}
	if b.Points(a) != 6 {
		t.Errorf("imposed ban's points = %d, want the threshold 6", b.Points(a))
	}
	if !b.Lift(a) || b.Banned(a) {
		t.Error("an imposed ban cannot be lifted")
	}
	if b.Impose(netip.Addr{}, now.Add(time.Minute)) {
		t.Error("invalid address banned")
	}
	// Points earned before fold into the ban (its score is the threshold
	// or more); IPv6 groups by prefix.
	b.AddFailure(netip.MustParseAddr("2001:db8::1"), 4)
	b.Impose(netip.MustParseAddr("2001:db8::2"), now.Add(time.Minute))
	if !b.Banned(netip.MustParseAddr("2001:db8::3")) || b.Points(netip.MustParseAddr("2001:db8::4")) != 6 || b.Len() != 1 {
		t.Errorf("an imposed IPv6 ban: banned %v, points %d, entries %d; want true, 6, 1",
			b.Banned(netip.MustParseAddr("2001:db8::3")), b.Points(netip.MustParseAddr("2001:db8::4")), b.Len())
	}
	// Expiry.
	now = now.Add(3 * time.Minute)
	if b.Banned(a) || b.Banned(netip.MustParseAddr("2001:db8::1")) {
		t.Error("an imposed ban outlived its end")
	}
}
