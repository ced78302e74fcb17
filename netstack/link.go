package netstack

import (
	"net/netip"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// linkEndpoint is the stack's only NIC. Inbound packets come from
// Port.Inject; outbound packets are copied into pooled Packets and queued to
// the Port that owns the destination address.
type linkEndpoint struct {
	tunnelLink
	s *Stack
}

// tunnelLink is what the gateway's and the client's NICs share: a
// point-to-point tunnel link with no link-layer header and an attach point
// for the stack's dispatcher.
type tunnelLink struct {
	mtu  uint32
	disp atomic.Pointer[dispatcher]
}

type dispatcher struct{ d stack.NetworkDispatcher }

var _ stack.LinkEndpoint = (*linkEndpoint)(nil)

func (e *tunnelLink) MTU() uint32                      { return e.mtu }
func (e *tunnelLink) SetMTU(uint32)                    {}
func (e *tunnelLink) MaxHeaderLength() uint16          { return 0 }
func (e *tunnelLink) LinkAddress() tcpip.LinkAddress   { return "" }
func (e *tunnelLink) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities: inbound checksums are not verified because every inbound
// packet arrived over the authenticated tunnel (TLS or QUIC), which already
// guarantees integrity; outbound checksums are computed (peers need them).
func (e *tunnelLink) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}

func (e *tunnelLink) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		e.disp.Store(nil)
		return
	}
	e.disp.Store(&dispatcher{d})
}

func (e *tunnelLink) IsAttached() bool                        { return e.disp.Load() != nil }
func (e *tunnelLink) Wait()                                   {}
func (e *tunnelLink) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (e *tunnelLink) AddHeader(*stack.PacketBuffer)           {}
func (e *tunnelLink) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (e *tunnelLink) Close()                                  { e.disp.Store(nil) }
func (e *tunnelLink) SetOnCloseAction(func())                 {}

// deliver hands an inbound packet to the stack; false if detached.
func (e *linkEndpoint) deliver(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) bool {
	d := e.disp.Load()
	if d == nil {
		return false
	}
	d.d.DeliverNetworkPacket(proto, pkt)
	return true
}

// WritePackets queues each packet to the port owning its destination. It
// blocks while that port's queue is full (see Port for why). Packets nobody
// owns are dropped and counted; they are still reported as written, like a
// lossy link, so gVisor does not treat them as a local error.
func (e *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		e.s.writeOut(pkt)
		n++
	}
	return n, nil
}

func (s *Stack) writeOut(pkt *stack.PacketBuffer) {
	nh := pkt.NetworkHeader().Slice()
	var dst netip.Addr
	switch {
	case pkt.NetworkProtocolNumber == header.IPv4ProtocolNumber && len(nh) >= header.IPv4MinimumSize:
		dst = netip.AddrFrom4([4]byte(nh[16:20]))
	case pkt.NetworkProtocolNumber == header.IPv6ProtocolNumber && len(nh) >= header.IPv6MinimumSize:
		dst = netip.AddrFrom16([16]byte(nh[24:40]))
	default:
		s.stats.dropMalformed.Add(1)
		return
	}
	p := s.lookup(dst)
	if p == nil {
		s.stats.dropNoPort.Add(1)
		return
	}
	if pkt.GSOOptions.Type != stack.GSONone {
		s.writeSegments(p, pkt)
		return
	}
	size := pkt.Size()
	if mtu := p.linkMTU(); size > mtu {
		s.writeOversize(p, pkt, mtu)
		return
	}
	pk := s.pools.get(p.headroom + size)
	if pk == nil {
		s.stats.dropTooBig.Add(1)
		return
	}
	r := newPacketReader(pkt)
	n := r.read(pk.buf[p.headroom : p.headroom+size])
	pk.n = p.headroom + n
	s.sendOut(p, pk, n)
}

// sendOut queues pk, which carries an n-byte IP packet, to p.
func (s *Stack) sendOut(p *Port, pk *Packet, n int) {
	if p.send(pk, true) {
		p.traffic.AddOut(n)
	}
}

// packetReader reads a PacketBuffer's bytes (headers, then payload) in
// order, view by view, without flattening it first.
type packetReader struct {
	v   *buffer.View
	off int
}

func newPacketReader(pkt *stack.PacketBuffer) packetReader {
	vl, off := pkt.AsViewList()
	return packetReader{v: vl.Front(), off: off}
}

// skip moves the reader n bytes on.
func (r *packetReader) skip(n int) { r.off += n }

// read fills dst from the reader's position; it returns less than len(dst)
// only at the packet's end.
func (r *packetReader) read(dst []byte) int {
	n := 0
	for r.v != nil && n < len(dst) {
		b := r.v.AsSlice()
		if r.off >= len(b) {
			r.off -= len(b)
			r.v = r.v.Next()
			continue
		}
		c := copy(dst[n:], b[r.off:])
		n += c
		r.off += c
	}
	return n
}

// blockTimer returns a channel that fires after MaxWriteBlock, or nil.
func (s *Stack) blockTimer() (<-chan time.Time, *time.Timer) {
	if s.cfg.MaxWriteBlock <= 0 {
		return nil, nil
	}
	t := time.NewTimer(s.cfg.MaxWriteBlock)
	return t.C, t
}

// directQDisc hands each outbound packet straight to writeOut. gVisor's
// default queueing discipline wraps every packet in a one-element
// PacketBufferList that escapes to the heap: one allocation per packet.
type directQDisc struct{ s *Stack }

func (q *directQDisc) WritePacket(pkt *stack.PacketBuffer) tcpip.Error {
	q.s.writeOut(pkt)
	return nil
}

func (q *directQDisc) Close() {}
