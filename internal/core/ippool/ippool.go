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
//     order within a stride, see below), then released addresses, least
//     recently released first. A
//     released address is therefore reused as late as possible, which keeps
//     the stickiness above working for as long as possible.
//   - Excluded: the network address, the IPv4 broadcast address and the
//     reserved addresses given to New (the gateway's own in-tunnel address)
//     are never handed out.
//
// Claim leases one given address to a key (a session resuming on another
// server of a site brings the address its cookie names, and must get that
// one or none: openconnect 9.01 aborts a reconnect that returns another).
//
// Strides: a site's servers share one prefix. NewStrided splits the pool
// into equal contiguous strides; each server hands out addresses of its own
// stride first (never-used, then released) and borrows from the other
// strides, in order after its own, only when its stride is full. So two
// servers that sign clients in at the same time do not hand out the same
// address, and a client that fails over claims an address the new server's
// own sign-ins are unlikely to want.
//
// Allocate, Claim, Release and Lookup are O(1) (amortised; Allocate is
// O(strides) when borrowing) and safe for concurrent use. Bookkeeping grows
// lazily in pages of 1,024 addresses the first time one of them is leased:
// about 25 bytes per address plus a map entry per remembered key, 4.2 MB
// measured for a full /16 leased to 32-character keys (the keys' own
// strings are the caller's).
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
	// ErrEmptyKey: Allocate or Claim was called with an empty key.
	ErrEmptyKey = errors.New("ippool: empty key")
	// ErrNotInPool: Claim named an address the pool never hands out
	// (outside the prefix, the network, broadcast or a reserved address,
	// or past MaxAddrs).
	ErrNotInPool = errors.New("ippool: address not in pool")
	// ErrTaken: Claim named an address another key holds.
	ErrTaken = errors.New("ippool: address held by another key")
	// ErrKeyHolds: Claim's key holds a different address already.
	ErrKeyHolds = errors.New("ippool: key holds another address")
	// ErrBadStrides: NewStrided's stride count or own stride is out of
	// range.
	ErrBadStrides = errors.New("stride out of range")
)

// ClaimError reports why Claim refused an address.
type ClaimError struct {
	Addr netip.Addr // the address asked for
	Held netip.Addr // with ErrKeyHolds: the address the key holds
	Err  error      // ErrNotInPool, ErrTaken or ErrKeyHolds
}

func (e *ClaimError) Error() string {
	if e.Held.IsValid() {
		return fmt.Sprintf("%v: %s (holds %s)", e.Err, e.Addr, e.Held)
	}
	return fmt.Sprintf("%v: %s", e.Err, e.Addr)
}

// Unwrap returns the sentinel error.
func (e *ClaimError) Unwrap() error { return e.Err }

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

// none marks the end of a free list and "no offset".
const none = ^uint32(0)

// pageBits sizes the lazily allocated bookkeeping pages: 1,024 entries of
// 24 bytes, so a pool that hands out few addresses costs a few KiB however
// large its prefix, and a page costs one allocation per 1,024 addresses.
const pageBits = 10

// entry is the bookkeeping of one offset that was leased at least once.
type entry struct {
	key        string // the key holding it, or that held it last ("" once forgotten)
	prev, next uint32 // free-list links while released (not leased)
}

// stride is one contiguous run of offsets [lo, hi) with its own
// never-used cursor and free list.
type stride struct {
	lo, hi uint32
	fresh  uint32 // offsets in [fresh, hi) were never leased unless their touched bit says so
	head   uint32 // least recently released offset, or none
	tail   uint32 // most recently released offset, or none
}

// Pool leases addresses of one prefix to keys. The zero value is not usable;
// create one with New or NewStrided.
type Pool struct {
	prefix netip.Prefix
	is4    bool
	hi     uint64 // IPv6: upper 64 bits of every address in the pool
	base   uint64 // address (IPv4) or lower 64 bits (IPv6) of offset 0: network address + 1
	n      uint32 // candidate offsets are [0, n)
	cap    int    // n minus the reserved offsets
	width  uint32 // offsets per stride (the last may be shorter or empty)
	own    int    // the stride Allocate prefers

	mu       sync.Mutex
	reserved []uint64          // bitmap over [0, n): never handed out
	inUse    []uint64          // bitmap over [0, n): leased (reserved bits stay clear)
	touched  []uint64          // bitmap over [0, n): leased at least once (its entry exists)
	pages    [][]entry         // per 1<<pageBits offsets, allocated at the first lease
	strides  []stride          //
	byKey    map[string]uint32 // key -> offset it holds or last held (while its entry's key == key)
	used     int
}

// New returns a pool over prefix with one stride: NewStrided(prefix, 1, 0,
// reserved...).
func New(prefix netip.Prefix, reserved ...netip.Addr) (*Pool, error) {
	return NewStrided(prefix, 1, 0, reserved...)
}

// NewStrided returns a pool over prefix split into count strides, of which
// Allocate prefers stride own (0-based). The network address, the IPv4
// broadcast address and every reserved address are never handed out;
// reserved addresses must lie inside prefix (reserving the network or
// broadcast address is allowed and changes nothing). IPv4-mapped IPv6
// addresses are unmapped first. count must be in [1, candidate addresses]
// and own in [0, count). Errors are *PrefixError.
func NewStrided(prefix netip.Prefix, count, own int, reserved ...netip.Addr) (*Pool, error) {
	if !prefix.IsValid() || prefix.Addr().Is4In6() {
		return nil, &PrefixError{Prefix: prefix, Err: ErrInvalidPrefix, Detail: "want an IPv4 or IPv6 CIDR such as 169.254.0.0/16"}
	}
	if prefix.Addr().Zone() != "" {
		return nil, &PrefixError{Prefix: prefix, Err: ErrInvalidPrefix, Detail: "zone not allowed"}
	}
	if m := prefix.Masked(); m != prefix {
		return nil, &PrefixError{Prefix: prefix, Err: ErrNotMasked, Detail: "use " + m.String()}
	}
	p := &Pool{prefix: prefix, is4: prefix.Addr().Is4(), byKey: make(map[string]uint32)}
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
	if count < 1 || uint64(count) > max(size, 1) || own < 0 || own >= count {
		return nil, &PrefixError{Prefix: prefix, Err: ErrBadStrides,
			Detail: fmt.Sprintf("%d strides, own %d: want 1 to %d strides and own in [0, strides)", count, own, size)}
	}
	words := (int(p.n) + 63) / 64
	p.reserved = make([]uint64, words)
	p.inUse = make([]uint64, words)
	p.touched = make([]uint64, words)
	p.pages = make([][]entry, (int(p.n)+1<<pageBits-1)>>pageBits)
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
	p.width = uint32((uint64(p.n) + uint64(count) - 1) / uint64(count))
	p.own = own
	p.strides = make([]stride, count)
	for i := range p.strides {
		lo := min(uint64(i)*uint64(p.width), uint64(p.n))
		hi := min(lo+uint64(p.width), uint64(p.n))
		p.strides[i] = stride{lo: uint32(lo), hi: uint32(hi), fresh: uint32(lo), head: none, tail: none}
	}
	return p, nil
}

// Allocate leases an address to key and returns it. If key holds an address
// it gets the same one back. If key held an address that was released and
// has not been leased to another key since, it gets that address again.
// Otherwise it gets a never-used address of its own stride, else the least
// recently released one of its own stride, else the same from the next
// strides in turn (borrowing). It returns ErrExhausted when every address
// is leased and ErrEmptyKey for an empty key.
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
	off := none
	for i := range p.strides {
		st := &p.strides[(p.own+i)%len(p.strides)]
		if off = p.takeFresh(st); off != none {
			break
		}
		if off = st.head; off != none {
			p.unlink(off)
			p.forget(off) // its last holder can no longer get it back
			break
		}
	}
	if off == none {
		return netip.Addr{}, ErrExhausted
	}
	p.lease(off, key)
	return p.addrAt(off), nil
}

// Claim leases addr to key: the address a session brings when it resumes
// on another server. It succeeds when addr is free (never used, or
// released: then its last holder can no longer get it back) or key holds
// it already. Errors are *ClaimError wrapping ErrNotInPool, ErrTaken (another
// key holds addr) or ErrKeyHolds (key holds another address); ErrEmptyKey
// for an empty key. Strides do not matter to Claim.
func (p *Pool) Claim(key string, addr netip.Addr) error {
	if key == "" {
		return ErrEmptyKey
	}
	addr = addr.Unmap()
	off, ok := p.offsetOf(addr)
	if !ok || bitGet(p.reserved, off) {
		return &ClaimError{Addr: addr, Err: ErrNotInPool}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if bitGet(p.inUse, off) {
		if p.ent(off).key == key {
			return nil
		}
		return &ClaimError{Addr: addr, Err: ErrTaken}
	}
	if old, ok := p.byKey[key]; ok && old != off {
		if bitGet(p.inUse, old) {
			return &ClaimError{Addr: addr, Held: p.addrAt(old), Err: ErrKeyHolds}
		}
		p.forget(old) // key's remembered address: it moves on to addr
	}
	if bitGet(p.touched, off) {
		p.unlink(off)
		if p.ent(off).key != key {
			p.forget(off)
		}
	}
	p.lease(off, key)
	return nil
}

// lease marks off leased to key.
func (p *Pool) lease(off uint32, key string) {
	bitSet(p.touched, off)
	p.ent(off).key = key
	p.byKey[key] = off
	bitSet(p.inUse, off)
	p.used++
}

// forget drops the memory of who held the released offset off.
func (p *Pool) forget(off uint32) {
	e := p.ent(off)
	if o, ok := p.byKey[e.key]; ok && o == off {
		delete(p.byKey, e.key)
	}
	e.key = ""
}

// takeFresh returns the lowest never-used, non-reserved offset of st, or
// none. The cursor only moves forward, so skipping reserved offsets and
// offsets Claim took out of order costs O(1) amortised.
func (p *Pool) takeFresh(st *stride) uint32 {
	for st.fresh < st.hi {
		off := st.fresh
		st.fresh++
		if !bitGet(p.reserved, off) && !bitGet(p.touched, off) {
			return off
		}
	}
	return none
}

// ent returns off's entry, allocating its page at the first use.
func (p *Pool) ent(off uint32) *entry {
	pg := p.pages[off>>pageBits]
	if pg == nil {
		pg = make([]entry, 1<<pageBits)
		for i := range pg {
			pg[i].prev, pg[i].next = none, none
		}
		p.pages[off>>pageBits] = pg
	}
	return &pg[off&(1<<pageBits-1)]
}

// strideOf returns the stride holding off.
func (p *Pool) strideOf(off uint32) *stride { return &p.strides[off/p.width] }

// Release returns addr to the pool (to the free list of the stride it
// belongs to, whoever leased it). Releasing an address that is not leased
// (already released, reserved, or not in the pool) does nothing. The key
// that held addr is remembered, see Allocate.
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
	st := p.strideOf(off)
	e := p.ent(off)
	e.prev, e.next = st.tail, none
	if st.tail != none {
		p.ent(st.tail).next = off
	} else {
		st.head = off
	}
	st.tail = off
}

// unlink removes off from its stride's free list.
func (p *Pool) unlink(off uint32) {
	st := p.strideOf(off)
	e := p.ent(off)
	if e.prev != none {
		p.ent(e.prev).next = e.next
	} else {
		st.head = e.next
	}
	if e.next != none {
		p.ent(e.next).prev = e.prev
	} else {
		st.tail = e.prev
	}
	e.prev, e.next = none, none
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

// Strides returns the stride count and the stride Allocate prefers.
func (p *Pool) Strides() (count, own int) { return len(p.strides), p.own }

// StrideOf returns the stride holding a, or -1 if a is not an address the
// pool may hand out.
func (p *Pool) StrideOf(a netip.Addr) int {
	off, ok := p.offsetOf(a.Unmap())
	if !ok || bitGet(p.reserved, off) {
		return -1
	}
	return int(off / p.width)
}

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
