package netstack

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// Dialer is the outbound dialer flows are re-originated with
// (default &net.Dialer{}). An embedding proxy can chain its own.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config configures a Stack. Only Addr is required.
type Config struct {
	// Addr is the gateway's own in-tunnel IPv4 address (required). The stack
	// answers ICMP echo there; local services listen there. It is never
	// forwarded to a host socket.
	Addr netip.Addr
	// MTU is the largest IP packet the link carries; 0 means 1500. At most
	// 65535 (the TLS tunnel uses MTUs up to 16384).
	MTU int
	// Dialer re-originates flows; nil means &net.Dialer{}.
	Dialer Dialer
	// DialTimeout bounds an upstream TCP connect; 0 means 10s.
	DialTimeout time.Duration
	// UDPIdleTimeout closes a UDP flow (its mapping) after this long
	// without traffic in either direction; 0 means DefaultUDPIdleTimeout.
	UDPIdleTimeout time.Duration
	// Allow reports whether a client may send to dst (route policy). nil
	// allows all. Attached session addresses, unspecified, multicast and
	// broadcast destinations are refused regardless.
	Allow func(dst netip.Addr) bool
	// Logger receives debug and error logs; nil discards them.
	Logger *slog.Logger
	// Pinger forwards clients' ICMP echo requests to other hosts. nil
	// means HostPinger when Dialer is nil too; with a custom Dialer and no
	// Pinger, pings to other hosts are refused (administratively
	// prohibited), since the embedder owns the network path.
	Pinger Pinger
	// FlowLog, if set, is called (from one of the flow's goroutines,
	// never from Port.Close's caller) when a forwarded TCP or UDP flow
	// ends.
	FlowLog func(FlowRecord)
	// MaxInFlight caps TCP connection attempts being dialed upstream at
	// once; further SYNs are ignored (the client retransmits). 0 means
	// DefaultMaxInFlight.
	MaxInFlight int
	// MaxInFlightPerPort caps one port's (one client's) share of those
	// attempts, so a client scanning a black-holed network cannot take
	// every slot from the others; its further SYNs are ignored too and
	// counted (Stats.TCPDialCapped). 0 means DefaultMaxInFlightPerPort.
	MaxInFlightPerPort int
	// MaxTCPFlowsPerPort caps one port's forwarded TCP flows (open or being
	// dialed); a SYN over it is refused with a RST and counted
	// (Stats.TCPFlowsCapped). 0 means DefaultMaxTCPFlowsPerPort.
	MaxTCPFlowsPerPort int
	// MaxUDPFlowsPerPort caps one port's forwarded UDP flows (4-tuples
	// within their idle timeout); a datagram that would open another is
	// dropped, as by a full conntrack table, and counted
	// (Stats.UDPFlowsCapped). 0 means DefaultMaxUDPFlowsPerPort.
	MaxUDPFlowsPerPort int
	// MaxWriteBlock, if positive, bounds how long the stack blocks on a full
	// port queue before dropping the packet; the port then counts as
	// stalled and drops without blocking until its queue is half empty, so
	// one client that stops reading cannot hold the stack's shared TCP
	// goroutines (and with them other clients' flows). 0 blocks until there
	// is room or the port closes (see Port).
	MaxWriteBlock time.Duration
}

// FlowRecord describes a forwarded flow that has ended.
type FlowRecord struct {
	Proto     string         // "tcp" or "udp"
	Src       netip.AddrPort // client side
	Dst       netip.AddrPort // destination the client asked for
	BytesUp   uint64         // client -> destination
	BytesDown uint64         // destination -> client
	Start     time.Time
	Duration  time.Duration
	Err       error // why it ended abnormally (dial failure, reset), or nil
}

const (
	// DefaultMaxInFlight bounds pending SYNs being dialed: each holds a
	// goroutine and a connecting host socket, so a SYN flood or a scan of a
	// black-holed network cannot exhaust file descriptors; 1024 still lets
	// a busy gateway open >100 connections/s to destinations that take the
	// whole 10s dial timeout.
	DefaultMaxInFlight = 1024
	// DefaultMaxInFlightPerPort is a quarter of DefaultMaxInFlight: far
	// above what one device opens at once (a browser keeps a few dozen
	// connections), and a scanning client leaves three quarters of the
	// slots to everyone else.
	DefaultMaxInFlightPerPort = DefaultMaxInFlight / 4
	// DefaultMaxTCPFlowsPerPort: a device keeps a few hundred connections
	// at most (a browser a few dozen per site); 4096 leaves a scanning or
	// leaking client its own limit long before it holds a tenth of the
	// host's descriptors (64k) that every session shares.
	DefaultMaxTCPFlowsPerPort = 4096
	// DefaultMaxUDPFlowsPerPort: UDP flows live 2 minutes after their last
	// datagram, so a client querying an outside resolver from a fresh port
	// 10 times a second holds about 1,200; 2048 leaves room for that and
	// stops a client spraying datagrams at many ports.
	DefaultMaxUDPFlowsPerPort = 2048
	// DefaultUDPIdleTimeout is how long a UDP flow lives without traffic:
	// RFC 4787 REQ-5 asks a NAT for at least 2 minutes, and Linux's
	// conntrack keeps an answered UDP flow 120 s
	// (nf_conntrack_udp_timeout_stream), so an NTP, SIP or syslog flow
	// silent for 90 s survives here as through a kernel gateway.
	DefaultUDPIdleTimeout = 2 * time.Minute
	// DefaultQueueLen is a port's outbound queue in packets when Attach is
	// given 0: enough to absorb a burst of ACK-clocked segments from
	// several flows (gVisor sends up to ~64 segments per burst) while
	// bounding a stalled client's queued memory to 512 × (headroom+MTU).
	DefaultQueueLen = 512
	// MaxHeadroom is the largest headroom Attach accepts: pooled buffers
	// reserve this much so one pool serves every port.
	MaxHeadroom = 64

	defaultMTU         = 1500
	defaultDialTimeout = 10 * time.Second
	nicID              = tcpip.NICID(1)
)

// gVisor TCP tuning. Buffers are allocated per segment on demand, so these
// are caps, not reservations: an idle flow holds none of it.
const (
	// tcpBufMin is the floor a buffer may be shrunk to: one page.
	tcpBufMin = 4 << 10
	// tcpRcvBufDefault is where receive auto-tuning starts: enough for a
	// LAN-speed client from the first RTT without reserving 1 MiB (gVisor's
	// default) of potential backlog per flow × 64k flows.
	tcpRcvBufDefault = 256 << 10
	// tcpSndBufDefault likewise for the send side (stack -> client); gVisor
	// grows it with the congestion window.
	tcpSndBufDefault = 256 << 10
	// tcpBufMax lets one flow fill a 1 Gbit/s × 30 ms path (≈4 MiB BDP).
	tcpBufMax = 4 << 20
	// tcpTimeWait: TIME_WAIT only guards the in-tunnel leg against stale
	// duplicates; 10s (vs 60s) frees endpoint memory sooner under churn.
	tcpTimeWait = 10 * time.Second
)

// Stack is the gateway's single userspace TCP/IP stack. It is safe for
// concurrent use.
type Stack struct {
	cfg  Config
	log  *slog.Logger
	st   *stack.Stack
	link *linkEndpoint
	mtu  int

	ctx    context.Context
	cancel context.CancelFunc

	// ports maps an attached address to its Port (see portTable).
	ports portTable
	// local holds what the stack itself owns, by address: everything at
	// Addr; at a listener's address (the DNS proxy's, say) only the
	// listeners' ports. Copy-on-write: listeners are few and set up at start.
	local atomic.Pointer[map[netip.Addr]localAddr]

	mu        sync.Mutex // orders Attach against addLocal and Close; guards the writers of local, listeners, closed
	closed    bool
	listeners map[io.Closer]struct{}

	wg     sync.WaitGroup // flow and handler goroutines
	pools  packetPools
	stats  counters
	echo   echoState
	frags  fragTable // clients' datagrams under reassembly
	pinger Pinger    // nil: pings to other hosts are refused

	// poller wakes idle TCP flows when their host socket turns readable
	// (poller_linux.go); nil where epoll is unavailable, and then each
	// flow keeps a reader goroutine.
	poller *poller

	icmpInFlight atomic.Int32  // deliverICMP goroutines running (maxICMPInFlight)
	fragID       atomic.Uint32 // the last fragment identification the stack gave a packet that had none (fragment4: its low 16 bits; fragment6)
	noFDLogged   atomic.Int64  // UnixNano of the last lack-of-descriptors warning (dialFailed)
}

// New creates and starts a Stack.
func New(cfg Config) (*Stack, error) {
	if !cfg.Addr.IsValid() || !cfg.Addr.Is4() || cfg.Addr.IsUnspecified() {
		return nil, fmt.Errorf("%w: Config.Addr must be an IPv4 address", ErrInvalidAddr)
	}
	if cfg.MTU == 0 {
		cfg.MTU = defaultMTU
	}
	if cfg.MTU < 576 || cfg.MTU > 65535 {
		return nil, fmt.Errorf("netstack: MTU %d out of range [576, 65535]", cfg.MTU)
	}
	hostNetwork := cfg.Dialer == nil // no embedder-owned network path: host pings are fine
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	if cfg.UDPIdleTimeout <= 0 {
		cfg.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxInFlightPerPort <= 0 {
		cfg.MaxInFlightPerPort = DefaultMaxInFlightPerPort
	}
	if cfg.MaxTCPFlowsPerPort <= 0 {
		cfg.MaxTCPFlowsPerPort = DefaultMaxTCPFlowsPerPort
	}
	if cfg.MaxUDPFlowsPerPort <= 0 {
		cfg.MaxUDPFlowsPerPort = DefaultMaxUDPFlowsPerPort
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	st := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	s := &Stack{
		cfg:       cfg,
		log:       log,
		st:        st,
		mtu:       cfg.MTU,
		listeners: make(map[io.Closer]struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.pools.init(cfg.MTU)
	s.pinger = cfg.Pinger
	if s.pinger == nil && hostNetwork {
		s.pinger = HostPinger{}
	}
	s.local.Store(&map[netip.Addr]localAddr{cfg.Addr: {all: true}})
	s.link = &linkEndpoint{s: s}
	s.link.mtu = uint32(cfg.MTU)

	if err := s.configure(); err != nil {
		st.Close()
		st.Wait()
		s.cancel()
		return nil, err
	}
	if p, err := newPoller(); err == nil {
		s.poller = p
	} else {
		log.Warn("netstack: no epoll set for idle flows; each TCP flow keeps a reader goroutine", "err", err)
	}
	return s, nil
}

func (s *Stack) configure() error {
	st := s.st
	if err := setTCPOptions(st, ptr(tcpip.TCPTimeWaitTimeoutOption(tcpTimeWait))); err != nil {
		return err
	}
	if err := st.CreateNICWithOptions(nicID, s.link, stack.NICOptions{Name: "underpass", QDisc: &directQDisc{s}}); err != nil {
		return fmt.Errorf("netstack: create NIC: %v", err)
	}
	// Promiscuous: accept packets for any destination (we terminate flows
	// to the whole Internet). Spoofing: reply from those addresses.
	if err := st.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("netstack: promiscuous: %v", err)
	}
	if err := st.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("netstack: spoofing: %v", err)
	}
	if err := s.addNICAddr(s.cfg.Addr); err != nil {
		return err
	}
	st.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	tf := tcp.NewForwarder(st, tcpRcvBufDefault, s.cfg.MaxInFlight, s.handleTCP)
	st.SetTransportProtocolHandler(tcp.ProtocolNumber, tf.HandlePacket)
	uf := udp.NewForwarder(st, s.handleUDP)
	st.SetTransportProtocolHandler(udp.ProtocolNumber, uf.HandlePacket)
	return nil
}

func ptr[T any](v T) *T { return &v }

// setTCPOptions applies the TCP settings the gateway's and the client's
// stacks share, then extra.
//
// Loss detection is classic SACK recovery (RFC 6675) with RACK off.
// gVisor's RACK / tail-loss-probe code (the stack's default) was seen to
// stop a sender for good: after a tail loss probe was SACKed, the sender
// held unacknowledged data with nothing counted outstanding and no timer
// armed, and sent nothing more (captured over CONNECT-IP, where a full QUIC
// datagram queue drops bursts; tunnel's TestClientOverQUICAndTLS stalled in
// about 1 run in 8 with receive-buffer auto-tuning on, 0 in 80 with RACK
// off). Tailscale's netstack turns RACK off for the same kind of reports
// (google/gvisor#6113, tailscale/tailscale#14896).
func setTCPOptions(st *stack.Stack, extra ...tcpip.SettableTransportProtocolOption) error {
	opts := []tcpip.SettableTransportProtocolOption{
		ptr(tcpip.TCPRecovery(0)),
		ptr(tcpip.TCPSACKEnabled(true)), // faster loss recovery on lossy client links
		// Buffers: caps, not reservations (see tcpBufMin..tcpBufMax).
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: tcpBufMin, Default: tcpRcvBufDefault, Max: tcpBufMax},
		&tcpip.TCPSendBufferSizeRangeOption{Min: tcpBufMin, Default: tcpSndBufDefault, Max: tcpBufMax},
		// Receive auto-tuning, so one flow can go fast; it runs only when
		// the reader reports what it copied (epSide.read, gonet).
		ptr(tcpip.TCPModerateReceiveBufferOption(true)),
		ptr(tcpip.CongestionControlOption("cubic")), // cubic holds up better than reno on long fat paths
	}
	for _, o := range append(opts, extra...) {
		if err := st.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			return fmt.Errorf("netstack: tcp option %T: %v", o, err)
		}
	}
	return nil
}

func (s *Stack) addNICAddr(a netip.Addr) error {
	pa := tcpip.ProtocolAddress{AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(a), PrefixLen: a.BitLen()}}
	if a.Is4() {
		pa.Protocol = ipv4.ProtocolNumber
	} else {
		pa.Protocol = ipv6.ProtocolNumber
	}
	if err := s.st.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		if _, dup := err.(*tcpip.ErrDuplicateAddress); !dup {
			return fmt.Errorf("netstack: add address %v: %v", a, err)
		}
	}
	return nil
}

// track registers a goroutine with the stack's WaitGroup unless the stack is
// closing. Callers that get true must call s.wg.Done.
func (s *Stack) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// Close stops the stack: it cancels pending dials, closes every port (which
// aborts their flows), every listener and the gVisor stack, then waits for
// all goroutines. It is idempotent.
func (s *Stack) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	ls := make([]io.Closer, 0, len(s.listeners))
	for l := range s.listeners {
		ls = append(ls, l)
	}
	s.mu.Unlock()

	s.cancel() // pending dials and waits end; forwarder handlers refuse (track fails)
	s.ports.each(func(p *Port) { p.Close() })
	for _, l := range ls {
		l.Close()
	}
	s.st.Close() // aborts remaining endpoints, incl. handshakes in progress
	s.wg.Wait()
	s.st.Wait()
	if s.poller != nil {
		s.poller.close() // every flow has ended: none uses it
	}
	return nil
}

// lookup returns the port owning addr, or nil. Lock-free.
func (s *Stack) lookup(a netip.Addr) *Port { return s.ports.get(a) }

func (s *Stack) isLocal(a netip.Addr) bool {
	_, ok := (*s.local.Load())[a]
	return ok
}

// localAddr is what the stack owns at one of its addresses.
type localAddr struct {
	all   bool         // the stack's own address: every port, and echo
	ports []listenPort // a listener's address: only its listeners' ports
}

// listenPort is one listener's transport protocol and port.
type listenPort struct {
	proto uint8 // protoTCP or protoUDP
	port  uint16
}

// consumes says whether the stack itself takes the client's packet ip
// (anything at its own address, a listener's port at a listener's
// address) rather than forwarding it as a router would.
func (s *Stack) consumes(ip *ipInfo) bool {
	la, ok := (*s.local.Load())[ip.dst]
	if !ok || la.all {
		return ok
	}
	if len(ip.l4) < 4 { // both TCP and UDP put the destination port at bytes 2-3
		return false
	}
	return slices.Contains(la.ports, listenPort{ip.tproto, binary.BigEndian.Uint16(ip.l4[2:4])})
}

// allowed says whether a client may send to dst: the stack's own and
// listeners' addresses, or a destination the forwarding policy routes.
func (s *Stack) allowed(dst netip.Addr) bool { return s.isLocal(dst) || s.routable(dst) }

// routable applies the forwarding policy to a destination beyond the
// stack: what a packet to dst may be forwarded to the host network for.
func (s *Stack) routable(dst netip.Addr) bool {
	if dst.IsUnspecified() || dst.IsMulticast() || dst == broadcast4 || dst.Is4In6() {
		return false
	}
	if s.lookup(dst) != nil { // no session-to-session traffic
		return false
	}
	return s.cfg.Allow == nil || s.cfg.Allow(dst)
}

var broadcast4 = netip.AddrFrom4([4]byte{255, 255, 255, 255})

func tcpAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

func netipAddr(a tcpip.Address) netip.Addr {
	if a.Len() == 4 {
		return netip.AddrFrom4(a.As4())
	}
	return netip.AddrFrom16(a.As16())
}

func protoOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}
