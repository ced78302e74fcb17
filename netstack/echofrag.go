package netstack

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Fragmented echo requests. A client's ping bigger than its tunnel MTU
// arrives in fragments, and an echo request is forwarded (forwardEcho)
// rather than handed to gVisor, so the stack reassembles the fragments of
// an ICMP or ICMPv6 message to another host itself, before anything looks
// at the message: whole, it is forwarded like any echo request. Without
// this, the first IPv4 fragment was forwarded with a truncated payload,
// and gVisor, reassembling IPv6 fragments in its promiscuous NIC, answered
// a fragmented ICMPv6 echo to any address itself, a host that does not
// exist included. The reply goes back fragmented to the port's MTU
// (sendEchoReply).
//
// Bounds, so that fragments cost little and cannot pile up: each port
// reassembles at most maxEchoFrags messages at once, the stack at most
// maxEchoInFlight (so at most 16 MiB of buffers), each of at most
// 65535 bytes (the largest an IPv4 packet or an IPv6 one without a
// jumbogram carries), for at most echoFragTimeout; a fragment past those
// bounds, an overlapping one (RFC 5722 for IPv6) or a malformed one drops
// the message (Stats.DropMalformed).

const (
	// maxEchoFrags: ping and traceroute have a handful of requests in
	// flight at once.
	maxEchoFrags = 4
	// echoFragMax is the largest message reassembled: 65535 bytes of ICMP.
	echoFragMax = 65535
	ipv6FragHdr = 44 // RFC 8200 4.5, the Fragment header's next-header value
)

// echoFragTimeout is Linux's reassembly timeout (net.ipv4.ipfrag_time,
// 30 s; RFC 8200 4.5 allows up to 60 s). A variable only so that a test
// can shorten it.
var echoFragTimeout = 30 * time.Second

// echoFrags is one port's reassembly of fragmented ICMP messages, under
// Port.flowMu.
type echoFrags struct {
	slots [maxEchoFrags]*echoFrag
}

// clear drops every message being reassembled and returns how many there
// were (Port.Close gives them back to the stack's count).
func (fs *echoFrags) clear() int32 {
	var n int32
	for i := range fs.slots {
		if fs.remove(&fs.slots[i]) {
			n++
		}
	}
	return n
}

// remove empties a slot, stopping its message's expiry timer; false if it
// was empty.
func (fs *echoFrags) remove(slot **echoFrag) bool {
	if *slot == nil {
		return false
	}
	(*slot).expiry.Stop()
	*slot = nil
	return true
}

// echoFrag is one message being reassembled.
type echoFrag struct {
	dst   netip.Addr
	id    uint32 // IPv4 identification or IPv6 fragment identification
	start time.Time
	data  []byte                            // the ICMP message so far, as long as the furthest fragment's end
	have  [(echoFragMax/8 + 63) / 64]uint64 // which 8-byte units of data arrived
	total int                               // the message length, once the last fragment came; else -1
	got   int                               // bytes arrived
	// expiry drops the message echoFragTimeout after its first fragment,
	// so one a client abandons stops counting against the stack's bound
	// even if that client sends nothing more.
	expiry *time.Timer
}

// fragInfo is what a fragment of an ICMP or ICMPv6 message carries: the
// offset of its data in the message, the data, whether more follow.
type fragInfo struct {
	id   uint32
	off  int
	data []byte
	more bool
}

// icmpFragment reports whether ip is a fragment of an ICMP (IPv4) or
// ICMPv6 message, and parses it. An IPv6 packet counts when its first
// extension header is the Fragment header with ICMPv6 next (what ping
// sends; other extension headers before it are left to gVisor).
func icmpFragment(ip *ipInfo) (fragInfo, bool) {
	b := ip.pkt
	if !ip.v6 {
		flags := binary.BigEndian.Uint16(b[6:8])
		if ip.tproto != protoICMP || flags&0x3fff == 0 { // neither MF nor an offset
			return fragInfo{}, false
		}
		return fragInfo{id: uint32(binary.BigEndian.Uint16(b[4:6])), off: int(flags&0x1fff) * 8,
			data: b[ip.hdrLen:], more: flags&0x2000 != 0}, true
	}
	if ip.tproto != ipv6FragHdr || len(b) < 48 || b[40] != protoICMPv6 {
		return fragInfo{}, false
	}
	fo := binary.BigEndian.Uint16(b[42:44])
	return fragInfo{id: binary.BigEndian.Uint32(b[44:48]), off: int(fo>>3) * 8, data: b[48:], more: fo&1 != 0}, true
}

// echoFragment takes a fragment of an ICMP message from p to a host other
// than the stack; once the message is whole and an echo request, it is
// forwarded (false: it could not be, and the caller refuses it, as
// forwardEcho's caller does). Anything else is dropped.
func (s *Stack) echoFragment(p *Port, ip *ipInfo, f fragInfo) bool {
	msg, ok := p.addEchoFragment(ip.dst, f, time.Now(), &s.echo.fragsInFlight, &s.stats.dropMalformed)
	if !ok || msg == nil {
		return true // held, or dropped and counted
	}
	whole := *ip
	whole.l4 = msg
	whole.tproto = protoICMP
	if ip.v6 {
		whole.tproto = protoICMPv6
	}
	if !whole.isEchoRequest() {
		s.stats.dropMalformed.Add(1) // a fragmented ICMP error from a client: nothing to do with it
		return true
	}
	return s.forwardEcho(p, &whole)
}

// addEchoFragment adds f, a fragment to dst, at now. It returns the whole
// message once complete (the buffer is the caller's), nil while
// fragments are missing, and false when f was dropped (counted in drops).
// inFlight counts the stack's messages being reassembled, at most
// maxEchoInFlight.
func (p *Port) addEchoFragment(dst netip.Addr, f fragInfo, now time.Time, inFlight *atomic.Int32, drops *atomic.Uint64) ([]byte, bool) {
	p.flowMu.Lock()
	defer p.flowMu.Unlock()
	fs := &p.echoFrags
	var slot **echoFrag
	for i, e := range fs.slots {
		if e != nil && now.Sub(e.start) > echoFragTimeout {
			fs.remove(&fs.slots[i]) // its fragments never all came
			e = nil
			inFlight.Add(-1)
			drops.Add(1)
		}
		if e != nil && e.id == f.id && e.dst == dst {
			slot = &fs.slots[i]
			break
		}
	}
	end := f.off + len(f.data)
	if end > echoFragMax || (f.more && len(f.data)%8 != 0) || len(f.data) == 0 {
		if slot != nil && fs.remove(slot) {
			inFlight.Add(-1)
		}
		drops.Add(1)
		return nil, false
	}
	if slot == nil {
		for i := range fs.slots {
			if fs.slots[i] == nil {
				slot = &fs.slots[i]
				break
			}
		}
		if slot == nil || inFlight.Add(1) > maxEchoInFlight {
			if slot != nil {
				inFlight.Add(-1)
			}
			drops.Add(1)
			return nil, false
		}
		e := &echoFrag{dst: dst, id: f.id, start: now, total: -1}
		e.expiry = time.AfterFunc(echoFragTimeout, func() {
			p.flowMu.Lock()
			defer p.flowMu.Unlock()
			for i := range p.echoFrags.slots {
				if p.echoFrags.slots[i] == e { // still waiting (not completed, dropped or cleared)
					p.echoFrags.slots[i] = nil
					inFlight.Add(-1)
					drops.Add(1)
				}
			}
		})
		*slot = e
	}
	e := *slot
	drop := func() ([]byte, bool) {
		fs.remove(slot)
		inFlight.Add(-1)
		drops.Add(1)
		return nil, false
	}
	if !f.more {
		if e.total >= 0 && e.total != end {
			return drop()
		}
		e.total = end
	}
	if e.total >= 0 && end > e.total {
		return drop()
	}
	for u := f.off / 8; u < (end+7)/8; u++ {
		if e.have[u/64]&(1<<(u%64)) != 0 {
			return drop() // overlap (RFC 5722): the whole message goes
		}
		e.have[u/64] |= 1 << (u % 64)
	}
	if end > len(e.data) { // grown as fragments come: most pings are small
		e.data = append(e.data, make([]byte, end-len(e.data))...)
	}
	copy(e.data[f.off:], f.data)
	e.got += len(f.data)
	if e.total < 0 || e.got != e.total {
		return nil, true
	}
	fs.remove(slot)
	inFlight.Add(-1)
	return e.data[:e.total], true
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
