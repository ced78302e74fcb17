package netstack

import "sync/atomic"

// Stats is a snapshot of the stack's counters.
type Stats struct {
	PacketsIn  uint64 // packets accepted by Inject into the stack
	BytesIn    uint64
	PacketsOut uint64 // packets queued to ports
	BytesOut   uint64

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
	UDPDialFailed uint64
}

type counters struct {
	packetsIn, bytesIn, packetsOut, bytesOut                atomic.Uint64
	dropNotIP, dropMalformed, dropTooBig, dropSpoofed       atomic.Uint64
	dropNotAllowed, dropNoPort, dropPortClosed, dropBlocked atomic.Uint64
	dropParked                                              atomic.Uint64
	rejects, rejectsDropped, writeBlocked                   atomic.Uint64
	tcpActive, udpActive                                    atomic.Int64
	tcpFlows, udpFlows, tcpDialFailed, udpDialFailed        atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (s *Stack) Stats() Stats {
	c := &s.stats
	return Stats{
		PacketsIn: c.packetsIn.Load(), BytesIn: c.bytesIn.Load(),
		PacketsOut: c.packetsOut.Load(), BytesOut: c.bytesOut.Load(),
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
	}
}
