package netstack

import (
	"bytes"
	"encoding/binary"
	"slices"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Reassembly of clients' IPv4 fragments. Inject holds a fragment until its
// datagram is whole and only then looks at it: echo forwarding, the SYN
// record, policy answers and gVisor all see one packet, as a Linux router's
// conntrack reassembles (nf_defrag_ipv4) before NAT and forwarding. Without
// it, a fragmented ping (ping -s 8000 through a 1400-byte tunnel) was
// forwarded with its first fragment's payload only.
//
// The rules are the kernel's (net/ipv4/ip_fragment.c): a datagram is keyed
// by source, destination, IP id and protocol; fragments other than the last
// carry a multiple of 8 bytes (RFC 791 3.2); an exact duplicate is ignored
// and any other overlap discards the whole datagram (Linux since 4.19, as
// RFC 5722 requires for IPv6); a datagram that would exceed 65535 bytes is
// discarded (the "ping of death"). IPv6 fragments go to gVisor's own
// reassembly: nothing before it looks inside an IPv6 fragment.

const (
	// fragTimeout is how long an incomplete datagram is kept: Linux's
	// ipfrag_time default (30 s; RFC 791 asks for at least 15 s).
	fragTimeout = 30 * time.Second
	// maxFragDatagramsPerPort bounds the datagrams one session may have
	// under reassembly. A client's kernel sends a datagram's fragments
	// back to back, so more than a few at once means loss or a flood; the
	// oldest is discarded for the newest.
	maxFragDatagramsPerPort = 8
	// maxFragBytes bounds the bytes held in incomplete datagrams,
	// stack-wide: Linux's ipfrag_high_thresh default (4 MiB).
	maxFragBytes = 4 << 20
	// maxIPv4Payload is the most an IPv4 datagram can carry after a
	// minimal header: its 16-bit total length.
	maxIPv4Payload = 0xffff - header.IPv4MinimumSize
)

// fragTable is one port's datagrams under reassembly.
type fragTable struct {
	mu  sync.Mutex
	dgs []*fragDatagram // few (maxFragDatagramsPerPort): searched linearly
}

type fragDatagram struct {
	src, dst [4]byte
	id       uint16
	proto    uint8
	hdr      []byte // the first fragment's IP header, once it came
	data     []byte // the payload so far, indexed by fragment offset
	spans    []span // the byte ranges received: sorted, merged
	total    int    // the payload length, known from the last fragment; -1 before
	started  time.Time
}

type span struct{ start, end int }

// isFragment reports whether b, a parsed IPv4 packet, is a fragment: MF
// set or a non-zero offset.
func isFragment(b []byte) bool { return binary.BigEndian.Uint16(b[6:8])&0x3fff != 0 }

// reassemble adds ip, an IPv4 fragment from p's client, to its datagram.
// It returns the whole datagram (a new buffer, header flags and offset
// cleared) once every fragment came, else nil: the fragment is held, was a
// duplicate, or was dropped (counted in Stats.FragmentsDropped).
func (s *Stack) reassemble(p *Port, ip *ipInfo, now time.Time) []byte {
	b := ip.pkt
	fo := binary.BigEndian.Uint16(b[6:8])
	off, more := int(fo&0x1fff)*8, fo&0x2000 != 0
	payload := b[ip.hdrLen:]
	end := off + len(payload)
	if end > maxIPv4Payload || (more && len(payload)%8 != 0) || (more && len(payload) == 0) {
		s.stats.fragmentsDropped.Add(1)
		return nil
	}
	t := &p.frags
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expire(s, now)
	d := t.find(b)
	if d == nil {
		if len(t.dgs) >= maxFragDatagramsPerPort {
			t.discard(s, 0)
		}
		d = &fragDatagram{src: [4]byte(b[12:16]), dst: [4]byte(b[16:20]), id: binary.BigEndian.Uint16(b[4:6]),
			proto: b[9], total: -1, started: now}
		t.dgs = append(t.dgs, d)
	}
	i := slices.Index(t.dgs, d)
	switch dup, ok := d.fits(off, end, more, payload); {
	case !ok:
		t.discard(s, i)
		return nil
	case dup:
		return nil
	}
	if grow := end - len(d.data); grow > 0 {
		if s.fragBytes.Add(int64(grow)) > maxFragBytes {
			s.fragBytes.Add(-int64(grow))
			s.stats.fragmentsDropped.Add(1)
			return nil
		}
		d.data = append(d.data, make([]byte, grow)...)
	}
	copy(d.data[off:], payload)
	d.add(span{off, end})
	if !more {
		d.total = end
	}
	if off == 0 {
		d.hdr = slices.Clone(b[:ip.hdrLen])
	}
	if d.hdr == nil || d.total < 0 || len(d.spans) != 1 || d.spans[0] != (span{0, d.total}) {
		return nil
	}
	hl := len(d.hdr)
	if hl+d.total > 0xffff { // options on the first fragment made it too long
		t.discard(s, i)
		return nil
	}
	whole := make([]byte, hl+d.total)
	copy(whole, d.hdr)
	copy(whole[hl:], d.data[:d.total])
	binary.BigEndian.PutUint16(whole[2:4], uint16(len(whole)))
	binary.BigEndian.PutUint16(whole[6:8], binary.BigEndian.Uint16(d.hdr[6:8])&0x4000) // keep DF only
	whole[10], whole[11] = 0, 0
	binary.BigEndian.PutUint16(whole[10:12], ^fold(sum(whole[:hl], 0)))
	t.remove(s, i)
	s.stats.reassembled.Add(1)
	return whole
}

// fits checks the fragment [off, end) against what d has: dup for an exact
// repeat of bytes already held, !ok for an overlap with other bytes or a
// length that contradicts the last fragment's.
func (d *fragDatagram) fits(off, end int, more bool, payload []byte) (dup, ok bool) {
	switch {
	case d.total >= 0 && end > d.total, // beyond the end
		!more && d.total >= 0 && end != d.total,                        // a second, different end
		!more && len(d.spans) > 0 && d.spans[len(d.spans)-1].end > end: // bytes beyond this end
		return false, false
	}
	for _, sp := range d.spans {
		if off >= sp.end || end <= sp.start {
			continue
		}
		if off >= sp.start && end <= sp.end && bytes.Equal(d.data[off:end], payload) {
			return true, true
		}
		return false, false
	}
	return false, true
}

// add records [sp.start, sp.end) as received, merging touching spans. It
// does not overlap any span (fits checked).
func (d *fragDatagram) add(sp span) {
	i, _ := slices.BinarySearchFunc(d.spans, sp.start, func(a span, start int) int { return a.start - start })
	d.spans = slices.Insert(d.spans, i, sp)
	merged := d.spans[:1]
	for _, x := range d.spans[1:] {
		if last := &merged[len(merged)-1]; last.end == x.start {
			last.end = x.end
		} else {
			merged = append(merged, x)
		}
	}
	d.spans = merged
}

func (t *fragTable) find(b []byte) *fragDatagram {
	id := binary.BigEndian.Uint16(b[4:6])
	for _, d := range t.dgs {
		if d.id == id && d.proto == b[9] && d.src == [4]byte(b[12:16]) && d.dst == [4]byte(b[16:20]) {
			return d
		}
	}
	return nil
}

// expire discards the datagrams older than fragTimeout. A router answers
// ICMP time exceeded (code 1) only when it has the first fragment; the
// gateway's client learns nothing either way that it can act on, so it
// stays silent, as for any other dropped packet.
func (t *fragTable) expire(s *Stack, now time.Time) {
	for i := 0; i < len(t.dgs); {
		if now.Sub(t.dgs[i].started) > fragTimeout {
			t.discard(s, i)
			continue
		}
		i++
	}
}

// discard drops datagram i, counting its loss.
func (t *fragTable) discard(s *Stack, i int) {
	s.stats.fragmentsDropped.Add(1)
	t.remove(s, i)
}

func (t *fragTable) remove(s *Stack, i int) {
	s.fragBytes.Add(-int64(len(t.dgs[i].data)))
	t.dgs = slices.Delete(t.dgs, i, i+1)
}

// clear drops every datagram (the port closed).
func (t *fragTable) clear(s *Stack) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.dgs) > 0 {
		t.remove(s, 0)
	}
}
