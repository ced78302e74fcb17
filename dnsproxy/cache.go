package dnsproxy

import (
	"encoding/binary"
	"errors"
	"hash/maphash"
	"sync"
)

// The cache stores packed responses so that a hit is a copy plus a few
// byte patches (ID, flags, question case, TTLs) with no allocation: the
// proxy's cached throughput must keep up with the upstream server's.

// cacheShards splits the cache's lock across readers; a power of two so a
// shard is picked by masking.
const cacheShards = 16

// entryOverhead approximates an entry's fixed memory (struct, map slot,
// slice and string headers) for the byte bound.
const entryOverhead = 160

// maxKeyLen is the longest cache key: a 255-byte wire name plus type,
// class and flags.
const maxKeyLen = 255 + 5

// Key flag bits: answers differ with the DO and CD request bits.
const (
	keyDO = 1 << 0
	keyCD = 1 << 1
)

// ttlRef locates one record TTL in a packed response.
type ttlRef struct {
	off uint16 // wire offset of the 32-bit TTL
	ttl uint32 // TTL when stored
}

// entry is an immutable cached response.
type entry struct {
	key     string
	wire    []byte   // packed response: ID 0, no OPT record
	ttls    []ttlRef // every record TTL in wire
	rcode   int
	stored  int64 // server clock (ns) when stored
	expires int64 // server clock (ns) when it stops being served
	size    int   // memory estimate for the byte bound

	prev, next *entry // LRU list, guarded by the shard lock
}

type cacheShard struct {
	mu         sync.Mutex
	m          map[string]*entry
	root       entry // LRU sentinel: root.next is the most recent
	bytes      int
	maxEntries int
	maxBytes   int
}

// cache is a sharded LRU bounded by entry count and bytes.
type cache struct {
	seed   maphash.Seed
	shards [cacheShards]cacheShard
}

func newCache(entries, bytes int) *cache {
	c := &cache{seed: maphash.MakeSeed()}
	for i := range c.shards {
		sh := &c.shards[i]
		sh.m = make(map[string]*entry)
		sh.root.next, sh.root.prev = &sh.root, &sh.root
		// Each shard gets an equal share, at least one entry.
		sh.maxEntries = max(1, entries/cacheShards)
		sh.maxBytes = max(1, bytes/cacheShards)
	}
	return c
}

// shard picks key's shard; maphash.Bytes and maphash.String agree on equal
// contents, so get (bytes) and put (string) find the same shard.
func (c *cache) shard(key []byte) *cacheShard {
	return &c.shards[maphash.Bytes(c.seed, key)&(cacheShards-1)]
}

// get returns the live entry for key, or nil. Expired entries are removed.
func (c *cache) get(key []byte, now int64) *entry {
	sh := c.shard(key)
	sh.mu.Lock()
	e := sh.m[string(key)]
	if e != nil {
		if now >= e.expires {
			sh.remove(e)
			e = nil
		} else {
			sh.unlink(e)
			sh.pushFront(e)
		}
	}
	sh.mu.Unlock()
	return e
}

// put inserts e, replacing an entry with the same key and evicting the
// least recently used entries beyond the bounds.
func (c *cache) put(e *entry) {
	sh := &c.shards[maphash.String(c.seed, e.key)&(cacheShards-1)]
	if e.size > sh.maxBytes {
		return
	}
	sh.mu.Lock()
	if old := sh.m[e.key]; old != nil {
		sh.remove(old)
	}
	sh.m[e.key] = e
	sh.pushFront(e)
	sh.bytes += e.size
	for len(sh.m) > sh.maxEntries || sh.bytes > sh.maxBytes {
		sh.remove(sh.root.prev)
	}
	sh.mu.Unlock()
}

// size returns the entry count and byte estimate.
func (c *cache) size() (entries, bytes int) {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		entries += len(sh.m)
		bytes += sh.bytes
		sh.mu.Unlock()
	}
	return entries, bytes
}

func (sh *cacheShard) pushFront(e *entry) {
	e.prev, e.next = &sh.root, sh.root.next
	e.next.prev = e
	sh.root.next = e
}

func (sh *cacheShard) unlink(e *entry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (sh *cacheShard) remove(e *entry) {
	sh.unlink(e)
	delete(sh.m, e.key)
	sh.bytes -= e.size
}

// newEntry builds an entry from a packed response (ID 0, no OPT, question
// name equal to the key's name), valid for life nanoseconds from now.
func newEntry(key string, wire []byte, rcode int, now, life int64) (*entry, error) {
	ttls, err := findTTLs(wire)
	if err != nil {
		return nil, err
	}
	return &entry{
		key: key, wire: wire, ttls: ttls, rcode: rcode,
		stored: now, expires: now + life,
		size: entryOverhead + len(key) + len(wire) + 8*len(ttls),
	}, nil
}

// render appends e to dst as the answer to a query with the given ID, RD
// and CD bits and question name (the client's spelling, same length as the
// stored one), TTLs reduced by the time spent in the cache, and an OPT
// record advertising udpSize when edns is set.
func (e *entry) render(dst []byte, id uint16, rd, cd bool, qname []byte, edns, do bool, now int64) []byte {
	start := len(dst)
	dst = append(dst, e.wire...)
	out := dst[start:]
	binary.BigEndian.PutUint16(out[0:], id)
	out[2] &^= flagRD
	if rd {
		out[2] |= flagRD
	}
	out[3] &^= flagCD
	if cd {
		out[3] |= flagCD
	}
	copy(out[headerLen:], qname)
	elapsed := uint32((now - e.stored) / 1e9)
	for _, r := range e.ttls {
		t := uint32(0)
		if r.ttl > elapsed {
			t = r.ttl - elapsed
		}
		binary.BigEndian.PutUint32(out[r.off:], t)
	}
	if edns {
		dst = appendOPT(dst, do)
		out = dst[start:]
		binary.BigEndian.PutUint16(out[10:], binary.BigEndian.Uint16(out[10:])+1)
	}
	return dst
}

// Wire-format constants (RFC 1035 §4.1, RFC 6891).
const (
	headerLen = 12
	flagQR    = 0x80 // byte 2
	flagTC    = 0x02 // byte 2
	flagRD    = 0x01 // byte 2
	flagCD    = 0x10 // byte 3
	typeOPT   = 41
	ednsDO    = 0x8000
	// maxUDPSize is both the EDNS size we advertise and the largest UDP
	// answer we send: the DNS Flag Day 2020 value, which avoids IP
	// fragmentation (inside the tunnel too).
	maxUDPSize = 1232
)

// appendOPT appends an OPT pseudo-record (root owner, maxUDPSize, version 0,
// DO bit as given, no options).
func appendOPT(dst []byte, do bool) []byte {
	var flags uint16
	if do {
		flags = ednsDO
	}
	return append(dst, 0, 0, typeOPT, byte(maxUDPSize>>8), byte(maxUDPSize&0xff),
		0, 0, byte(flags>>8), byte(flags), 0, 0)
}

var errWire = errors.New("dnsproxy: malformed wire message")

// skipName returns the offset after the (possibly compressed) name at off.
func skipName(msg []byte, off int) (int, error) {
	for {
		if off >= len(msg) {
			return 0, errWire
		}
		b := int(msg[off])
		switch b & 0xc0 {
		case 0x00:
			if b == 0 {
				return off + 1, nil
			}
			off += 1 + b
		case 0xc0:
			if off+2 > len(msg) {
				return 0, errWire
			}
			return off + 2, nil
		default:
			return 0, errWire
		}
	}
}

// checkName validates the name at off strictly and returns the offset
// after it: labels of at most 63 bytes, at most 255 bytes in all, and
// compression pointers only to earlier names past the header, each
// pointing before the previous one (so loops are impossible).
func checkName(msg []byte, off int) (int, error) {
	end, total, limit := -1, 0, off
	for {
		if off >= len(msg) {
			return 0, errWire
		}
		b := int(msg[off])
		switch b & 0xc0 {
		case 0x00:
			total += 1 + b
			if total > 255 { // RFC 1035 §2.3.4, including the root label
				return 0, errWire
			}
			if b == 0 {
				if end < 0 {
					end = off + 1
				}
				return end, nil
			}
			off += 1 + b
		case 0xc0:
			if off+1 >= len(msg) {
				return 0, errWire
			}
			ptr := (b&0x3f)<<8 | int(msg[off+1])
			if ptr < headerLen || ptr >= limit {
				return 0, errWire
			}
			if end < 0 {
				end = off + 2
			}
			off, limit = ptr, ptr
		default:
			return 0, errWire // 0x40 and 0x80 label types are obsolete (RFC 6891 §5)
		}
	}
}

// validateWire checks a message's structure strictly: every counted
// question and record present, names valid, nothing after the last
// record. It bounds the work any message can cause before full parsing.
func validateWire(msg []byte) error {
	if len(msg) < headerLen {
		return errWire
	}
	be := binary.BigEndian
	qd := int(be.Uint16(msg[4:]))
	rr := int(be.Uint16(msg[6:])) + int(be.Uint16(msg[8:])) + int(be.Uint16(msg[10:]))
	off := headerLen
	var err error
	for range qd {
		if off, err = checkName(msg, off); err != nil {
			return err
		}
		if off += 4; off > len(msg) {
			return errWire
		}
	}
	for range rr {
		if off, err = checkName(msg, off); err != nil {
			return err
		}
		if off+10 > len(msg) {
			return errWire
		}
		if off += 10 + int(be.Uint16(msg[off+8:])); off > len(msg) {
			return errWire
		}
	}
	if off != len(msg) {
		return errWire
	}
	return nil
}

// findTTLs lists the TTL of every non-OPT record in a packed message.
func findTTLs(msg []byte) ([]ttlRef, error) {
	if len(msg) < headerLen || len(msg) > 0xffff {
		return nil, errWire
	}
	qd := int(binary.BigEndian.Uint16(msg[4:]))
	rr := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:])) + int(binary.BigEndian.Uint16(msg[10:]))
	off := headerLen
	var err error
	for range qd {
		if off, err = skipName(msg, off); err != nil {
			return nil, err
		}
		off += 4
	}
	refs := make([]ttlRef, 0, rr)
	for range rr {
		if off, err = skipName(msg, off); err != nil {
			return nil, err
		}
		if off+10 > len(msg) {
			return nil, errWire
		}
		typ := binary.BigEndian.Uint16(msg[off:])
		if typ != typeOPT {
			refs = append(refs, ttlRef{off: uint16(off + 4), ttl: binary.BigEndian.Uint32(msg[off+4:])})
		}
		off += 10 + int(binary.BigEndian.Uint16(msg[off+8:]))
	}
	if off != len(msg) {
		return nil, errWire
	}
	return refs, nil
}
