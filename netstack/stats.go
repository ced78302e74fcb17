package netstack

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/cpu"
)

// Stats is a snapshot of the stack's counters. Counters are totals since
// New and only grow (a closed port's packets stay in them); the Active
// fields are current values. Byte counts are IP bytes: headers included,
// the tunnel's own framing not.
type Stats struct {
	PacketsIn  uint64 // packets from clients accepted into the stack (Inject, InjectBatch)
	BytesIn    uint64 // IP bytes of those packets
	PacketsOut uint64 // packets the stack queued to ports
	BytesOut   uint64 // IP bytes of those packets

	DropNotIP      uint64 // Inject: not IPv4/IPv6
	DropMalformed  uint64 // Inject: bad IP header
	DropTooBig     uint64 // Inject: larger than MTU
	DropSpoofed    uint64 // Inject: source is not the port's address
	DropNotAllowed uint64 // Inject: destination refused by policy (answered)
	DropNoPort     uint64 // outbound: no port owns the destination
	DropPortClosed uint64 // outbound: port closed while queueing
	DropBlocked    uint64 // outbound: MaxWriteBlock expired
	DropParked     uint64 // outbound: queue full while no transport drains the port (Port.Park)
	Rejects        uint64 // RST / ICMP errors queued to clients
	RejectsDropped uint64 // answers dropped because the port queue was full
	WriteBlocked   uint64 // outbound writes that had to wait for queue room

	TCPActive     int64  // forwarded TCP flows now
	UDPActive     int64  // forwarded UDP flows now
	TCPFlows      uint64 // forwarded TCP flows established, total
	UDPFlows      uint64 // forwarded UDP flows opened, total
	TCPDialFailed uint64 // upstream TCP dials that failed (answered with RST)
	TCPDialCapped uint64 // SYNs ignored: their port had Config.MaxInFlightPerPort dials in flight
	UDPDialFailed uint64
}

// counters are the stack-wide counters. The atomics count events that are
// rare next to packets (drops, rejects, flows), so one shared atomic each
// costs nothing measurable. Per-packet counts live in each Port
// (portTraffic); retired keeps those of closed ports.
type counters struct {
	dropNotIP, dropMalformed, dropTooBig, dropSpoofed       atomic.Uint64
	dropNotAllowed, dropNoPort, dropPortClosed, dropBlocked atomic.Uint64
	dropParked                                              atomic.Uint64
	rejects, rejectsDropped, writeBlocked                   atomic.Uint64
	tcpActive, udpActive                                    atomic.Int64
	tcpFlows, udpFlows, tcpDialFailed, udpDialFailed        atomic.Uint64
	tcpDialCapped                                           atomic.Uint64

	// mu serialises Stats with the moves of a closed port's counts into
	// retired (and Port.Close's removal of the port from the port map),
	// so a snapshot counts every packet once: in its port or in retired.
	mu      sync.Mutex
	retired trafficTotals // guarded by mu
}

// traffic counts one direction of one port's packets.
type traffic struct {
	packets atomic.Uint64 // packets
	bytes   atomic.Uint64 // IP bytes
}

func (t *traffic) add(n int) {
	t.packets.Add(1)
	t.bytes.Add(uint64(n))
}

// portTraffic is a port's per-packet counters, so every packet is counted
// once, on memory of its own session: no cache line is written by every
// core for every packet. in is written by the session's readers (Inject),
// out by the stack's goroutines sending to the port (one per CPU for TCP);
// the pads keep the two, and the Port's other fields (its mutex is
// written by every send), on separate cache lines.
type portTraffic struct {
	_   cpu.CacheLinePad
	in  traffic
	_   cpu.CacheLinePad
	out traffic
	_   cpu.CacheLinePad
}

// trafficTotals are plain sums of traffic counters.
type trafficTotals struct {
	packetsIn, bytesIn, packetsOut, bytesOut uint64
}

func (t *trafficTotals) add(p *portTraffic) {
	t.packetsIn += p.in.packets.Load()
	t.bytesIn += p.in.bytes.Load()
	t.packetsOut += p.out.packets.Load()
	t.bytesOut += p.out.bytes.Load()
}

// take adds p's counts to t and zeroes them, each count moving exactly
// once even while p is still being counted.
func (t *trafficTotals) take(p *portTraffic) {
	t.packetsIn += p.in.packets.Swap(0)
	t.bytesIn += p.in.bytes.Swap(0)
	t.packetsOut += p.out.packets.Swap(0)
	t.bytesOut += p.out.bytes.Swap(0)
}

// countIn records one n-byte packet from p's client accepted into the
// stack.
func (p *Port) countIn(n int) {
	p.traffic.in.add(n)
	p.retireLate()
}

// countOut records one n-byte packet queued to p.
func (p *Port) countOut(n int) {
	p.traffic.out.add(n)
	p.retireLate()
}

// retireLate hands a count made after Close retired p (its sender passed
// the closed check just before Close) to the retired totals. Close sets
// closed before it retires p's counts, so a count that Close's retire
// missed sees closed here (atomics are sequentially consistent).
func (p *Port) retireLate() {
	if p.closed.Load() {
		p.s.retire(p)
	}
}

// retire moves p's counts into the stack's retired totals.
func (s *Stack) retire(p *Port) {
	s.stats.mu.Lock()
	s.stats.retired.take(&p.traffic)
	s.stats.mu.Unlock()
}

// Stats returns a snapshot of the counters. The packet counters are the
// attached ports' plus those retired by Port.Close: Stats walks the ports,
// so call it at sampling rates (seconds), not per packet.
func (s *Stack) Stats() Stats {
	c := &s.stats
	c.mu.Lock()
	t := c.retired
	for _, p := range *s.ports.Load() {
		t.add(&p.traffic)
	}
	c.mu.Unlock()
	return Stats{
		PacketsIn: t.packetsIn, BytesIn: t.bytesIn,
		PacketsOut: t.packetsOut, BytesOut: t.bytesOut,
		DropNotIP: c.dropNotIP.Load(), DropMalformed: c.dropMalformed.Load(),
		DropTooBig: c.dropTooBig.Load(), DropSpoofed: c.dropSpoofed.Load(),
		DropNotAllowed: c.dropNotAllowed.Load(), DropNoPort: c.dropNoPort.Load(),
		DropPortClosed: c.dropPortClosed.Load(), DropBlocked: c.dropBlocked.Load(),
		DropParked: c.dropParked.Load(),
		Rejects:    c.rejects.Load(), RejectsDropped: c.rejectsDropped.Load(),
		WriteBlocked: c.writeBlocked.Load(),
		TCPActive:    c.tcpActive.Load(), UDPActive: c.udpActive.Load(),
		TCPFlows: c.tcpFlows.Load(), UDPFlows: c.udpFlows.Load(),
		TCPDialFailed: c.tcpDialFailed.Load(), UDPDialFailed: c.udpDialFailed.Load(),
		TCPDialCapped: c.tcpDialCapped.Load(),
	}
}
