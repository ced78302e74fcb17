package sitestore

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.uber.org/goleak"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel/site"
)

// TestLeases: a lease is claimed once (a second session gets a HeldError
// naming the holder), moves with its session to another server, is
// released only by the server holding it (without taking the leases that
// share its etcd lease along), expires with its Until, and is listed
// sorted by address with every field; for IPv4 addresses (Pool) and IPv6
// ones (Pool6) alike.
func TestLeases(t *testing.T) {
	for _, tc := range []struct {
		name string
		pfx  netip.Prefix // the addresses are its 9th to 12th
	}{
		{"IPv4", netip.MustParsePrefix("10.0.0.0/24")},
		{"IPv6", netip.MustParsePrefix("fd7a:5c3e:11::/64")},
	} {
		t.Run(tc.name, func(t *testing.T) { testLeases(t, tc.pfx) })
	}
}

// nth is the n-th address of p.
func nth(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for range n {
		a = a.Next()
	}
	return a
}

func testLeases(t *testing.T, pfx netip.Prefix) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	e := testenv.StartEtcd(t) // its own: the etcd lease count below is the cluster's
	a, b := newStore(t, e), newStore(t, e)
	c := ctx(t)
	until := time.Now().Add(time.Hour).Truncate(time.Second).UTC()
	since := until.Add(-2 * time.Hour)
	x, y := nth(pfx, 9), nth(pfx, 10)
	l := site.Lease{Addr: x, Session: "s-1", Server: "a", User: "alice", Client: netip.MustParseAddr("198.51.100.7"), Since: since, Until: until}
	if err := a.ClaimLease(c, l); err != nil {
		t.Fatal(err)
	}
	if err := a.ClaimLease(c, l); err != nil {
		t.Fatalf("claim again by the holder: %v", err)
	}
	var held *site.HeldError
	other := site.Lease{Addr: x, Session: "s-2", Server: "b", User: "bob", Since: since, Until: until}
	if err := b.ClaimLease(c, other); !errors.As(err, &held) || held.Holder != l {
		t.Fatalf("claim of a held address = %v, want a HeldError naming %+v", err, l)
	}
	// The session resumes on b: the lease moves there; a's release of it
	// is then a no-op.
	moved := l
	moved.Server, moved.Client = "b", netip.Addr{}
	if err := b.ClaimLease(c, moved); err != nil {
		t.Fatal(err)
	}
	if err := a.ReleaseLease(c, x, "s-1", "a"); err != nil {
		t.Fatal(err)
	}
	if err := a.ReleaseLease(c, x, "s-other", "b"); err != nil {
		t.Fatal(err)
	}
	y1 := site.Lease{Addr: y, Session: "s-3", Server: "a", Since: since, Until: until}
	if err := a.ClaimLease(c, y1); err != nil {
		t.Fatal(err)
	}
	ls, err := a.Leases(c)
	if err != nil || len(ls) != 2 || ls[0] != moved || ls[1] != y1 {
		t.Fatalf("Leases = %+v, %v; want [%+v %+v]", ls, err, moved, y1)
	}
	// z shares b's etcd lease with x: releasing x must not end it.
	z := site.Lease{Addr: nth(pfx, 12), Session: "s-5", Server: "b", Since: since, Until: until}
	if err := b.ClaimLease(c, z); err != nil {
		t.Fatal(err)
	}
	if err := b.ReleaseLease(c, x, "s-1", "b"); err != nil {
		t.Fatal(err)
	}
	if err := b.ClaimLease(c, other); err != nil {
		t.Fatalf("claim after the release: %v", err)
	}
	if ls, err := a.Leases(c); err != nil || len(ls) != 3 || ls[0] != other || ls[1] != y1 || ls[2] != z {
		t.Fatalf("after the move and release of %v: Leases = %+v, %v; want %+v, %+v, %+v", x, ls, err, other, y1, z)
	}
	// A lease ends with its Until, within the bucket's span (a second
	// here, so the wait is short).
	a.span = time.Second
	short := site.Lease{Addr: nth(pfx, 11), Session: "s-4", Server: "a", Until: time.Now().Add(time.Second)}
	if err := a.ClaimLease(c, short); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitFor)
	for {
		ls, err := a.Leases(c)
		if err != nil {
			t.Fatal(err)
		}
		if len(ls) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the 1 s lease is still there: %+v", ls)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// One etcd lease per client and minute of expiries, not one per key:
	// a's and b's for the hour (the short one has expired) for 3 keys.
	resp, err := a.cli.Leases(c)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.Leases); n != 2 {
		t.Fatalf("%d etcd leases live for 3 keys of one expiry minute from 2 clients, want 2", n)
	}
}

// TestDualStackLeases: a dual-stack session's IPv4 and IPv6 leases are
// two keys with the same rules: another session is refused either
// (HeldError naming the holder), a resume elsewhere moves each, releasing
// one leaves the other, and both are listed, IPv4 first.
func TestDualStackLeases(t *testing.T) {
	e := testenv.StartEtcd(t)
	a, b := newStore(t, e), newStore(t, e)
	c := ctx(t)
	until := time.Now().Add(time.Hour).Truncate(time.Second).UTC()
	v4 := site.Lease{Addr: netip.MustParseAddr("10.0.0.9"), Session: "s-1", Server: "a", User: "alice", Since: until.Add(-time.Hour), Until: until}
	v6 := v4
	v6.Addr = netip.MustParseAddr("fd7a:5c3e:11::9")
	for _, l := range []site.Lease{v6, v4} {
		if err := a.ClaimLease(c, l); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []site.Lease{v4, v6} {
		var held *site.HeldError
		other := site.Lease{Addr: l.Addr, Session: "s-2", Server: "b", Until: until}
		if err := b.ClaimLease(c, other); !errors.As(err, &held) || held.Holder != l {
			t.Fatalf("claim of %v held by s-1 = %v, want a HeldError naming %+v", l.Addr, err, l)
		}
	}
	if ls, err := b.Leases(c); err != nil || len(ls) != 2 || ls[0] != v4 || ls[1] != v6 {
		t.Fatalf("Leases = %+v, %v; want [%+v %+v]", ls, err, v4, v6)
	}
	// The session resumes on b: each lease moves; a's late release of
	// them is a no-op, b's release of the IPv4 one leaves the IPv6 one.
	m4, m6 := v4, v6
	m4.Server, m6.Server = "b", "b"
	for _, l := range []site.Lease{m4, m6} {
		if err := b.ClaimLease(c, l); err != nil {
			t.Fatalf("resume's claim of %v: %v", l.Addr, err)
		}
		if err := a.ReleaseLease(c, l.Addr, "s-1", "a"); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.ReleaseLease(c, m4.Addr, "s-1", "b"); err != nil {
		t.Fatal(err)
	}
	if ls, err := a.Leases(c); err != nil || len(ls) != 1 || ls[0] != m6 {
		t.Fatalf("after the IPv4 release: Leases = %+v, %v; want [%+v]", ls, err, m6)
	}
}

// TestClaimLeaseRace: sessions racing for one address from several
// clients: exactly one wins, every other gets a HeldError naming it.
func TestClaimLeaseRace(t *testing.T) {
	e := testenv.StartEtcd(t)
	x := netip.MustParseAddr("10.0.0.9")
	until := time.Now().Add(time.Hour)
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		s := newStore(t, e)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.ClaimLease(ctx(t), site.Lease{Addr: x, Session: "s-" + string(rune('a'+i)), Server: "srv", Until: until})
		}()
	}
	wg.Wait()
	won := 0
	var winner string
	for i, err := range errs {
		var held *site.HeldError
		switch {
		case err == nil:
			won++
			winner = "s-" + string(rune('a'+i))
		case !errors.As(err, &held):
			t.Fatalf("claim %d: %v", i, err)
		}
	}
	if won != 1 {
		t.Fatalf("%d claims won, want 1 (%v)", won, errs)
	}
	for _, err := range errs {
		var held *site.HeldError
		if errors.As(err, &held) && held.Holder.Session != winner {
			t.Fatalf("HeldError names %s, the winner is %s", held.Holder.Session, winner)
		}
	}
}

// TestLeaseErrors: leases that cannot be stored are refused with a clear
// error before etcd is asked; unreadable stored leases are reported.
func TestLeaseErrors(t *testing.T) {
	e := testenv.StartEtcd(t)
	s := newStore(t, e)
	until := time.Now().Add(time.Hour)
	x := netip.MustParseAddr("10.0.0.9")
	for _, tc := range []struct {
		name string
		l    site.Lease
		want string
	}{
		{"no address", site.Lease{Session: "s", Until: until}, "needs an address"},
		{"no session", site.Lease{Addr: x, Until: until}, "needs an address and a session"},
		{"ended", site.Lease{Addr: x, Session: "s", Until: time.Now().Add(-time.Second)}, "ends in the past"},
	} {
		if err := s.ClaimLease(ctx(t), tc.l); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if err := s.ReleaseLease(ctx(t), netip.Addr{}, "s", "a"); err == nil {
		t.Error("release of an invalid address: no error")
	}
	if ls, err := s.Leases(ctx(t)); err != nil || len(ls) != 0 {
		t.Fatalf("Leases after refused claims = %+v, %v", ls, err)
	}
	// A value not written by this package: unreadable, skipped by
	// Leases; a claim overwrites it.
	if _, err := s.cli.Put(ctx(t), s.leaseKey(x), "{"); err != nil {
		t.Fatal(err)
	}
	if ls, err := s.Leases(ctx(t)); err != nil || len(ls) != 0 {
		t.Fatalf("Leases with an unreadable value = %+v, %v", ls, err)
	}
	if err := s.ClaimLease(ctx(t), site.Lease{Addr: x, Session: "s", Until: until}); err != nil {
		t.Fatalf("claim over an unreadable value: %v", err)
	}
}

// TestDecodeLease: what decodeLease accepts.
func TestDecodeLease(t *testing.T) {
	s := &Store{prefix: "/p/", log: slog.New(slog.DiscardHandler)}
	kv := func(k, v string) *mvccpb.KeyValue { return &mvccpb.KeyValue{Key: []byte("/p/" + k), Value: []byte(v)} }
	for _, tc := range []struct {
		name string
		kv   *mvccpb.KeyValue
		ok   bool
	}{
		{"lease", kv("leases/10.0.0.9", `{"session":"x","server":"a","client":"192.0.2.1"}`), true},
		{"bad client kept", kv("leases/10.0.0.9", `{"session":"x","server":"a","client":"nonsense"}`), true},
		{"bad key", kv("leases/nonsense", `{"session":"x"}`), false},
		{"not JSON", kv("leases/10.0.0.9", `{`), false},
		{"no session", kv("leases/10.0.0.9", `{"server":"a"}`), false},
	} {
		if _, err := s.decodeLease(tc.kv); (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}

// TestClaimLeaseProposals: every claim that writes costs etcd one raft
// proposal, a resume's too (its key exists, written by the session's old
// server), and a claim of an address another session holds writes
// nothing, at most one failed transaction; a sign-in's claim reads
// nothing first (etcd's own counts, from its /metrics).
func TestClaimLeaseProposals(t *testing.T) {
	e := testenv.StartEtcd(t)
	a, b := newStore(t, e), newStore(t, e)
	until := time.Now().Add(time.Hour).Truncate(time.Second).UTC()
	// Each store grants its etcd lease for the expiry minute (a proposal
	// of its own) on its first claim.
	for i, s := range []*Store{a, b} {
		if err := s.ClaimLease(ctx(t), site.Lease{Addr: netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), Session: fmt.Sprint("warm-", i), Server: "w", Until: until}); err != nil {
			t.Fatal(err)
		}
	}
	x, y := netip.MustParseAddr("10.0.0.9"), netip.MustParseAddr("10.0.0.10")
	// s-2 signed in an hour ago on a: its lease there is the one a resume
	// on b moves.
	old := site.Lease{Addr: y, Session: "s-2", Server: "a", User: "bob", Since: until.Add(-2 * time.Hour), Until: until}
	if err := a.ClaimLease(ctx(t), old); err != nil {
		t.Fatal(err)
	}
	moved := old
	moved.Server = "b"
	var held *site.HeldError
	for _, tc := range []struct {
		what      string
		claim     func() error
		proposals float64
		ranges    float64 // etcd counts the transaction's compare as one; -1: any
	}{
		{"a sign-in's claim of a free address", func() error {
			return a.ClaimLease(ctx(t), site.Lease{Addr: x, Session: "s-1", Server: "a", Since: time.Now(), Until: until})
		}, 1, 1},
		{"the resume of s-2 on another server", func() error { return b.ClaimLease(ctx(t), moved) }, 1, -1},
		{"another session's claim of s-2's address", func() error {
			err := a.ClaimLease(ctx(t), site.Lease{Addr: y, Session: "s-3", Server: "a", Since: time.Now(), Until: until})
			if !errors.As(err, &held) || held.Holder != moved {
				return fmt.Errorf("got %v, want a HeldError naming %+v", err, moved)
			}
			return nil
		}, 1, -1},
	} {
		p0, r0 := etcdProposals(t, e), etcdRanges(t, e)
		if err := tc.claim(); err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		p, r := etcdProposals(t, e)-p0, etcdRanges(t, e)-r0
		t.Logf("%s: %v proposals, %v ranges", tc.what, p, r)
		if p > tc.proposals || tc.ranges >= 0 && r > tc.ranges {
			t.Errorf("%s: %v raft proposals and %v reads, want at most %v and %v", tc.what, p, r, tc.proposals, tc.ranges)
		}
	}
}
