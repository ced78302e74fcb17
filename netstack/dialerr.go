package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
)

// Dial failures answered as a router answers them. A router passes the
// server's RST on when a port is closed, and returns ICMP destination
// unreachable when it cannot deliver at all (RFC 1812 5.2.7.1): host
// unreachable when a directly connected host does not answer ARP (Linux:
// about 3 s), net unreachable without a route. The client's stack then
// fails connect() with EHOSTUNREACH / ENETUNREACH at once, which
// applications and happy-eyeballs tell apart from a refusal (ECONNREFUSED).
//
// An ICMP error must quote the client's SYN: Linux accepts one for a
// connecting socket only if the quoted sequence number is the socket's
// initial one (tcp_v4_err: between snd_una and snd_nxt). gVisor's forwarder
// does not hand the SYN to the handler, so InjectBatch records each SYN's
// sequence number per 4-tuple (Port.noteSYN) for handleTCP to quote.

// maxSYNs bounds a port's recorded SYNs. Entries leave when their dial
// ends; a SYN the forwarder never hands over (dropped over its global cap)
// would stay, so a full table is simply cleared: a failure whose SYN is
// forgotten is answered with a RST, as before.
const maxSYNs = 1024

type synKey struct {
	src uint16
	dst netip.AddrPort
}

// noteSYN records the sequence number of a client SYN (tcp: the TCP header).
func (p *Port) noteSYN(dst netip.Addr, tcp []byte) {
	if len(tcp) < 14 || tcp[13]&(tcpFlagSYN|tcpFlagACK) != tcpFlagSYN || p.s.isLocal(dst) {
		return // not a SYN, or for the stack's own listeners (never dialed)
	}
	k := synKey{binary.BigEndian.Uint16(tcp[0:2]), netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:4]))}
	seq := binary.BigEndian.Uint32(tcp[4:8])
	p.flowMu.Lock()
	if p.syns == nil || len(p.syns) >= maxSYNs {
		p.syns = make(map[synKey]uint32)
	}
	p.syns[k] = seq
	p.flowMu.Unlock()
}

// takeSYN returns and forgets the recorded SYN sequence number of src -> dst.
func (p *Port) takeSYN(src, dst netip.AddrPort) (uint32, bool) {
	k := synKey{src.Port(), dst}
	p.flowMu.Lock()
	defer p.flowMu.Unlock()
	seq, ok := p.syns[k]
	delete(p.syns, k)
	return seq, ok
}

// unreachable is the ICMP answer to a failed dial: type and code for
// IPv4 and IPv6, or ok false for a RST (refused, or a failure a router
// would not report).
func unreachable(err error) (code4, code6 byte, ok bool) {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return 0, 0, false
	case errors.Is(err, syscall.ENETUNREACH):
		return icmp4CodeNet, icmp6CodeNoRoute, true
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		// No answer at all: what a router reports after ARP / ND gave up.
		return icmp4CodeHost, icmp6CodeAddr, true
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return icmp4CodeAdminProhib, icmp6CodeAdminProhib, true // a local firewall refused the dial
	}
	return 0, 0, false
}

// answerDialFailure tells the client its SYN src -> dst cannot be
// delivered: ICMP unreachable when err calls for it and the SYN was
// recorded (true; the caller then drops the SYN without a RST), else
// false (the caller resets).
func (s *Stack) answerDialFailure(p *Port, src, dst netip.AddrPort, err error) bool {
	seq, ok := p.takeSYN(src, dst)
	c4, c6, icmp := unreachable(err)
	if !ok || !icmp {
		return false
	}
	// The quoted SYN: ports and its sequence number. IPv4 errors come from
	// the gateway's address; an IPv6 one from the destination, as
	// sendPortUnreachable's (the stack has no IPv6 address of its own).
	var l4 [8]byte
	binary.BigEndian.PutUint32(l4[4:8], seq)
	from := s.cfg.Addr
	if src.Addr().Is6() {
		from = dst.Addr()
	}
	s.sendUnreachable(p, src, dst, protoTCP, l4, from, c4, c6)
	return true
}
