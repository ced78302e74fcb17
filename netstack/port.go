package netstack

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/underpass/underpass/internal/core/tally"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Port is one client session's attachment to the stack: its leased address,
// its inbound path (Inject) and its outbound queue (Packets).
//
// Back-pressure: when the queue is full, the stack's write blocks until the
// consumer makes room or the port closes, instead of dropping. A drop on
// this leg would make gVisor's TCP treat the tunnel as lossy (retransmit,
// collapse cwnd) although nothing was lost on any wire; blocking paces the
// stack at the speed the client's tunnel drains, like a NIC's full TX ring.
// The risk: the blocked writer may be one of gVisor's TCP processor
// goroutines (one per CPU, shared by all flows hashed to it), so a client
// that stops reading without closing its port stalls those other flows too,
// until the port is closed. The session layer must therefore close ports of
// dead peers promptly (DPD); Config.MaxWriteBlock bounds the stall instead
// if set. A closed port unblocks writers at once and its packets are
// discarded.
type Port struct {
	s    *Stack
	addr netip.Addr // the first address given to Attach
	// addr6 is a dual-stack port's second address, of the other family
	// than addr (AttachAddrs); the zero Addr, which equals no parsed
	// source, when the port has one address.
	addr6    netip.Addr
	headroom int

	ch     chan *Packet
	done   chan struct{}
	closed atomic.Bool
	// stalled is set when a send waited MaxWriteBlock in vain: the client
	// is not draining, so later sends drop at once instead of stalling the
	// stack's shared goroutines again, until the queue is half empty.
	stalled atomic.Bool
	// parked is set while no transport drains the port (Park): sends
	// never block, the queue keeps the first packets that fit for the
	// next transport, and later ones drop (TCP retransmits).
	parked atomic.Bool
	// mu is read-held by every sender for the duration of its send, and
	// write-held by Close before closing ch, so ch is never closed under a
	// sender. RLock is one atomic add when uncontended.
	mu sync.RWMutex

	flowMu sync.Mutex
	flows  map[flow]struct{}
	syns   map[synKey]uint32 // client SYNs' sequence numbers (noteSYN), under flowMu

	// mtu is the transport's MTU (SetMTU); 0: the stack's.
	mtu atomic.Int32

	// fragDatagrams counts the client's datagrams under reassembly
	// (reassembly.go), guarded by the stack's fragTable lock.
	fragDatagrams int

	// tcpFlows and udpFlows count this port's forwarded flows, reserved
	// before the dial (Config.MaxTCPFlowsPerPort, MaxUDPFlowsPerPort);
	// echoes its forwarded pings awaiting a reply (maxEchoPerPort).
	tcpFlows, udpFlows, echoes atomic.Int32

	// dialing counts this port's upstream TCP dials in flight
	// (Config.MaxInFlightPerPort).
	dialing atomic.Int32

	// traffic counts the packets this port carried each way (in: accepted
	// by Inject; out: queued to the port); Stack.Stats sums the ports',
	// Close retires them into the stack's totals.
	traffic tally.Counters
}

// portTable maps each attached address to its Port. The packet path looks
// a port up for every outbound packet and for every new flow, lock-free;
// Attach and Port.Close insert and delete one entry each, in time and
// garbage independent of how many ports are attached (a copy-on-write map
// cost 4.6 ms and 2.5 MiB per connect or disconnect at 20,000 sessions,
// issue 14). sync.Map is a concurrent hash-trie since Go 1.24: Load takes
// no lock, and a store locks only the trie node it changes.
type portTable struct{ m sync.Map } // netip.Addr -> *Port

func (t *portTable) get(a netip.Addr) *Port {
	if v, ok := t.m.Load(a); ok {
		return v.(*Port)
	}
	return nil
}

// add inserts p under each of its addresses; if one is taken it inserts
// none and returns that address.
func (t *portTable) add(p *Port) (netip.Addr, bool) {
	if _, taken := t.m.LoadOrStore(p.addr, p); taken {
		return p.addr, false
	}
	if p.addr6.IsValid() {
		if _, taken := t.m.LoadOrStore(p.addr6, p); taken {
			t.m.CompareAndDelete(p.addr, p)
			return p.addr6, false
		}
	}
	return netip.Addr{}, true
}

// remove deletes p's entries if they are still p's (never a successor's).
func (t *portTable) remove(p *Port) {
	t.m.CompareAndDelete(p.addr, p)
	if p.addr6.IsValid() {
		t.m.CompareAndDelete(p.addr6, p)
	}
}

// each calls f for every attached port; f may close it. Ports attached
// meanwhile may or may not be visited; each port is visited at most once.
func (t *portTable) each(f func(*Port)) {
	t.m.Range(func(_, v any) bool {
		f(v.(*Port))
		return true
	})
}

// flow is a forwarded flow that Port.Close aborts.
type flow interface{ abort(err error) }

// Attach registers a client session's leased address and returns its Port.
// headroom bytes (at most MaxHeadroom) are reserved in front of each
// outbound packet for the caller's frame header. queueLen is the outbound
// queue length in packets; 0 means DefaultQueueLen.
func (s *Stack) Attach(addr netip.Addr, headroom, queueLen int) (*Port, error) {
	return s.AttachAddrs([]netip.Addr{addr}, headroom, queueLen)
}

// AttachAddrs is Attach for a session with one or two leased addresses: a
// dual-stack session's IPv4 and IPv6 address (one of each family, so two
// of one family fail with ErrInvalidAddr). The port owns both: either may
// be the source of the client's packets (anti-spoofing accepts exactly
// these), and flows to either come back on the port. Port.Addr returns
// addrs[0].
func (s *Stack) AttachAddrs(addrs []netip.Addr, headroom, queueLen int) (*Port, error) {
	if len(addrs) == 0 || len(addrs) > 2 {
		return nil, fmt.Errorf("%w: want one or two addresses, got %d", ErrInvalidAddr, len(addrs))
	}
	for _, addr := range addrs {
		if !addr.IsValid() || addr.IsUnspecified() || addr.IsMulticast() || addr.Is4In6() || addr.Zone() != "" {
			return nil, fmt.Errorf("%w: %v", ErrInvalidAddr, addr)
		}
	}
	var addr6 netip.Addr
	if len(addrs) == 2 {
		if addrs[0].Is4() == addrs[1].Is4() {
			return nil, fmt.Errorf("%w: %v and %v: want one address of each family", ErrInvalidAddr, addrs[0], addrs[1])
		}
		addr6 = addrs[1]
	}
	addr := addrs[0]
	if headroom < 0 || headroom > MaxHeadroom {
		return nil, fmt.Errorf("%w: %d", ErrHeadroom, headroom)
	}
	if queueLen <= 0 {
		queueLen = DefaultQueueLen
	}
	p := &Port{
		s: s, addr: addr, addr6: addr6, headroom: headroom,
		ch:    make(chan *Packet, queueLen),
		done:  make(chan struct{}),
		flows: make(map[flow]struct{}),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	for _, a := range addrs {
		if s.isLocal(a) {
			return nil, fmt.Errorf("%w: %v is a local address of the stack", ErrInvalidAddr, a)
		}
	}
	if a, ok := s.ports.add(p); !ok {
		return nil, fmt.Errorf("%w: %v", ErrAddrInUse, a)
	}
	return p, nil
}

// Addr returns the port's (first) address.
func (p *Port) Addr() netip.Addr { return p.addr }

// Addrs returns the port's addresses: Addr, then a dual-stack port's
// second one.
func (p *Port) Addrs() []netip.Addr {
	if p.addr6.IsValid() {
		return []netip.Addr{p.addr, p.addr6}
	}
	return []netip.Addr{p.addr}
}

// addrFor returns the port's address of the family of a (v4 or v6), or
// the zero Addr when it has none.
func (p *Port) addrFor(v6 bool) netip.Addr {
	switch {
	case p.addr.Is6() == v6:
		return p.addr
	case p.addr6.IsValid():
		return p.addr6
	}
	return netip.Addr{}
}

// Packets returns the outbound packets for this client. The channel is
// closed when the port is closed; the consumer should then drain it and
// Release what it receives.
func (p *Port) Packets() <-chan *Packet { return p.ch }

// Park tells the port that nothing drains Packets for now: the session's
// transport is gone but the session lives on (reconnect grace). Its flows
// stay open; packets for the client fill the queue up to its length and
// the rest are dropped at once (Stats.DropParked) instead of blocking the
// stack. Unpark when a transport drains Packets again.
func (p *Port) Park() { p.parked.Store(true) }

// Unpark ends Park: a transport drains Packets again, so full-queue sends
// wait for room (back-pressure) as usual. It clears a stall too.
func (p *Port) Unpark() {
	p.stalled.Store(false)
	p.parked.Store(false)
}

// Close detaches the address, unblocks any writer blocked on this port,
// closes Packets and aborts the port's flows. It is idempotent.
func (p *Port) Close() error {
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	s := p.s
	// The port's counts leave the table (which Stats walks) and enter the
	// retired totals in one step, so no snapshot misses them.
	s.stats.traffic.Retire(&p.traffic, func() { s.ports.remove(p) })

	close(p.done) // blocked senders give up
	p.mu.Lock()   // wait for senders to leave
	close(p.ch)
	p.mu.Unlock()

	p.flowMu.Lock()
	flows := p.flows
	p.flows = nil
	p.flowMu.Unlock()
	for f := range flows {
		f.abort(ErrClosed)
	}
	s.frags.clearPort(s, p)
	return nil
}

// reserve takes one of a port's n slots counted by c (release with
// c.Add(-1)); false, and counted in over, when all are taken.
func reserve(c *atomic.Int32, n int, over *atomic.Uint64) bool {
	if c.Add(1) > int32(n) {
		c.Add(-1)
		over.Add(1)
		return false
	}
	return true
}

// addFlow registers f; false (and f is not registered) if the port closed.
func (p *Port) addFlow(f flow) bool {
	p.flowMu.Lock()
	defer p.flowMu.Unlock()
	if p.flows == nil {
		return false
	}
	p.flows[f] = struct{}{}
	return true
}

func (p *Port) removeFlow(f flow) {
	p.flowMu.Lock()
	delete(p.flows, f)
	p.flowMu.Unlock()
}

// send queues pk, blocking while the queue is full if block is set. It
// reports whether pk was queued; otherwise pk has been released.
func (p *Port) send(pk *Packet, block bool) bool {
	s := p.s
	pk.head = p.headroom
	p.mu.RLock()
	if p.closed.Load() {
		p.mu.RUnlock()
		pk.Release()
		s.stats.dropPortClosed.Add(1)
		return false
	}
	select {
	case p.ch <- pk:
		p.mu.RUnlock()
		if p.stalled.Load() && len(p.ch) <= cap(p.ch)/2 {
			p.stalled.Store(false) // draining again: back to back-pressure
		}
		return true
	default:
	}
	switch {
	case block && p.parked.Load():
		block = false
		s.stats.dropParked.Add(1)
	case block && p.stalled.Load():
		block = false
		s.stats.dropBlocked.Add(1)
	}
	if !block {
		p.mu.RUnlock()
		pk.Release()
		return false
	}
	s.stats.writeBlocked.Add(1)
	timeout, t := s.blockTimer()
	ok := false
	select {
	case p.ch <- pk:
		ok = true
	case <-p.done:
		s.stats.dropPortClosed.Add(1)
	case <-timeout:
		s.stats.dropBlocked.Add(1)
		p.stalled.Store(true)
	}
	p.mu.RUnlock()
	if t != nil {
		t.Stop()
	}
	if !ok {
		pk.Release()
	}
	return ok
}

// Inject feeds one IP packet from the client into the stack. pkt is copied;
// the caller may reuse it. The packet is dropped with ErrNotIP, ErrMalformed,
// ErrTooBig, ErrSpoofed (source is not one of the port's addresses) or ErrNotAllowed
// (destination refused by policy or another session's address); for
// ErrNotAllowed the client is answered at once on this port: a TCP RST, or
// an ICMP destination-unreachable (administratively prohibited).
func (p *Port) Inject(pkt []byte) error { return p.InjectBatch(nil, pkt) }

// InjectBatch is Inject through b: a TCP segment may be held in b, to be
// coalesced with the next ones of its flow, until b.Flush. A nil b
// delivers at once, like Inject.
func (p *Port) InjectBatch(b *Batch, pkt []byte) error {
	s := p.s
	if p.closed.Load() {
		return ErrClosed
	}
	if len(pkt) > s.mtu {
		s.stats.dropTooBig.Add(1)
		return ErrTooBig
	}
	ip, err := parseIP(pkt)
	if err != nil {
		if err == ErrNotIP {
			s.stats.dropNotIP.Add(1)
		} else {
			s.stats.dropMalformed.Add(1)
		}
		return err
	}
	if ip.src != p.addr && ip.src != p.addr6 { // addr6 is zero (no match) on a single-address port
		s.stats.dropSpoofed.Add(1)
		return ErrSpoofed
	}
	if ip.frag { // nothing looks at a fragment before its datagram is whole
		whole := s.reassemble(p, &ip, time.Now())
		if whole == nil {
			return nil // held, a duplicate, or dropped and counted
		}
		if ip, err = parseIP(whole); err != nil { // cannot happen: reassemble built it
			s.stats.dropMalformed.Add(1)
			return err
		}
	}
	if ip.ttl <= 1 && !s.consumes(&ip) {
		// A router forwards nothing whose TTL (hop limit) would reach 0,
		// and says so (RFC 1812 5.3.1, RFC 4443 3.3): traceroute's first
		// hop is the gateway. The hosts beyond are not: the stack
		// re-originates each flow from its own socket. Only what the
		// stack itself takes is exempt: at a listener's address (the DNS
		// proxy's) that is the listener's port, not a ping or traceroute.
		s.stats.ttlExceeded.Add(1)
		s.timeExceeded(p, &ip)
		return ErrTTLExceeded
	}
	// Echo is the stack's to answer only at its own address. A listener's
	// address (the DNS proxy's, say) owns just its port, as on a router
	// that intercepts port 53: a ping there is forwarded to the real host
	// (if the policy routes it), so a dead DNS server does not seem alive.
	own := ip.dst == s.cfg.Addr
	if ip.isEchoRequest() && !own && s.routable(ip.dst) && s.forwardEcho(p, &ip) {
		p.traffic.AddIn(len(ip.pkt))
		return nil
	}
	if !s.allowed(ip.dst) || (ip.isEchoRequest() && !own) {
		// Other echo is never answered by gVisor's promiscuous NIC,
		// which would lie about reachability.
		s.stats.dropNotAllowed.Add(1)
		s.reject(p, &ip)
		return ErrNotAllowed
	}
	if ip.tproto == protoTCP {
		p.noteSYN(ip.dst, ip.l4)
	}
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(ip.pkt)})
	pb.NetworkProtocolNumber = ip.proto
	// The tunnel (TLS, DTLS or QUIC) authenticated the packet, so checksums
	// are not verified (see tunnelLink.Capabilities); GRO reads this flag.
	pb.RXChecksumValidated = true
	var ok bool
	if b != nil {
		ok = b.enqueue(pb)
	} else {
		ok = s.link.deliver(ip.proto, pb)
	}
	if ok {
		p.traffic.AddIn(len(ip.pkt))
	}
	pb.DecRef()
	return nil
}

// ipInfo is what Inject learns from a client's IP header.
type ipInfo struct {
	pkt   []byte // the packet, trimmed to its IP length
	proto tcpip.NetworkProtocolNumber
	v6    bool
	// hdrLen is IPv4's header length; IPv6's fixed header and the
	// extension headers skipped before the Fragment header or the
	// upper-layer header (walkExtHeaders6): a fragment's unfragmentable
	// part.
	hdrLen   int
	src, dst netip.Addr
	tproto   uint8  // transport protocol (IPv6: the next header after the skipped extension headers)
	ttl      uint8  // TTL (IPv6: hop limit)
	l4       []byte // transport header+payload; nil for fragments
	frag     bool   // a fragment (IPv4: MF or an offset; IPv6: a Fragment header): reassembled first
	// nhAt is, for an IPv6 fragment, the offset of the next-header byte
	// that names the Fragment header (6, or in the last skipped
	// extension header).
	nhAt int
}

const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

func parseIP(b []byte) (ipInfo, error) {
	if len(b) == 0 {
		return ipInfo{}, ErrMalformed
	}
	var ip ipInfo
	switch b[0] >> 4 {
	case 4:
		if len(b) < header.IPv4MinimumSize {
			return ip, ErrMalformed
		}
		ihl := int(b[0]&0x0f) * 4
		tot := int(binary.BigEndian.Uint16(b[2:4]))
		if ihl < header.IPv4MinimumSize || tot < ihl || tot > len(b) {
			return ip, ErrMalformed
		}
		b = b[:tot]
		ip = ipInfo{pkt: b, proto: header.IPv4ProtocolNumber, hdrLen: ihl,
			src: netip.AddrFrom4([4]byte(b[12:16])), dst: netip.AddrFrom4([4]byte(b[16:20])), tproto: b[9], ttl: b[8]}
		if ip.frag = isFragment(b); !ip.frag {
			ip.l4 = b[ihl:]
		}
	case 6:
		if len(b) < header.IPv6MinimumSize {
			return ip, ErrMalformed
		}
		tot := header.IPv6MinimumSize + int(binary.BigEndian.Uint16(b[4:6]))
		if tot > len(b) {
			return ip, ErrMalformed
		}
		b = b[:tot]
		hl, nhAt, err := walkExtHeaders6(b)
		if err != nil {
			return ip, err
		}
		ip = ipInfo{pkt: b, proto: header.IPv6ProtocolNumber, v6: true, hdrLen: hl,
			src: netip.AddrFrom16([16]byte(b[8:24])), dst: netip.AddrFrom16([16]byte(b[24:40])), tproto: b[nhAt], ttl: b[7]}
		if ip.frag = ip.tproto == ipv6FragHdr; ip.frag {
			ip.nhAt = nhAt
		} else {
			ip.l4 = b[hl:]
		}
	default:
		return ip, ErrNotIP
	}
	return ip, nil
}

// walkExtHeaders6 skips the extension headers of the IPv6 packet b that
// may come before a Fragment header (RFC 8200 4.1's order): Hop-by-Hop
// Options, first only (4.3), then Destination Options and a Routing
// header whose Segments Left is 0 (which a node ignores, 4.4), as Linux's
// nf_defrag_ipv6 walks to the Fragment header (find_prev_fhdr). Linux
// walks past any Routing header; one with Segments Left above 0 stops the
// walk here, since the packet's destination is not its final one. It
// returns the length of what it skipped with the fixed header, and the
// offset of the next-header byte that names what follows: a Fragment
// header, an upper-layer header, or a header left to gVisor (a Routing
// header still to be followed, ESP, AH...). An extension header that
// runs past the packet is ErrMalformed.
func walkExtHeaders6(b []byte) (hdrLen, nhAt int, err error) {
	off, nhAt := header.IPv6MinimumSize, 6
	for {
		nh := b[nhAt]
		switch {
		case nh == hopByHopHdr && off == header.IPv6MinimumSize, nh == destOptsHdr:
		case nh == routingHdr:
			if off+4 > len(b) {
				return 0, 0, ErrMalformed
			}
			if b[off+3] != 0 { // Segments Left: the destination is not final
				return off, nhAt, nil
			}
		default:
			return off, nhAt, nil
		}
		if off+2 > len(b) {
			return 0, 0, ErrMalformed
		}
		n := (int(b[off+1]) + 1) * 8 // Hdr Ext Len, in 8-octet units after the first 8
		if off+n > len(b) {
			return 0, 0, ErrMalformed
		}
		nhAt, off = off, off+n
	}
}

// The extension headers walkExtHeaders6 skips (RFC 8200 4.3, 4.4, 4.6).
const (
	hopByHopHdr = 0
	routingHdr  = 43
	destOptsHdr = 60
)

func (ip *ipInfo) isEchoRequest() bool {
	if len(ip.l4) < 1 {
		return false
	}
	if ip.v6 {
		return ip.tproto == protoICMPv6 && ip.l4[0] == 128
	}
	return ip.tproto == protoICMP && ip.l4[0] == 8
}
