package netstack

import (
	"encoding/binary"
	"net/netip"
)

// Hand-built answers for packets the stack must refuse before they reach
// gVisor (gVisor would accept them: its NIC is promiscuous). They are queued
// without blocking: they answer the client's own traffic, and the caller may
// be the session's reader goroutine.

const (
	tcpFlagFIN = 0x01
	tcpFlagSYN = 0x02
	tcpFlagRST = 0x04
	tcpFlagACK = 0x10

	icmp4Unreach         = 3
	icmp4CodeNet         = 0
	icmp4CodeHost        = 1
	icmp4CodePort        = 3
	icmp4CodeFragNeeded  = 4 // RFC 1191: with the next-hop MTU
	icmp4CodeAdminProhib = 13
	icmp6Unreach         = 1
	icmp6CodeNoRoute     = 0
	icmp6CodeAdminProhib = 1
	icmp6CodeAddr        = 3
	icmp6CodePort        = 4
	icmp6TooBig          = 2 // RFC 4443 3.2 Packet Too Big, with the MTU
	icmp6TimeExceeded    = 3
	icmp4TimeExceeded    = 11

	ttl = 64
	// icmp4Max and icmp6Max cap an ICMP error, as RFC 1812 4.3.2.3 and
	// RFC 4443 2.4(c) ask: the whole error fits the minimum MTU.
	icmp4Max = 576
	icmp6Max = 1280
)

// reject answers a refused packet: RST for TCP, ICMP admin-prohibited for
// the rest; nothing for RSTs, ICMP errors and non-first fragments.
func (s *Stack) reject(p *Port, ip *ipInfo) {
	if ip.l4 == nil || ip.dst.IsMulticast() || ip.dst == broadcast4 {
		return // RFC 1122 3.2.2, RFC 4443 2.4(e): no errors for multicast/broadcast
	}
	if ip.tproto == protoTCP {
		s.sendReset(p, ip)
		return
	}
	if isICMPError(ip) {
		return
	}
	if ip.v6 {
		s.sendICMP(p, ip.dst, ip.src, icmp6Unreach, icmp6CodeAdminProhib, ip.pkt)
	} else {
		s.sendICMP(p, s.cfg.Addr, ip.src, icmp4Unreach, icmp4CodeAdminProhib, ip.pkt)
	}
}

// timeExceeded answers a packet whose TTL ran out at the gateway: ICMP
// time exceeded in transit (IPv4 type 11, IPv6 type 3; code 0) from the
// gateway's address, quoting it. Nothing for ICMP errors (RFC 1812
// 4.3.2.7) and non-first fragments.
func (s *Stack) timeExceeded(p *Port, ip *ipInfo) {
	if ip.l4 == nil || isICMPError(ip) || ip.dst.IsMulticast() || ip.dst == broadcast4 {
		return
	}
	if ip.v6 {
		s.sendICMP(p, ip.dst, ip.src, icmp6TimeExceeded, 0, ip.pkt)
	} else {
		s.sendICMP(p, s.cfg.Addr, ip.src, icmp4TimeExceeded, 0, ip.pkt)
	}
}

func isICMPError(ip *ipInfo) bool {
	if len(ip.l4) < 1 {
		return ip.tproto == protoICMP || ip.tproto == protoICMPv6
	}
	switch ip.tproto {
	case protoICMP:
		t := ip.l4[0]
		return t != 8 && t != 13 && t != 15 && t != 17 // not a query
	case protoICMPv6:
		return ip.l4[0] < 128
	}
	return false
}

// sendReset answers a TCP segment with a RST as RFC 9293 3.10.7.1 says for
// a closed port.
func (s *Stack) sendReset(p *Port, ip *ipInfo) {
	t := ip.l4
	if len(t) < 20 {
		return
	}
	doff := int(t[12]>>4) * 4
	flags := t[13]
	if doff < 20 || doff > len(t) || flags&tcpFlagRST != 0 {
		return
	}
	seq := binary.BigEndian.Uint32(t[4:8])
	ackIn := binary.BigEndian.Uint32(t[8:12])
	segLen := uint32(len(t) - doff)
	if flags&tcpFlagSYN != 0 {
		segLen++
	}
	if flags&tcpFlagFIN != 0 {
		segLen++
	}
	var rseq, rack uint32
	rflags := byte(tcpFlagRST)
	if flags&tcpFlagACK != 0 {
		rseq = ackIn
	} else {
		rack = seq + segLen
		rflags |= tcpFlagACK
	}

	hl := 20
	if ip.v6 {
		hl = 40
	}
	pk := s.pools.get(p.headroom + hl + 20)
	if pk == nil {
		return
	}
	b := pk.buf[p.headroom : p.headroom+hl+20]
	tcp := b[hl:]
	copy(tcp[0:2], t[2:4]) // ports swapped
	copy(tcp[2:4], t[0:2])
	binary.BigEndian.PutUint32(tcp[4:8], rseq)
	binary.BigEndian.PutUint32(tcp[8:12], rack)
	tcp[12] = 5 << 4
	tcp[13] = rflags
	clear(tcp[14:20]) // window, checksum, urgent
	writeIPHeader(b[:hl], ip.dst, ip.src, protoTCP, 20)
	binary.BigEndian.PutUint16(tcp[16:18], l4Checksum(ip.dst, ip.src, protoTCP, tcp))
	s.queueReject(p, pk)
}

// sendICMP queues an ICMP error (ICMPv6 if src is IPv6) quoting orig to
// the client.
func (s *Stack) sendICMP(p *Port, src, dst netip.Addr, typ, code byte, orig []byte) {
	if pk := s.icmpError(p, src, dst, typ, code, 0, orig); pk != nil {
		s.queueReject(p, pk)
	}
}

// icmpError builds, in a packet with p's headroom, an ICMP error (ICMPv6
// if src is IPv6) from src to dst: type, code, the 32-bit rest of header
// (RFC 792: unused, or the next-hop MTU; RFC 4443: the MTU of a Packet Too
// Big) and as much of orig as fits icmp4Max / icmp6Max. nil if no buffer.
func (s *Stack) icmpError(p *Port, src, dst netip.Addr, typ, code byte, rest uint32, orig []byte) *Packet {
	hl, max, proto := 20, icmp4Max, byte(protoICMP)
	if src.Is6() {
		hl, max, proto = 40, icmp6Max, protoICMPv6
	}
	q := min(len(orig), max-hl-8)
	n := hl + 8 + q
	pk := s.pools.get(p.headroom + n)
	if pk == nil {
		return nil
	}
	b := pk.buf[p.headroom : p.headroom+n]
	pk.head = p.headroom
	writeIPHeader(b[:hl], src, dst, proto, 8+q)
	m := b[hl:]
	m[0], m[1], m[2], m[3] = typ, code, 0, 0
	binary.BigEndian.PutUint32(m[4:8], rest)
	copy(m[8:], orig[:q])
	if proto == protoICMP {
		binary.BigEndian.PutUint16(m[2:4], ^fold(sum(m, 0)))
	} else {
		binary.BigEndian.PutUint16(m[2:4], l4Checksum(src, dst, protoICMPv6, m))
	}
	return pk
}

// sendPortUnreachable tells the client that dst refused its UDP datagrams
// from src (the upstream socket got ECONNREFUSED). The quoted datagram is
// rebuilt from the 4-tuple: that is all a client matches an error on.
func (s *Stack) sendPortUnreachable(p *Port, src, dst netip.AddrPort) {
	var l4 [8]byte // UDP: the ports, then length 8 (a header alone)
	binary.BigEndian.PutUint16(l4[4:6], 8)
	s.sendUnreachable(p, src, dst, protoUDP, l4, dst.Addr(), icmp4CodePort, icmp6CodePort)
}

// sendUnreachable queues an ICMP destination unreachable (code4 / code6 by
// family) from 'from' about a packet src -> dst of protocol proto, quoting
// a rebuilt IP header and the first 8 bytes of its transport header: l4
// with the ports of src and dst written in. That is all a client matches
// an error on (RFC 792, RFC 4443 2.4(c) ask for no more).
func (s *Stack) sendUnreachable(p *Port, src, dst netip.AddrPort, proto byte, l4 [8]byte, from netip.Addr, code4, code6 byte) {
	var orig [48]byte
	hl, l4len := 20, 8
	if src.Addr().Is6() {
		hl = 40
	}
	if proto == protoTCP {
		l4len = 20 // the quoted SYN's header length, options left out
	}
	q := orig[:hl+8]
	writeIPHeader(q[:hl], src.Addr(), dst.Addr(), proto, l4len)
	copy(q[hl:], l4[:])
	binary.BigEndian.PutUint16(q[hl:hl+2], src.Port())
	binary.BigEndian.PutUint16(q[hl+2:hl+4], dst.Port())
	if hl == 20 {
		s.sendICMP(p, from, src.Addr(), icmp4Unreach, code4, q)
	} else {
		s.sendICMP(p, from, src.Addr(), icmp6Unreach, code6, q)
	}
}

func (s *Stack) queueReject(p *Port, pk *Packet) {
	if p.send(pk, false) {
		s.stats.rejects.Add(1)
	} else {
		s.stats.rejectsDropped.Add(1)
	}
}

// writeIPHeader writes a 20-byte IPv4 or 40-byte IPv6 header (by src's
// family) for a payload of plen bytes.
func writeIPHeader(b []byte, src, dst netip.Addr, proto byte, plen int) {
	if src.Is4() {
		b[0], b[1] = 0x45, 0
		binary.BigEndian.PutUint16(b[2:4], uint16(20+plen))
		binary.BigEndian.PutUint32(b[4:8], 0x4000) // id 0, DF
		b[8], b[9] = ttl, proto
		b[10], b[11] = 0, 0
		s4, d4 := src.As4(), dst.As4()
		copy(b[12:16], s4[:])
		copy(b[16:20], d4[:])
		binary.BigEndian.PutUint16(b[10:12], ^fold(sum(b[:20], 0)))
		return
	}
	binary.BigEndian.PutUint32(b[0:4], 6<<28)
	binary.BigEndian.PutUint16(b[4:6], uint16(plen))
	b[6], b[7] = proto, ttl
	s16, d16 := src.As16(), dst.As16()
	copy(b[8:24], s16[:])
	copy(b[24:40], d16[:])
}

// l4Checksum is the TCP/UDP/ICMPv6 checksum of seg (whose checksum field
// must be zero) with the pseudo-header.
func l4Checksum(src, dst netip.Addr, proto byte, seg []byte) uint16 {
	var acc uint32
	if src.Is4() {
		s4, d4 := src.As4(), dst.As4()
		acc = sum(s4[:], acc)
		acc = sum(d4[:], acc)
	} else {
		s16, d16 := src.As16(), dst.As16()
		acc = sum(s16[:], acc)
		acc = sum(d16[:], acc)
	}
	acc += uint32(proto) + uint32(len(seg))
	return ^fold(sum(seg, acc))
}

// sum adds b as big-endian 16-bit words to acc (ones' complement, unfolded).
func sum(b []byte, acc uint32) uint32 {
	for len(b) >= 2 {
		acc += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
		if acc > 0x7fffffff {
			acc = (acc & 0xffff) + acc>>16
		}
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return acc
}

func fold(acc uint32) uint16 {
	for acc > 0xffff {
		acc = (acc & 0xffff) + acc>>16
	}
	return uint16(acc)
}
