package netstack

import (
	"container/list"
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Reassembly of clients' fragments, IPv4 and IPv6. Inject holds a fragment until its
// datagram is whole and only then looks at it: echo forwarding, the SYN
// record, policy answers and gVisor all see one packet, as a Linux router's
// conntrack reassembles (nf_defrag_ipv4) before NAT and forwarding. Without
// it, a fragmented ping (ping -s 65000 through openconnect) was forwarded
// with its first fragment's payload only.
//
// The rules are Linux's (net/ipv4/ip_fragment.c ip_frag_queue and
// net/ipv4/inet_fragment.c inet_frag_queue_insert): a datagram is keyed by
// session, destination, IP id and protocol; a fragment other than the last
// is cut to a multiple of 8 bytes (RFC 791 3.2); a fragment inside bytes
// already received is a duplicate and ignored, whatever it carries; one
// that overlaps them only in part, an empty one, one that contradicts the
// datagram's end, or one that would make it exceed 65535 bytes discards
// the whole datagram (RFC 5722's rule, which Linux applies to IPv4 since
// 4.19, and RFC 5722 requires for IPv6). An IPv6 fragment is one with a
// Fragment header (RFC 8200 4.5), first or after Hop-by-Hop and
// Destination Options headers (walkExtHeaders6, as Linux's nf_defrag_ipv6
// finds it); the unfragmentable part (the fixed header and those
// extension headers) is the first fragment's, kept once in the whole
// packet, whose last header before the payload takes the Fragment
// header's next header (RFC 8200 4.5). Before this, gVisor
// reassembled IPv6 fragments in its promiscuous NIC and answered a
// fragmented ICMPv6 echo to any address itself, a host that does not exist
// included.

const (
	// fragTimeout is how long an incomplete datagram is kept: Linux's
	// ipfrag_time default (30 s; RFC 791 asks for at least 15 s).
	fragTimeout = 30 * time.Second
	// maxFragDatagramsPerPort bounds the datagrams one session may have
	// under reassembly. A client's kernel sends a datagram's fragments
	// back to back, so more than a few at once means loss or a flood; the
	// session's oldest is discarded for its newest.
	maxFragDatagramsPerPort = 8
	// maxFragBytes bounds what incomplete datagrams hold, stack-wide:
	// Linux's ipfrag_high_thresh default (4 MiB). Past it the oldest
	// datagrams, of any session, are discarded first (Linux's evictor).
	maxFragBytes = 4 << 20
	// fragOverhead is what each held fragment is charged beyond its bytes
	// (its bookkeeping; Linux charges an skb's truesize), so that many
	// tiny fragments cannot hold the budget with little data.
	fragOverhead = 256
	// maxIPv4Payload is the most an IPv4 datagram can carry after a
	// minimal header: its 16-bit total length.
	maxIPv4Payload = 0xffff - header.IPv4MinimumSize
	// maxIPv6Payload is the most an IPv6 packet without a jumbogram
	// carries after its fixed header: its 16-bit payload length.
	maxIPv6Payload = 0xffff
	// ipv6FragHdr is the Fragment header's next-header value (RFC 8200
	// 4.5); ipv6FragHdrLen its length.
	ipv6FragHdr, ipv6FragHdrLen = 44, 8
)

// fragTable holds the stack's datagrams under reassembly. Fragments are
// rare next to whole packets, so one lock serves every session.
type fragTable struct {
	mu    sync.Mutex
	dgs   map[fragKey]*fragDatagram
	order list.List // of *fragDatagram, oldest first: expiry and eviction
	bytes int       // charged for held fragments (maxFragBytes)
}

type fragKey struct {
	port  *Port // the session (its source address was checked)
	dst   netip.Addr
	id    uint32 // IPv4's 16-bit identification, IPv6's 32-bit one
	proto uint8  // IPv4's protocol; IPv6: the Fragment header's next header
}

type fragDatagram struct {
	key     fragKey
	elem    *list.Element // in fragTable.order
	hdr     []byte        // the first fragment's IP header, once it came (IPv6: next header set to the payload's)
	pieces  []fragPiece   // the fragments held, by offset
	runs    []span        // the byte ranges received: sorted, merged
	total   int           // the payload length, once the last fragment came; -1 before
	charged int           // what it holds of fragTable.bytes
	started time.Time
}

type fragPiece struct {
	off int
	b   []byte
}

type span struct{ start, end int }

// isFragment reports whether b, a parsed IPv4 packet, is a fragment: MF
// set or a non-zero offset.
func isFragment(b []byte) bool { return binary.BigEndian.Uint16(b[6:8])&0x3fff != 0 }

// reassemble adds ip, a fragment from p's client, to its datagram. It
// returns the whole datagram (a new buffer: IPv4 with flags and offset
// cleared but for DF, IPv6 without its Fragment header) once every
// fragment came, else nil: the fragment is held, was a duplicate, or its
// datagram was discarded (counted in Stats.FragmentsDropped).
func (s *Stack) reassemble(p *Port, ip *ipInfo, now time.Time) []byte {
	b := ip.pkt
	var (
		off, maxPayload int
		more            bool
		payload         []byte
		key             = fragKey{port: p, dst: ip.dst}
	)
	if ip.v6 {
		if len(b) < ip.hdrLen+ipv6FragHdrLen {
			s.stats.fragmentsDropped.Add(1)
			return nil
		}
		fh := b[ip.hdrLen:]
		fo := binary.BigEndian.Uint16(fh[2:4])
		off, more, maxPayload = int(fo&^7), fo&1 != 0, maxIPv6Payload
		payload = fh[ipv6FragHdrLen:]
		key.id, key.proto = binary.BigEndian.Uint32(fh[4:8]), fh[0]
	} else {
		fo := binary.BigEndian.Uint16(b[6:8])
		off, more, maxPayload = int(fo&0x1fff)*8, fo&0x2000 != 0, maxIPv4Payload
		payload = b[ip.hdrLen:]
		key.id, key.proto = uint32(binary.BigEndian.Uint16(b[4:6])), b[9]
	}
	end := off + len(payload)
	if more {
		end &^= 7 // fragments but the last carry 8-byte units
		payload = payload[:end-off]
	}

	t := &s.frags
	t.mu.Lock()
	defer t.mu.Unlock()
	if p.closed.Load() { // Close has cleared (or will clear) p's datagrams
		return nil
	}
	t.expire(s, now)
	d := t.dgs[key]
	if end > maxPayload || end <= off {
		if d != nil {
			t.discard(s, d)
		} else {
			s.stats.fragmentsDropped.Add(1)
		}
		return nil
	}
	if d == nil {
		if p.fragDatagrams >= maxFragDatagramsPerPort {
			t.discardOldestOf(s, p)
		}
		d = &fragDatagram{key: key, total: -1, started: now}
		d.elem = t.order.PushBack(d)
		if t.dgs == nil {
			t.dgs = make(map[fragKey]*fragDatagram)
		}
		t.dgs[key] = d
		p.fragDatagrams++
	}
	dup, ok := d.fits(off, end, more)
	if !ok {
		t.discard(s, d)
		return nil
	}
	if dup {
		return nil
	}
	cost := len(payload) + fragOverhead
	for t.bytes+cost > maxFragBytes && t.order.Front() != nil && t.order.Front().Value.(*fragDatagram) != d {
		t.discard(s, t.order.Front().Value.(*fragDatagram)) // Linux's evictor: the oldest first
	}
	if t.bytes+cost > maxFragBytes {
		t.discard(s, d)
		return nil
	}
	t.bytes += cost
	d.charged += cost
	i, _ := slices.BinarySearchFunc(d.pieces, off, func(pc fragPiece, off int) int { return pc.off - off })
	d.pieces = slices.Insert(d.pieces, i, fragPiece{off, slices.Clone(payload)})
	d.addRun(span{off, end})
	if !more {
		d.total = end
	}
	if off == 0 {
		d.hdr = slices.Clone(b[:ip.hdrLen])
		if ip.v6 {
			d.hdr[ip.nhAt] = key.proto // the Fragment header goes: its next header takes its place
		}
	}
	if d.hdr == nil || d.total < 0 || len(d.runs) != 1 || d.runs[0] != (span{0, d.total}) {
		return nil
	}
	hl := len(d.hdr)
	if ip.v6 && hl-header.IPv6MinimumSize+d.total > maxIPv6Payload || !ip.v6 && hl+d.total > 0xffff {
		// the first fragment's options or extension headers made it too long
		t.discard(s, d)
		return nil
	}
	whole := make([]byte, hl+d.total)
	copy(whole, d.hdr)
	for _, pc := range d.pieces {
		copy(whole[hl+pc.off:], pc.b)
	}
	if ip.v6 {
		binary.BigEndian.PutUint16(whole[4:6], uint16(hl-header.IPv6MinimumSize+d.total))
	} else {
		binary.BigEndian.PutUint16(whole[2:4], uint16(len(whole)))
		binary.BigEndian.PutUint16(whole[6:8], binary.BigEndian.Uint16(d.hdr[6:8])&0x4000) // keep DF only
		whole[10], whole[11] = 0, 0
		binary.BigEndian.PutUint16(whole[10:12], ^fold(sum(whole[:hl], 0)))
	}
	t.remove(d)
	s.stats.reassembled.Add(1)
	return whole
}

// fits checks the fragment [off, end) against what d has, as
// inet_frag_queue_insert and ip_frag_queue do: dup for one inside a run
// already received, !ok for a partial overlap or an end that contradicts
// the datagram's.
func (d *fragDatagram) fits(off, end int, more bool) (dup, ok bool) {
	last := 0 // the highest byte received so far
	if n := len(d.runs); n > 0 {
		last = d.runs[n-1].end
	}
	switch {
	case !more && (end < last || (d.total >= 0 && end != d.total)):
		return false, false // a second, different end, or bytes beyond it
	case more && d.total >= 0 && end > d.total:
		return false, false // bytes beyond the end
	}
	i, _ := slices.BinarySearchFunc(d.runs, off, func(r span, off int) int {
		if r.end <= off {
			return -1
		}
		return 1
	})
	if i == len(d.runs) || end <= d.runs[i].start {
		return false, true // touches no run
	}
	if r := d.runs[i]; off >= r.start && end <= r.end {
		return true, true
	}
	return false, false
}

// addRun records [sp.start, sp.end) as received, merging touching runs. It
// overlaps no run (fits said so).
func (d *fragDatagram) addRun(sp span) {
	i, _ := slices.BinarySearchFunc(d.runs, sp.start, func(r span, start int) int { return r.start - start })
	d.runs = slices.Insert(d.runs, i, sp)
	if i+1 < len(d.runs) && d.runs[i].end == d.runs[i+1].start {
		d.runs[i].end = d.runs[i+1].end
		d.runs = slices.Delete(d.runs, i+1, i+2)
	}
	if i > 0 && d.runs[i-1].end == d.runs[i].start {
		d.runs[i-1].end = d.runs[i].end
		d.runs = slices.Delete(d.runs, i, i+1)
	}
}

// expire discards the datagrams older than fragTimeout. A router answers
// ICMP time exceeded (code 1) only when it has the first fragment; the
// gateway's client could not act on it, so it stays silent, as for any
// other packet it drops.
func (t *fragTable) expire(s *Stack, now time.Time) {
	for e := t.order.Front(); e != nil; e = t.order.Front() {
		d := e.Value.(*fragDatagram)
		if now.Sub(d.started) <= fragTimeout {
			return
		}
		t.discard(s, d)
	}
}

// discardOldestOf discards p's oldest datagram.
func (t *fragTable) discardOldestOf(s *Stack, p *Port) {
	for e := t.order.Front(); e != nil; e = e.Next() {
		if d := e.Value.(*fragDatagram); d.key.port == p {
			t.discard(s, d)
			return
		}
	}
}

// discard drops d, counting its loss.
func (t *fragTable) discard(s *Stack, d *fragDatagram) {
	s.stats.fragmentsDropped.Add(1)
	t.remove(d)
}

func (t *fragTable) remove(d *fragDatagram) {
	t.bytes -= d.charged
	t.order.Remove(d.elem)
	delete(t.dgs, d.key)
	d.key.port.fragDatagrams--
}

// clearPort discards p's datagrams (p closed).
func (t *fragTable) clearPort(s *Stack, p *Port) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for e := t.order.Front(); e != nil && p.fragDatagrams > 0; {
		next := e.Next()
		if d := e.Value.(*fragDatagram); d.key.port == p {
			t.discard(s, d)
		}
		e = next
	}
}
