// Package ippool leases in-tunnel client addresses out of one prefix
// (SPEC R-C1).
//
// A Pool hands each session (identified by a key: its session id or cookie)
// one address. It exists so that the gateway can serve a /16 to 64,000
// concurrent clients with O(1) work per lease and little memory, and so that
// a reconnecting client gets its old address back:
//
//   - Sticky: Allocate with a key that holds an address returns that address.
//     After Release, the pool remembers which key last held the address; if
//     the key asks again before the address went to anyone else, it gets the
//     same address back.
//   - Reuse last: never-used addresses are handed out first (in ascending
//     order), then released addresses, least recently released first. A
//     released address is therefore reused as late as possible, which keeps
//     the stickiness above working for as long as possible.
//   - Excluded: the network address, the IPv4 broadcast address and the
//     reserved addresses given to New (the gateway's own in-tunnel address)
//     are never handed out.
//
// Allocate, Release and Lookup are O(1) (amortised) and safe for concurrent
// use. Bookkeeping grows lazily with the number of distinct addresses ever
// handed out: about 30 bytes per address plus a map entry per remembered key,
// roughly 4 MB for a full /16.
package ippool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
)

// MaxAddrs caps the number of addresses one Pool manages. It bounds the
// bookkeeping memory (see the package doc) to some tens of megabytes while
// still covering an IPv4 /12, sixteen times the /16 that R-C1 requires. A
// larger prefix (typically an IPv6 /64) is usable, but only its first MaxAddrs
// addresses after the network address are handed out.
const MaxAddrs = 1 << 20

// Sentinel errors, wrapped by *PrefixError or returned as they are; test with
// errors.Is.
var (
	// ErrInvalidPrefix: the prefix is the zero value or an IPv4-mapped IPv6
	// prefix.
	ErrInvalidPrefix = errors.New("invalid prefix")
	// ErrNotMasked: the prefix has host bits set (10.1.2.3/16).
	ErrNotMasked = errors.New("host bits set")
	// ErrTooSmall: no address is left to hand out once the network,
	// broadcast and reserved addresses are taken away.
	ErrTooSmall = errors.New("prefix too small")
	// ErrBadReserved: a reserved address is invalid or outside the prefix.
	ErrBadReserved = errors.New("reserved address not in prefix")
	// ErrExhausted: every address is leased.
	ErrExhausted = errors.New("ippool: address pool exhausted")
	// ErrEmptyKey: Allocate was called with an empty key.
	ErrEmptyKey = errors.New("ippool: empty key")
)

// PrefixError reports why New rejected its arguments.
type PrefixError struct {
	Prefix netip.Prefix // the prefix given to New
	Addr   netip.Addr   // the offending reserved address, if any
	Err    error        // ErrInvalidPrefix, ErrNotMasked, ErrTooSmall or ErrBadReserved
	Detail string       // a hint, such as the masked form; may be empty
}

func (e *PrefixError) Error() string {
	s := fmt.Sprintf("ippool: %s: %v", e.Prefix, e.Err)
	if e.Addr.IsValid() {
		s = fmt.Sprintf("ippool: %s: %v: %s", e.Prefix, e.Err, e.Addr)
	}
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s
}

// Unwrap returns the sentinel error.
func (e *PrefixError) Unwrap() error { return e.Err }

// none marks the end of the free list and "no offset".
const none = ^uint32(0)

// Pool leases addresses of one prefix to keys. The zero value is not usable;
// create one with New.
type Pool struct {
	prefix netip.Prefix
	is4    bool
	hi     uint64 // IPv6: upper 64 bits of every address in the pool
	base   uint64 // address (IPv4) or lower 64 bits (IPv6) of offset 0: network address + 1
	n      uint32 // candidate offsets are [0, n)
	cap    int    // n minus the reserved offsets

	mu       sync.Mutex
	reserved []uint64          // bitmap over [0, n): never handed out
	inUse    []uint64          // bitmap over [0, n): leased (reserved bits stay clear)
	fresh    uint32            // offsets >= fresh have never been handed out
	key      []string          // per offset < fresh: the key holding it, or that held it last
	prev     []uint32          // per offset < fresh: free-list links (released, not leased)
	next     []uint32          //
	head     uint32            // least recently released offset, or none
	tail     uint32            // most recently released offset, or none
	byKey    map[string]uint32 // key -> offset it holds or last held (while key[offset] == key)
	used     int
}

// New returns a pool over prefix. The network address, the IPv4 broadcast
// address and every reserved address are never handed out; reserved
// addresses must lie inside prefix (reserving the network or broadcast
// address is allowed and changes nothing). IPv4-mapped IPv6 addresses are
// unmapped first. Errors are *PrefixError.
func New(prefix netip.Prefix, reserved ...netip.Addr) (*Pool, error) {
	if !prefix.IsValid() || prefix.Addr().Is4In6() {
		return nil, &PrefixError{Prefix: prefix, Err: ErrInvalidPrefix, Detail: "want an IPv4 or IPv6 CIDR such as 169.254.0.0/16"}
	}
	if prefix.Addr().Zone() != "" {
		return nil, &PrefixError{Prefix: prefix, Err: ErrInvalidPrefix, Detail: "zone not allowed"}
	}
	if m := prefix.Masked(); m != prefix {
		return nil, &PrefixError{Prefix: prefix, Err: ErrNotMasked, Detail: "use " + m.String()}
	}
	p := &Pool{prefix: prefix, is4: prefix.Addr().Is4(), head: none, tail: none, byKey: make(map[string]uint32)}
	hostBits := prefix.Addr().BitLen() - prefix.Bits()
	// Offsets start after the network address; IPv4 also loses the broadcast
	// address (the last one). size is the count of addresses after the
	// network address, clamped to MaxAddrs.
	var size uint64
	if hostBits >= 32 {
		size = MaxAddrs
	} else {
		size = min(uint64(1)<<hostBits-1, MaxAddrs)
	}
	if p.is4 {
		a := prefix.Addr().As4()
		p.base = uint64(binary.BigEndian.Uint32(a[:])) + 1
		if size == uint64(1)<<hostBits-1 && size > 0 {
			size-- // broadcast
		}
	} else {
		a := prefix.Addr().As16()
		p.hi = binary.BigEndian.Uint64(a[:8])
		p.base = binary.BigEndian.Uint64(a[8:]) + 1 // host bits are zero, so no carry
	}
	p.n = uint32(size)
	words := (int(p.n) + 63) / 64
	p.reserved = make([]uint64, words)
	p.inUse = make([]uint64, words)
	nres := 0
	for _, r := range reserved {
		r = r.Unmap()
		if !r.IsValid() || r.Zone() != "" || !prefix.Contains(r) {
			return nil, &PrefixError{Prefix: prefix, Addr: r, Err: ErrBadReserved}
		}
		off, ok := p.offsetOf(r)
		if !ok || bitGet(p.reserved, off) {
			continue // network, broadcast, beyond MaxAddrs, or a duplicate
		}
		bitSet(p.reserved, off)
		nres++
	}
	p.cap = int(p.n) - nres
	if p.cap <= 0 {
		return nil, &PrefixError{Prefix: prefix, Err: ErrTooSmall, Detail: "no address left to hand out after network, broadcast and reserved addresses"}
	}
	return p, nil
}

// Allocate leases an address to key and returns it. If key holds an address
// it gets the same one back. If key held an address that was released and
// has not been leased to another key since, it gets that address again.
// Otherwise it gets a never-used address, or else the least recently
// released one. It returns ErrExhausted when every address is leased and
// ErrEmptyKey for an empty key.
func (p *Pool) Allocate(key string) (netip.Addr, error) {
	if key == "" {
		return netip.Addr{}, ErrEmptyKey
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if off, ok := p.byKey[key]; ok {
		if !bitGet(p.inUse, off) {
			p.unlink(off)
			bitSet(p.inUse, off)
			p.used++
		}
		return p.addrAt(off), nil
	}
	off := p.takeFresh()
	if off == none {
		if off = p.head; off == none {
			return netip.Addr{}, ErrExhausted
		}
		p.unlink(off)
		delete(p.byKey, p.key[off]) // its last holder can no longer get it back
	}
	p.key[off] = key
	p.byKey[key] = off
	bitSet(p.inUse, off)
	p.used++
	return p.addrAt(off), nil
}

// takeFresh returns the lowest never-used, non-reserved offset and grows the
// per-offset bookkeeping to cover it, or returns none. The cursor only moves
// forward, so skipping reserved offsets costs O(1) amortised.
func (p *Pool) takeFresh() uint32 {
	for p.fresh < p.n {
		off := p.fresh
		p.fresh++
		p.key = append(p.key, "")
		p.prev = append(p.prev, none)
		p.next = append(p.next, none)
		if !bitGet(p.reserved, off) {
			return off
		}
	}
	return none
}

// Release returns addr to the pool. Releasing an address that is not leased
// (already released, reserved, or not in the pool) does nothing. The key that
// held addr is remembered, see Allocate.
func (p *Pool) Release(addr netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	off, ok := p.offsetOf(addr.Unmap())
	if !ok || !bitGet(p.inUse, off) {
		return
	}
	bitClear(p.inUse, off)
	p.used--
	// Append to the tail: the head is the least recently released.
	p.prev[off], p.next[off] = p.tail, none
	if p.tail != none {
		p.next[p.tail] = off
	} else {
		p.head = off
	}
	p.tail = off
}

// unlink removes off from the free list.
func (p *Pool) unlink(off uint32) {
	pr, nx := p.prev[off], p.next[off]
	if pr != none {
		p.next[pr] = nx
	} else {
		p.head = nx
	}
	if nx != none {
		p.prev[nx] = pr
	} else {
		p.tail = pr
	}
	p.prev[off], p.next[off] = none, none
}

// Lookup returns the address key currently holds. A released address that
// key might get back from Allocate does not count.
func (p *Pool) Lookup(key string) (netip.Addr, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	off, ok := p.byKey[key]
	if !ok || !bitGet(p.inUse, off) {
		return netip.Addr{}, false
	}
	return p.addrAt(off), true
}

// Len returns the number of leased addresses.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.used
}

// Cap returns the number of addresses the pool can hand out: the prefix
// minus network, broadcast and reserved addresses, at most MaxAddrs.
func (p *Pool) Cap() int { return p.cap }

// Prefix returns the pool's prefix.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Contains reports whether a is an address the pool may hand out: inside
// the prefix, not the network, broadcast or a reserved address, and within
// the first MaxAddrs. It does not say whether a is leased.
func (p *Pool) Contains(a netip.Addr) bool {
	off, ok := p.offsetOf(a.Unmap())
	return ok && !bitGet(p.reserved, off) // reserved never changes after New
}

// offsetOf maps a to its offset, if it is a candidate address of the pool.
func (p *Pool) offsetOf(a netip.Addr) (uint32, bool) {
	var v uint64
	switch {
	case p.is4 && a.Is4():
		b := a.As4()
		v = uint64(binary.BigEndian.Uint32(b[:]))
	case !p.is4 && a.Is6() && a.Zone() == "":
		b := a.As16()
		if binary.BigEndian.Uint64(b[:8]) != p.hi {
			return 0, false
		}
		v = binary.BigEndian.Uint64(b[8:])
	default:
		return 0, false
	}
	if v < p.base || v-p.base >= uint64(p.n) {
		return 0, false
	}
	return uint32(v - p.base), true
}

// addrAt maps an offset back to its address.
func (p *Pool) addrAt(off uint32) netip.Addr {
	v := p.base + uint64(off)
	if p.is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(v))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], p.hi)
	binary.BigEndian.PutUint64(b[8:], v)
	return netip.AddrFrom16(b)
}

func bitGet(m []uint64, i uint32) bool { return m[i/64]&(1<<(i%64)) != 0 }
func bitSet(m []uint64, i uint32)      { m[i/64] |= 1 << (i % 64) }
func bitClear(m []uint64, i uint32)    { m[i/64] &^= 1 << (i % 64) }
