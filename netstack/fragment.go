package netstack

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Per-port MTU. The stack has one link MTU (Config.MTU, the largest any
// transport carries: CSTP's 16000); a port whose transport carries less
// (CONNECT-IP's datagrams, Port.SetMTU) is a smaller next hop, and the
// stack treats a packet over it as a Linux router treats one over its
// outgoing interface's MTU:
//   - IPv4 other than TCP (UDP, ICMP) is fragmented (RFC 791 3.2) and the
//     client reassembles it, DF or not: gVisor sets DF on its UDP too, but
//     the datagram already crossed the upstream leg whole on a host socket,
//     and nobody upstream would learn a smaller MTU from an ICMP error, so
//     honouring DF would only lose every big datagram (as issue 11 measured
//     for 1253-byte and larger UDP over CONNECT-IP);
//   - IPv6 UDP and ICMPv6 are fragmented too: the stack is their source
//     (each flow is re-originated), and in IPv6 the source fragments
//     (RFC 8200 4.5);
//   - TCP with DF gets an ICMP fragmentation-needed carrying the port's MTU
//     (RFC 1191), and IPv6 TCP a Packet Too Big (RFC 8201), delivered back into
//     the stack: the sending TCP endpoint lowers its segment size and
//     resends, so a flow that moved from a TLS connection (MSS ~16000) to a
//     QUIC one (1280) carries on. The packet itself is dropped, as a router
//     drops it.

// minPortMTU is the smallest MTU SetMTU accepts: IPv4's minimum datagram
// every host must accept whole (RFC 791, RFC 1122 3.3.3).
const minPortMTU = 576

// SetMTU sets the largest IP packet, in bytes, the port's transport carries
// to the client; 0 means the stack's MTU (Config.MTU). Larger outbound
// packets are fragmented or answered as described above. A session's
// transport sets it when it attaches (tunnel: CONNECT-IP 1280, CSTP and
// DTLS 0, since CSTP carries what DTLS cannot). Errors: ErrBadMTU (out of
// [576, Config.MTU]).
func (p *Port) SetMTU(mtu int) error {
	if mtu != 0 && (mtu < minPortMTU || mtu > p.s.mtu) {
		return fmt.Errorf("%w: %d not in [%d, %d]", ErrBadMTU, mtu, minPortMTU, p.s.mtu)
	}
	p.mtu.Store(int32(mtu))
	return nil
}

// linkMTU is the port's effective MTU.
func (p *Port) linkMTU() int {
	if m := int(p.mtu.Load()); m != 0 {
		return m
	}
	return p.s.mtu
}

// writeOversize handles pkt, an outbound packet larger than mtu, p's MTU.
func (s *Stack) writeOversize(p *Port, pkt *stack.PacketBuffer, mtu int) {
	v := pkt.ToView()
	defer v.Release()
	b := v.AsSlice()
	if pkt.NetworkProtocolNumber == header.IPv4ProtocolNumber {
		if len(b) < header.IPv4MinimumSize || int(b[0]&0x0f)*4 < header.IPv4MinimumSize {
			s.stats.dropMalformed.Add(1)
			return
		}
		ip := header.IPv4(b)
		df := ip.Flags()&header.IPv4FlagDontFragment != 0
		if (!df || ip.Protocol() != uint8(header.TCPProtocolNumber)) &&
			ip.HeaderLength() == header.IPv4MinimumSize &&
			pkt.GSOOptions.Type == stack.GSONone { // a GSO batch has no final checksums yet
			s.fragment4(p, b, mtu)
			return
		}
	}
	if pkt.NetworkProtocolNumber == header.IPv6ProtocolNumber && len(b) >= header.IPv6MinimumSize &&
		pkt.GSOOptions.Type == stack.GSONone && fragmentable6(b) {
		s.fragment6(p, b, mtu) // the stack is this packet's source: it may fragment
		return
	}
	// TCP with DF, IPv6 TCP, or IPv4 options (gVisor sends none; fragments
	// would need the copied ones sorted out).
	s.stats.tooBigAnswered.Add(1)
	if pkt.NetworkProtocolNumber == header.IPv4ProtocolNumber {
		// Type 3 code 4; the next-hop MTU is the low 16 bits of the rest.
		s.deliverICMP(p, p.addrFor(false), netipAddr(header.IPv4(b).SourceAddress()), icmp4Unreach, icmp4CodeFragNeeded, uint32(mtu), b)
	} else if len(b) >= header.IPv6MinimumSize {
		s.deliverICMP(p, p.addrFor(true), netipAddr(header.IPv6(b).SourceAddress()), icmp6TooBig, 0, uint32(mtu), b)
	}
}

// fragment4 sends b, an IPv4 packet without options or DF, to p as
// fragments of at most mtu bytes. A packet that is itself a fragment keeps
// its offset and MF bit (RFC 791 3.2, "fragmenting a fragment").
func (s *Stack) fragment4(p *Port, b []byte, mtu int) {
	const hl = header.IPv4MinimumSize
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if total < hl || total > len(b) {
		s.stats.dropMalformed.Add(1)
		return
	}
	payload := b[hl:total]
	per := (mtu - hl) &^ 7 // fragment data comes in 8-octet units
	flags := binary.BigEndian.Uint16(b[6:8])
	base := int(flags&0x1fff) * 8
	mf := flags & 0x2000
	id := binary.BigEndian.Uint16(b[4:6])
	if id == 0 && base == 0 && mf == 0 {
		// A whole packet without an IP id (gVisor sends DF packets with
		// 0, and so do the stack's echo replies): its fragments need one,
		// or two big datagrams to one client would mix in its reassembly
		// (RFC 6864 4.1: ids of fragmentable datagrams must not repeat).
		for id == 0 {
			id = uint16(s.fragID.Add(1))
		}
	}
	s.stats.fragmented.Add(1)
	for off := 0; off < len(payload); off += per {
		n := min(per, len(payload)-off)
		size := hl + n
		pk := s.pools.get(p.headroom + size)
		if pk == nil { // cannot happen: size <= mtu <= the pools' MTU
			s.stats.dropTooBig.Add(1)
			return
		}
		f := pk.buf[p.headroom : p.headroom+size]
		copy(f, b[:hl])
		copy(f[hl:], payload[off:off+n])
		fo := uint16((base + off) / 8)
		if off+n < len(payload) || mf != 0 {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(f[2:4], uint16(size))
		binary.BigEndian.PutUint16(f[4:6], id)
		binary.BigEndian.PutUint16(f[6:8], fo)
		f[10], f[11] = 0, 0
		binary.BigEndian.PutUint16(f[10:12], ^fold(sum(f[:hl], 0)))
		pk.n = p.headroom + size
		s.sendOut(p, pk, size)
	}
}

// maxICMPInFlight bounds the frag-needed / Packet Too Big answers being
// delivered at once. A sender gets one per oversized burst and lowers its
// segment size on the first; answers past the bound are dropped like a
// router's rate-limited ICMP (RFC 1812 4.3.2.8), and the sender's next
// oversized packet asks again.
const maxICMPInFlight = 16

// deliverICMP hands the stack an ICMP error about orig, a packet the stack
// sent, as if a router on the client's side had sent it from src. It is
// delivered on a goroutine of its own: the caller is the stack's output
// path, inside the sending endpoint's lock, which the endpoint's ICMP
// handling takes again.
func (s *Stack) deliverICMP(p *Port, src, dst netip.Addr, typ, code byte, rest uint32, orig []byte) {
	if s.icmpInFlight.Add(1) > maxICMPInFlight {
		s.icmpInFlight.Add(-1)
		return
	}
	pk := s.icmpError(p, src, dst, typ, code, rest, orig)
	if pk == nil || !s.track() {
		s.icmpInFlight.Add(-1)
		if pk != nil {
			pk.Release()
		}
		return
	}
	proto := header.IPv4ProtocolNumber
	if dst.Is6() {
		proto = header.IPv6ProtocolNumber
	}
	go func() {
		defer s.wg.Done()
		defer s.icmpInFlight.Add(-1)
		pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pk.IP())})
		pb.NetworkProtocolNumber = proto
		pk.Release()
		s.link.deliver(proto, pb)
		pb.DecRef()
	}()
}

// fragmentable6 reports whether the IPv6 packet b is UDP or ICMPv6, whole
// or already a fragment of one (gVisor's, over the stack's MTU): what
// fragment6 cuts to a port's MTU.
func fragmentable6(b []byte) bool {
	nh := b[6]
	if nh == ipv6FragHdr && len(b) >= header.IPv6MinimumSize+8 {
		nh = b[header.IPv6MinimumSize]
	}
	return nh == protoUDP || nh == protoICMPv6
}

// fragment6 sends b, an IPv6 packet the stack originates (no extension
// header, or only a Fragment header: gVisor's own fragment of a packet
// over the stack's MTU), to p as fragments of at most mtu bytes, each with
// a Fragment header (RFC 8200 4.5: the source fragments; a fragment is cut
// again keeping its identification, offset and M flag).
func (s *Stack) fragment6(p *Port, b []byte, mtu int) {
	const hl = header.IPv6MinimumSize
	const fl = 8 // the Fragment header
	total := hl + int(binary.BigEndian.Uint16(b[4:6]))
	if total > len(b) {
		s.stats.dropMalformed.Add(1)
		return
	}
	nh, data, base, more := b[6], b[hl:total], 0, false
	var id uint32
	if nh == ipv6FragHdr {
		if len(data) < fl {
			s.stats.dropMalformed.Add(1)
			return
		}
		fo := binary.BigEndian.Uint16(data[2:4])
		nh, base, more, id = data[0], int(fo>>3)*8, fo&1 != 0, binary.BigEndian.Uint32(data[4:8])
		data = data[fl:]
	} else {
		id = s.fragID.Add(1)
	}
	per := (mtu - hl - fl) &^ 7 // fragment data comes in 8-octet units
	s.stats.fragmented.Add(1)
	for off := 0; off < len(data); off += per {
		n := min(per, len(data)-off)
		size := hl + fl + n
		pk := s.pools.get(p.headroom + size)
		if pk == nil { // cannot happen: size <= mtu <= the pools' MTU
			s.stats.dropTooBig.Add(1)
			return
		}
		f := pk.buf[p.headroom : p.headroom+size]
		copy(f, b[:hl])
		binary.BigEndian.PutUint16(f[4:6], uint16(fl+n))
		f[6] = ipv6FragHdr
		fh := f[hl : hl+fl]
		fh[0], fh[1] = nh, 0 // the upper-layer protocol; reserved
		fo := uint16((base+off)/8) << 3
		if off+n < len(data) || more {
			fo |= 1 // M: more fragments
		}
		binary.BigEndian.PutUint16(fh[2:4], fo)
		binary.BigEndian.PutUint32(fh[4:8], id)
		copy(f[hl+fl:], data[off:off+n])
		pk.n = p.headroom + size
		s.sendOut(p, pk, size)
	}
}
