package netstack

import (
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// A Batch holds a reader's inbound packets between Port.InjectBatch and
// Flush so that consecutive same-sized TCP segments of one flow reach the
// stack as one bigger segment: generic receive offload, with gVisor's own
// engine (pkg/tcpip/stack/gro, the one its fdbased link uses). Behind a
// DTLS or QUIC transport every segment is at most the tunnel MTU (about
// 1400 bytes), and gVisor's TCP cost is per segment, not per byte: one
// 64 KiB segment instead of 45 is one pass through TCP input, one receive
// window update and one ACK.
//
// A Batch belongs to one reader goroutine; it is not safe for concurrent
// use. It may carry packets of any ports of its stack. Packets are held only
// until Flush, which the reader calls before it would block for more input,
// so coalescing never adds latency.
type Batch struct {
	s   *Stack
	gro gro.GRO
}

// NewBatch returns an empty Batch for s.
func (s *Stack) NewBatch() *Batch {
	b := &Batch{s: s}
	b.gro.Init(true)
	return b
}

// enqueue adds pkt to the batch; false if the link is detached (stack
// closing).
func (b *Batch) enqueue(pkt *stack.PacketBuffer) bool {
	d := b.s.link.disp.Load()
	if d == nil {
		return false
	}
	b.gro.Dispatcher = d.d
	b.gro.Enqueue(pkt)
	return true
}

// Flush hands the held packets to the stack.
func (b *Batch) Flush() {
	if b.gro.Dispatcher == nil {
		return // nothing was ever enqueued
	}
	b.gro.Flush()
}
