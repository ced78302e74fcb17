package netstack

import (
	"sync/atomic"

	"github.com/underpass/underpass/internal/core/tally"
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
	TTLExceeded    uint64 // Inject: TTL / hop limit 1 or 0 for a forwarded destination (answered: time exceeded)
	DropNoPort     uint64 // outbound: no port owns the destination
	DropPortClosed uint64 // outbound: port closed while queueing
	DropBlocked    uint64 // outbound: MaxWriteBlock expired
	DropParked     uint64 // outbound: queue full while no transport drains the port (Port.Park)
	Rejects        uint64 // RST / ICMP errors queued to clients
	RejectsDropped uint64 // answers dropped because the port queue was full
	WriteBlocked   uint64 // outbound writes that had to wait for queue room
	Fragmented     uint64 // outbound IPv4 packets over their port's MTU, and echo replies over it (IPv4 or IPv6), sent as fragments (Port.SetMTU)
	TooBigAnswered uint64 // outbound packets over their port's MTU that could not be fragmented, answered to their sender with frag-needed / Packet Too Big
	// Reassembled counts clients' datagrams (IPv4, IPv6) made whole from their
	// fragments before anything looked at them; FragmentsDropped the
	// datagrams discarded before they were whole: an overlapping, empty or
	// contradicting fragment, over 65535 bytes, incomplete after 30 s, over
	// the reassembly limits, or their session closed (reassembly.go).
	Reassembled, FragmentsDropped uint64

	TCPActive     int64  // forwarded TCP flows now
	UDPActive     int64  // forwarded UDP flows now
	TCPFlows      uint64 // forwarded TCP flows established, total
	UDPFlows      uint64 // forwarded UDP flows opened, total
	TCPDialFailed uint64 // upstream TCP dials that failed (answered with RST)
	TCPDialCapped uint64 // SYNs ignored: their port had Config.MaxInFlightPerPort dials in flight
	// TCPFlowsCapped counts SYNs refused (RST) because their port held
	// Config.MaxTCPFlowsPerPort flows; UDPFlowsCapped datagrams dropped
	// because theirs held MaxUDPFlowsPerPort; EchoCapped pings refused
	// because their port had its share of forwarded pings in flight.
	TCPFlowsCapped, UDPFlowsCapped, EchoCapped uint64
	UDPDialFailed                              uint64
	// DialNoFD counts the upstream dials (TCP and UDP, also in
	// TCPDialFailed or UDPDialFailed) that failed for lack of file
	// descriptors: EMFILE (the process's RLIMIT_NOFILE) or ENFILE (the
	// system's table). Each forwarded flow holds one host socket.
	DialNoFD uint64
}

// counters are the stack-wide counters. The atomics count events that are
// rare next to packets (drops, rejects, flows), so one shared atomic each
// costs nothing measurable. Per-packet counts live in each Port
// (Port.traffic); traffic keeps those of closed ports.
type counters struct {
	dropNotIP, dropMalformed, dropTooBig, dropSpoofed       atomic.Uint64
	dropNotAllowed, dropNoPort, dropPortClosed, dropBlocked atomic.Uint64
	dropParked                                              atomic.Uint64
	rejects, rejectsDropped, writeBlocked                   atomic.Uint64
	fragmented, tooBigAnswered, ttlExceeded                 atomic.Uint64
	reassembled, fragmentsDropped                           atomic.Uint64
	tcpFlowsCapped, udpFlowsCapped, echoCapped              atomic.Uint64
	tcpActive, udpActive                                    atomic.Int64
	tcpFlows, udpFlows, tcpDialFailed, udpDialFailed        atomic.Uint64
	tcpDialCapped, dialNoFD                                 atomic.Uint64

	// traffic holds closed ports' packet counts; Port.Close retires a
	// port's into it together with its removal from the port table (under
	// the totals' lock, which Stats holds while it walks the table), so a
	// snapshot counts every packet once: in its port or here.
	traffic tally.Totals
}

// Stats returns a snapshot of the counters. The packet counters are the
// attached ports' plus those retired by Port.Close: Stats walks the ports,
// so call it at sampling rates (seconds), not per packet.
func (s *Stack) Stats() Stats {
	c := &s.stats
	t := c.traffic.Sum(func(add func(*tally.Counters)) {
		s.ports.each(func(p *Port) { add(&p.traffic) })
	})
	return Stats{
		PacketsIn: t.PacketsIn, BytesIn: t.BytesIn,
		PacketsOut: t.PacketsOut, BytesOut: t.BytesOut,
		DropNotIP: c.dropNotIP.Load(), DropMalformed: c.dropMalformed.Load(),
		DropTooBig: c.dropTooBig.Load(), DropSpoofed: c.dropSpoofed.Load(),
		DropNotAllowed: c.dropNotAllowed.Load(), DropNoPort: c.dropNoPort.Load(),
		TTLExceeded:    c.ttlExceeded.Load(),
		DropPortClosed: c.dropPortClosed.Load(), DropBlocked: c.dropBlocked.Load(),
		DropParked: c.dropParked.Load(),
		Rejects:    c.rejects.Load(), RejectsDropped: c.rejectsDropped.Load(),
		WriteBlocked: c.writeBlocked.Load(),
		Fragmented:   c.fragmented.Load(), TooBigAnswered: c.tooBigAnswered.Load(),
		Reassembled: c.reassembled.Load(), FragmentsDropped: c.fragmentsDropped.Load(),
		TCPActive: c.tcpActive.Load(), UDPActive: c.udpActive.Load(),
		TCPFlows: c.tcpFlows.Load(), UDPFlows: c.udpFlows.Load(),
		TCPDialFailed: c.tcpDialFailed.Load(), UDPDialFailed: c.udpDialFailed.Load(),
		TCPDialCapped:  c.tcpDialCapped.Load(),
		TCPFlowsCapped: c.tcpFlowsCapped.Load(), UDPFlowsCapped: c.udpFlowsCapped.Load(), EchoCapped: c.echoCapped.Load(), DialNoFD: c.dialNoFD.Load(),
	}
}
