// Package tally counts per-owner traffic (a netstack port's packets, a
// tunnel session's DTLS packets) on memory only that owner's goroutines
// write, so no cache line is written by every core for every packet, and
// keeps totals that outlive the owner: Totals.Sum adds the live owners'
// counters to what retired owners left, each count exactly once.
package tally

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/cpu"
)

// direction counts one direction of an owner's traffic.
type direction struct {
	packets atomic.Uint64
	bytes   atomic.Uint64
}

// Counters is one owner's counters: In (written by the owner's readers)
// and Out (by its writers), on cache lines of their own and apart from
// whatever the owner keeps next to them. Its zero value is ready.
type Counters struct {
	_   cpu.CacheLinePad
	in  direction
	_   cpu.CacheLinePad
	out direction
	_   cpu.CacheLinePad
	// retired is set by Totals.Retire after totals: a count made after
	// the retire's take moves itself (late).
	retired atomic.Bool
	totals  *Totals
}

// AddIn counts one inbound packet of n bytes.
func (c *Counters) AddIn(n int) {
	c.in.packets.Add(1)
	c.in.bytes.Add(uint64(n))
	c.late()
}

// AddOut counts one outbound packet of n bytes.
func (c *Counters) AddOut(n int) {
	c.out.packets.Add(1)
	c.out.bytes.Add(uint64(n))
	c.late()
}

// late hands a count made after Retire took c's counts to the totals.
// Retire sets retired before it takes, so a count its take missed sees
// the flag here (atomics are sequentially consistent); Swap moves each
// count once whichever takes it.
func (c *Counters) late() {
	if c.retired.Load() {
		c.totals.mu.Lock()
		c.totals.takeLocked(c)
		c.totals.mu.Unlock()
	}
}

// Sum is counts summed over owners.
type Sum struct {
	PacketsIn, BytesIn, PacketsOut, BytesOut uint64
}

// Totals keeps the counts of retired owners. Its zero value is ready.
type Totals struct {
	mu      sync.Mutex
	retired Sum // guarded by mu
}

// Retire moves c's counts into t for good. remove, if not nil, takes c's
// owner out of what Sum's walk visits; it runs under the same lock as
// Sum, so no snapshot counts c twice or misses it.
func (t *Totals) Retire(c *Counters, remove func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if remove != nil {
		remove()
	}
	c.totals = t
	c.retired.Store(true)
	t.takeLocked(c)
}

// takeLocked adds c's counts to the retired sum and zeroes them.
func (t *Totals) takeLocked(c *Counters) {
	t.retired.PacketsIn += c.in.packets.Swap(0)
	t.retired.BytesIn += c.in.bytes.Swap(0)
	t.retired.PacketsOut += c.out.packets.Swap(0)
	t.retired.BytesOut += c.out.bytes.Swap(0)
}

// Sum returns the retired counts plus those of every live owner walk
// hands to add. walk runs under the lock Retire holds.
func (t *Totals) Sum(walk func(add func(*Counters))) Sum {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.retired
	walk(func(c *Counters) {
		s.PacketsIn += c.in.packets.Load()
		s.BytesIn += c.in.bytes.Load()
		s.PacketsOut += c.out.packets.Load()
		s.BytesOut += c.out.bytes.Load()
	})
	return s
}
