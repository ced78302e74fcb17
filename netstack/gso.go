package netstack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Segmentation offload (GSO), outbound. The NIC tells gVisor's TCP that
// the "host" segments (stack.HostGSOSupported), so TCP hands the link one
// segment of up to stack.GVisorGSOMaxSize bytes with its MSS in
// pkt.GSOOptions instead of one segment per MSS. writeSegments cuts it into
// MSS-sized IP packets straight into the port's pooled buffers, as a NIC's
// TSO or Linux's software GSO (net/ipv4/tcp_offload.c) would: one pass
// through gVisor's TCP send path per 64 KiB rather than per ~1400 bytes,
// which is what a DTLS or QUIC tunnel's MTU would otherwise cost.
//
// gVisor's own alternative, GVisorGSOSupported, still builds every
// segment's headers through the TCP and IP layers (tcp.sendTCPBatch).

var _ stack.GSOEndpoint = (*linkEndpoint)(nil)

// SupportedGSO implements stack.GSOEndpoint.
func (e *linkEndpoint) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }

// GSOMaxSize implements stack.GSOEndpoint: gVisor's software GSO limit,
// 64 KiB, which keeps a segment's IPv4 total length within 16 bits (TCP
// subtracts its maximum header size from it, tcp/snd.go).
func (e *linkEndpoint) GSOMaxSize() uint32 { return stack.GVisorGSOMaxSize }

// writeSegments queues pkt, a TCP segment built for GSO, to p as packets
// of at most pkt.GSOOptions.MSS payload bytes each. Every packet gets its
// own IP header (total or payload length; for IPv4 the next
// identification and a new header checksum) and TCP header (sequence
// number; FIN and PSH only on the last packet, CWR only on the first; a
// full checksum, since the one gVisor left is partial).
func (s *Stack) writeSegments(p *Port, pkt *stack.PacketBuffer) {
	nh := pkt.NetworkHeader().Slice()
	th := pkt.TransportHeader().Slice()
	v4 := pkt.GSOOptions.Type == stack.GSOTCPv4
	if pkt.TransportProtocolNumber != header.TCPProtocolNumber || len(th) < header.TCPMinimumSize ||
		(v4 && len(nh) < header.IPv4MinimumSize) || (!v4 && len(nh) < header.IPv6MinimumSize) {
		s.stats.dropMalformed.Add(1)
		return
	}
	hlen := len(nh) + len(th)
	total := pkt.Size() - hlen
	mss := int(pkt.GSOOptions.MSS)
	if mss <= 0 || mss > total {
		mss = total
	}
	if mtu := p.linkMTU(); hlen+mss > mtu {
		// Segments cut to this MSS would not fit the port (a flow that
		// began on a bigger-MTU transport): tell the sender, as for any
		// packet over the port's MTU (fragment.go); it resends smaller.
		s.writeOversize(p, pkt, mtu)
		return
	}
	var src, dst tcpip.Address
	var id uint16
	if v4 {
		ip := header.IPv4(nh)
		src, dst, id = ip.SourceAddress(), ip.DestinationAddress(), ip.ID()
	} else {
		ip := header.IPv6(nh)
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	}
	tcp := header.TCP(th)
	seq, flags := tcp.SequenceNumber(), tcp.Flags()

	r := newPacketReader(pkt)
	r.skip(hlen)
	for off, i := 0, 0; off < total || (total == 0 && i == 0); i++ {
		n := min(mss, total-off)
		size := hlen + n
		pk := s.pools.get(p.headroom + size)
		if pk == nil {
			s.stats.dropTooBig.Add(1)
			return
		}
		b := pk.buf[p.headroom : p.headroom+size]
		copy(b, nh)
		copy(b[len(nh):], th)
		r.read(b[hlen:])
		if v4 {
			ip := header.IPv4(b)
			ip.SetTotalLength(uint16(size))
			ip.SetID(id + uint16(i))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
		} else {
			binary.BigEndian.PutUint16(b[4:6], uint16(size-header.IPv6MinimumSize))
		}
		seg := header.TCP(b[len(nh):])
		seg.SetSequenceNumber(seq + uint32(off))
		f := flags
		if off+n < total {
			f &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if i > 0 {
			f &^= header.TCPFlagCwr
		}
		seg.SetFlags(uint8(f))
		seg.SetChecksum(0)
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(th)+n))
		xsum = checksum.Checksum(b[hlen:], xsum)
		seg.SetChecksum(^seg.CalculateChecksum(xsum))
		pk.n = p.headroom + size
		s.sendOut(p, pk, size)
		off += n
	}
}
