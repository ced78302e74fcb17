package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// ClientConfig configures a ClientStack.
type ClientConfig struct {
	// Addr is the client's in-tunnel address (IPv4), leased by the gateway.
	Addr netip.Addr
	// Addr6, if valid, is the client's in-tunnel IPv6 address (a
	// dual-stack session): the stack then has an IPv6 default route into
	// the tunnel too.
	Addr6 netip.Addr
	// MTU is the tunnel MTU. Default 1280.
	MTU int
	// Headroom bytes are reserved in front of each outbound packet for the
	// caller's frame header (at most MaxHeadroom).
	Headroom int
	// QueueLen is the outbound queue in packets. Default DefaultQueueLen.
	QueueLen int
	// MaxWriteBlock bounds how long the stack waits for room in a full
	// outbound queue before dropping (TCP retransmits): while the tunnel
	// reconnects nobody drains it. Default defaultClientWriteBlock.
	MaxWriteBlock time.Duration
}

// defaultClientWriteBlock: a live tunnel writer frees a slot within
// milliseconds; 250 ms covers a slow scheduler, not a reconnect.
const defaultClientWriteBlock = 250 * time.Millisecond

// ClientStack is a userspace TCP/IP stack for one VPN client: the packets
// it sends come out of Packets (for the tunnel to carry), the packets the
// tunnel receives go in through Inject, and programs use DialContext and
// Ping as they would the host network. It is safe for concurrent use.
type ClientStack struct {
	cfg   ClientConfig
	st    *stack.Stack
	link  *clientLink
	pools packetPools

	out    chan *Packet
	done   chan struct{}
	closed atomic.Bool
	mu     sync.RWMutex // read-held by senders; Close write-holds it before closing out

	pingID atomic.Uint32

	dialsMu sync.Mutex
	dials   map[netip.AddrPort]map[*pendingDial]struct{} // in-flight IPv6 TCP dials (clientunreach.go)
}

// NewClient creates a client stack with addr as its only address and a
// default route into the tunnel.
func NewClient(cfg ClientConfig) (*ClientStack, error) {
	if !cfg.Addr.IsValid() || !cfg.Addr.Is4() || cfg.Addr.IsUnspecified() {
		return nil, fmt.Errorf("%w: ClientConfig.Addr must be an IPv4 address", ErrInvalidAddr)
	}
	if a := cfg.Addr6; a.IsValid() && (!a.Is6() || a.Is4In6() || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "") {
		return nil, fmt.Errorf("%w: ClientConfig.Addr6 %v must be an IPv6 unicast address", ErrInvalidAddr, a)
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1280 // the IPv6 minimum: fits any QUIC datagram path
	}
	if cfg.MTU < 576 || cfg.MTU > 65535 {
		return nil, fmt.Errorf("netstack: MTU %d out of range [576, 65535]", cfg.MTU)
	}
	if cfg.Headroom < 0 || cfg.Headroom > MaxHeadroom {
		return nil, fmt.Errorf("%w: %d", ErrHeadroom, cfg.Headroom)
	}
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = DefaultQueueLen
	}
	if cfg.MaxWriteBlock <= 0 {
		cfg.MaxWriteBlock = defaultClientWriteBlock
	}
	c := &ClientStack{
		cfg:  cfg,
		out:  make(chan *Packet, cfg.QueueLen),
		done: make(chan struct{}),
	}
	c.pools.init(cfg.MTU)
	c.st = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
	})
	c.link = &clientLink{c: c}
	c.link.mtu = uint32(cfg.MTU)
	if err := c.configure(); err != nil {
		c.st.Close()
		c.st.Wait()
		return nil, err
	}
	return c, nil
}

func (c *ClientStack) configure() error {
	// The same TCP settings as the gateway's stack: one flow can fill a
	// fast path, an idle one holds nothing.
	if err := setTCPOptions(c.st); err != nil {
		return err
	}
	if err := c.st.CreateNICWithOptions(nicID, c.link, stack.NICOptions{Name: "tunnel", QDisc: &clientQDisc{c}}); err != nil {
		return fmt.Errorf("netstack: create NIC: %v", err)
	}
	routes := []tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}}
	for _, a := range []netip.Addr{c.cfg.Addr, c.cfg.Addr6} {
		if !a.IsValid() {
			continue
		}
		pa := tcpip.ProtocolAddress{
			Protocol:          protoOf(a),
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(a), PrefixLen: a.BitLen()},
		}
		if err := c.st.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("netstack: add address %v: %v", a, err)
		}
		if a.Is6() {
			routes = append(routes, tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
		}
	}
	c.st.SetRouteTable(routes)
	return nil
}

// Addr returns the stack's address.
func (c *ClientStack) Addr() netip.Addr { return c.cfg.Addr }

// Addr6 returns the stack's IPv6 address, or the zero Addr.
func (c *ClientStack) Addr6() netip.Addr { return c.cfg.Addr6 }

// MTU returns the stack's MTU.
func (c *ClientStack) MTU() int { return c.cfg.MTU }

// ClientStats counts a ClientStack's TCP segments since it was created,
// from gVisor's own counters. Retransmits against SegmentsSent is how
// often the tunnel lost (or delayed past the RTO) what this side sent.
type ClientStats struct {
	TCPSegmentsSent uint64 // every TCP segment sent, retransmissions included
	TCPRetransmits  uint64 // segments sent again: fast recovery and timeouts
}

// Stats returns the stack's counters.
func (c *ClientStack) Stats() ClientStats {
	t := c.st.Stats().TCP
	return ClientStats{TCPSegmentsSent: t.SegmentsSent.Value(), TCPRetransmits: t.Retransmits.Value()}
}

// Packets returns the packets to send into the tunnel, each with
// ClientConfig.Headroom free bytes in front (see Packet.Frame). The
// consumer must Release each. The channel closes with the stack.
func (c *ClientStack) Packets() <-chan *Packet { return c.out }

// Inject delivers a packet received from the tunnel. The stack copies it.
func (c *ClientStack) Inject(pkt []byte) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if len(pkt) > c.cfg.MTU {
		return ErrTooBig
	}
	if len(pkt) == 0 {
		return ErrNotIP
	}
	var proto tcpip.NetworkProtocolNumber
	switch pkt[0] >> 4 {
	case 4:
		proto = header.IPv4ProtocolNumber
	case 6:
		proto = header.IPv6ProtocolNumber
		c.icmpv6Unreachable(pkt)
	default:
		return ErrNotIP
	}
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	defer pb.DecRef()
	d := c.link.disp.Load()
	if d == nil {
		return ErrClosed
	}
	d.d.DeliverNetworkPacket(proto, pb)
	return nil
}

// send queues one outbound packet, waiting at most MaxWriteBlock for room.
func (c *ClientStack) send(pkt *stack.PacketBuffer) {
	size := pkt.Size()
	pk := c.pools.get(c.cfg.Headroom + size)
	if pk == nil {
		return
	}
	buf := pk.buf[c.cfg.Headroom : c.cfg.Headroom+size]
	n := 0
	for _, v := range pkt.AsSlices() {
		n += copy(buf[n:], v)
	}
	pk.n, pk.head = c.cfg.Headroom+n, c.cfg.Headroom
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed.Load() {
		pk.Release()
		return
	}
	select {
	case c.out <- pk:
		return
	default:
	}
	t := time.NewTimer(c.cfg.MaxWriteBlock)
	defer t.Stop()
	select {
	case c.out <- pk:
	case <-t.C:
		pk.Release()
	case <-c.done:
		pk.Release()
	}
}

// DialContext opens a TCP or UDP connection through the tunnel. address is
// "ip:port": name resolution is the caller's (see the tunnel client's
// Resolver). Errors, here and from the connection, carry the errno a host
// socket would (syscall.ECONNREFUSED, ECONNRESET, EHOSTUNREACH...) in a
// *net.OpError.
func (c *ClientStack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := parseAddrPort(address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	fa, proto := fullAddrProto(ap)
	switch network {
	case "tcp", "tcp4", "tcp6":
		if ap.Addr().Is6() {
			return c.dialTCP6(ctx, ap)
		}
		tc, err := gonet.DialContextTCP(ctx, c.st, fa, proto)
		if err != nil {
			return nil, asErrno(err)
		}
		return clientTCPConn{tc}, nil
	case "udp", "udp4", "udp6":
		uc, err := gonet.DialUDP(c.st, nil, &fa, proto)
		if err != nil {
			return nil, asErrno(err)
		}
		return clientUDPConn{uc}, nil
	}
	return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
}

// ListenUDP opens an unconnected UDP socket on the stack's address (port
// 0: any), for protocols that talk to several peers.
func (c *ClientStack) ListenUDP(port uint16) (net.PacketConn, error) {
	fa, proto := fullAddrProto(netip.AddrPortFrom(c.cfg.Addr, port))
	uc, err := gonet.DialUDP(c.st, &fa, nil, proto)
	if err != nil {
		return nil, asErrno(err)
	}
	return clientUDPConn{uc}, nil
}

func parseAddrPort(address string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, err
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("netstack: %q is not an IP address (resolve names first)", host)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("netstack: bad port %q", port)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), nil
}

// fullAddrProto is fullAddr plus the address's network protocol.
func fullAddrProto(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	proto := ipv4.ProtocolNumber
	if ap.Addr().Is6() {
		proto = ipv6.ProtocolNumber
	}
	return fullAddr(ap), proto
}

// ErrPingTimeout is returned by Ping when no reply came before ctx ended.
var ErrPingTimeout = errors.New("netstack: ping: no reply")

// Ping sends one ICMP echo request (ICMPv6 to an IPv6 dst, which needs
// ClientConfig.Addr6) to dst through the tunnel and waits for the reply;
// it returns the round-trip time.
func (c *ClientStack) Ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	dst = dst.Unmap()
	tproto, nproto, echo, reply := icmp.ProtocolNumber4, ipv4.ProtocolNumber, uint8(header.ICMPv4Echo), uint8(header.ICMPv4EchoReply)
	if dst.Is6() {
		if !c.cfg.Addr6.IsValid() {
			return 0, fmt.Errorf("netstack: ping %v: the stack has no IPv6 address", dst)
		}
		tproto, nproto, echo, reply = icmp.ProtocolNumber6, ipv6.ProtocolNumber, uint8(header.ICMPv6EchoRequest), uint8(header.ICMPv6EchoReply)
	}
	var wq waiter.Queue
	ep, terr := c.st.NewEndpoint(tproto, nproto, &wq)
	if terr != nil {
		return 0, fmt.Errorf("netstack: ping endpoint: %v", terr)
	}
	defer ep.Close()
	we, ch := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	if terr := ep.Connect(tcpip.FullAddress{NIC: nicID, Addr: tcpAddr(dst)}); terr != nil {
		return 0, fmt.Errorf("netstack: ping %v: %v", dst, terr)
	}
	seq := uint16(c.pingID.Add(1))
	// The echo header (type, code, checksum, identifier, sequence) has
	// the same 8-byte layout in ICMP and ICMPv6; gVisor's endpoint fills
	// in the identifier and the checksum. 8 bytes of payload carry the
	// send time.
	req := make([]byte, header.ICMPv4MinimumSize+8)
	req[0] = echo
	binary.BigEndian.PutUint16(req[6:8], seq)
	start := time.Now()
	binary.BigEndian.PutUint64(req[header.ICMPv4MinimumSize:], uint64(start.UnixNano()))
	var r bytes.Reader
	r.Reset(req)
	if _, terr := ep.Write(&r, tcpip.WriteOptions{}); terr != nil {
		return 0, fmt.Errorf("netstack: ping %v: %v", dst, terr)
	}
	for {
		var w bytesWriter
		_, terr := ep.Read(&w, tcpip.ReadOptions{})
		if _, wouldBlock := terr.(*tcpip.ErrWouldBlock); wouldBlock {
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return 0, fmt.Errorf("%w from %v: %v", ErrPingTimeout, dst, ctx.Err())
			case <-c.done:
				return 0, ErrClosed
			}
		}
		if terr != nil {
			return 0, fmt.Errorf("netstack: ping %v: %v", dst, terr)
		}
		if rep := w.b; len(rep) >= header.ICMPv4MinimumSize && rep[0] == reply && binary.BigEndian.Uint16(rep[6:8]) == seq {
			return time.Since(start), nil
		}
	}
}

type bytesWriter struct{ b []byte }

func (w *bytesWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

// Close stops the stack: connections made through it fail, Packets closes.
// It is idempotent.
func (c *ClientStack) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(c.done)
	c.st.Close()
	c.st.Wait()
	c.mu.Lock()
	close(c.out)
	c.mu.Unlock()
	for pk := range c.out {
		pk.Release()
	}
	return nil
}

// clientLink is the client stack's NIC: outbound packets go to Packets.
type clientLink struct {
	tunnelLink
	c *ClientStack
}

var _ stack.LinkEndpoint = (*clientLink)(nil)

func (e *clientLink) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		e.c.send(pkt)
		n++
	}
	return n, nil
}

// clientQDisc hands packets straight to the link (see directQDisc).
type clientQDisc struct{ c *ClientStack }

func (q *clientQDisc) WritePacket(pkt *stack.PacketBuffer) tcpip.Error {
	q.c.send(pkt)
	return nil
}

func (q *clientQDisc) Close() {}
