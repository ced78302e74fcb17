package netstack

import (
	"context"
	"net"
	"net/netip"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// ICMPv6 Destination Unreachable for the client stack's dials.
//
// gVisor's IPv6 hands only two Destination Unreachable codes to its
// sockets (0, no route, and 4, port unreachable: handleICMP in its
// network/ipv6/icmp.go) and drops the others. A router answers a dial to
// a host that does not answer on its link with code 3, address
// unreachable (RFC 4443 §3.1: neighbour discovery failed), and so does
// the gateway when its upstream dial times out; Linux fails the
// connect() at once with EHOSTUNREACH (icmpv6_err_convert). Without help,
// a tunnel.Client's IPv6 dial to such a host would wait for its own
// timeout instead. So the client stack reads those messages itself
// (Inject) and fails the in-flight TCP dials to the quoted destination
// with the errno Linux gives for the code.

// unreachErrno6 is Linux's errno for each ICMPv6 Destination Unreachable
// code gVisor drops (net/ipv6/icmp.c tab_unreach).
var unreachErrno6 = map[uint8]syscall.Errno{
	1: syscall.EACCES,       // communication administratively prohibited
	2: syscall.EHOSTUNREACH, // beyond scope of source address
	3: syscall.EHOSTUNREACH, // address unreachable
	5: syscall.EACCES,       // source address failed ingress/egress policy
	6: syscall.EACCES,       // reject route to destination
}

// unreachable6 is the cause a dial is cancelled with.
type unreachable6 struct{ errno syscall.Errno }

func (u unreachable6) Error() string { return u.errno.Error() }

// pendingDial is one in-flight TCP dial over IPv6.
type pendingDial struct{ cancel context.CancelCauseFunc }

// dialTCP6 dials dst like gonet.DialContextTCP, failing at once with the
// errno of an ICMPv6 Destination Unreachable that quotes the dial's SYN
// (see above).
func (c *ClientStack) dialTCP6(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	dctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	pd := &pendingDial{cancel: cancel}
	c.dialsMu.Lock()
	if c.dials == nil {
		c.dials = make(map[netip.AddrPort]map[*pendingDial]struct{})
	}
	if c.dials[dst] == nil {
		c.dials[dst] = make(map[*pendingDial]struct{})
	}
	c.dials[dst][pd] = struct{}{}
	c.dialsMu.Unlock()
	defer func() {
		c.dialsMu.Lock()
		delete(c.dials[dst], pd)
		if len(c.dials[dst]) == 0 {
			delete(c.dials, dst)
		}
		c.dialsMu.Unlock()
	}()
	fa, proto := fullAddrProto(dst)
	tc, err := gonet.DialContextTCP(dctx, c.st, fa, proto)
	if err != nil {
		if u, ok := context.Cause(dctx).(unreachable6); ok && ctx.Err() == nil {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(dst), Err: u.errno}
		}
		return nil, asErrno(err)
	}
	return clientTCPConn{tc}, nil
}

// icmpv6Unreachable fails the in-flight dials that an inbound ICMPv6
// Destination Unreachable (pkt, a whole IPv6 packet) quotes, for the codes
// gVisor drops. Anything else is left alone; gVisor still sees the packet.
func (c *ClientStack) icmpv6Unreachable(pkt []byte) {
	// The message, then the quoted IPv6 header and the TCP ports.
	const quoted = header.IPv6MinimumSize + header.ICMPv6DstUnreachableMinimumSize
	if len(pkt) < quoted+header.IPv6MinimumSize+4 || pkt[6] != uint8(header.ICMPv6ProtocolNumber) ||
		pkt[header.IPv6MinimumSize] != uint8(header.ICMPv6DstUnreachable) {
		return
	}
	errno, ok := unreachErrno6[pkt[header.IPv6MinimumSize+1]]
	if !ok {
		return
	}
	q := header.IPv6(pkt[quoted:])
	if q.NextHeader() != uint8(header.TCPProtocolNumber) || netip.AddrFrom16(q.SourceAddress().As16()) != c.cfg.Addr6 {
		return
	}
	dport := uint16(pkt[quoted+header.IPv6MinimumSize+2])<<8 | uint16(pkt[quoted+header.IPv6MinimumSize+3])
	dst := netip.AddrPortFrom(netip.AddrFrom16(q.DestinationAddress().As16()), dport)
	c.dialsMu.Lock()
	for pd := range c.dials[dst] {
		pd.cancel(unreachable6{errno})
	}
	c.dialsMu.Unlock()
}
