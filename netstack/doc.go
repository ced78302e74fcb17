// Package netstack is the gateway's data plane: one shared gVisor userspace
// TCP/IP stack that terminates every client's IP packets and re-originates
// each TCP and UDP flow with ordinary host sockets, so the gateway "NATs" its
// clients without a TUN device or any privilege.
//
// A client session attaches its leased address with [Stack.Attach] and gets a
// [Port]: [Port.Inject] feeds the client's IP packets into the stack after
// checking the source (anti-spoofing) and the route policy ([Config.Allow]);
// [Port.Packets] yields the packets the stack sends back, in pooled buffers
// that already leave room for the tunnel's frame header. [Port.SetMTU] gives
// a port its transport's MTU. A dual-stack session attaches its IPv4 and
// IPv6 addresses to one port ([Stack.AttachAddrs]): either may be the
// source of its packets, flows of both families are re-originated with
// host sockets of the destination's family, and ICMPv6 echo is forwarded
// like ICMP echo.
//
// Flows: a client TCP SYN is answered only after the upstream connection has
// been dialed, so a refused destination becomes a prompt RST and an
// unreachable one an ICMP unreachable, instead of a connection that opens and
// then dies. UDP gets one connected host socket per 4-tuple, closed after an
// idle timeout. ICMP echo to the gateway's own address is answered by the
// stack, echo to other allowed hosts is forwarded ([Config.Pinger]); a
// fragmented echo request is reassembled by the stack first and forwarded
// whole, and a reply over the port's MTU goes back in fragments.
// [Stack.ListenTCP] and [Stack.ListenUDP] host in-tunnel services (DNS proxy,
// a web page) that take precedence over forwarding.
//
// # Router parity
//
// Towards its clients the stack behaves as a Linux router in front of the
// corporate network would; tunnel's TestRouterParity (IPv4) and
// TestRouterParityIPv6 run the same probes through a kernel router and
// through Underpass (openconnect over TLS and DTLS, tunnel.Client over TLS
// and QUIC) and compare what the client and the server see. The same
// outcome, over both families, for: resets and half-closes in both
// directions (a client's RST reaches the server as a RST), byte-exact
// transfers, UDP datagrams from 0 to 65507 bytes both ways (fragmented and
// reassembled as needed, also to a port's smaller MTU), ICMP echo up to 65000
// bytes (the reply as big as the request), ICMP time exceeded for TTL 1
// (traceroute's first hop), host unreachable (ICMPv6: address unreachable)
// for a destination that does not answer, a RST for a closed port, and UDP
// mappings that survive 90 s of silence and not 150 s. A client's fragments
// (IPv4, and IPv6 with a Fragment header, first or after Hop-by-Hop and
// Destination Options headers) are reassembled before anything looks at
// the packet, as a Linux router's conntrack does (reassembly.go), so a
// fragmented ping, SYN or datagram is handled as the whole it is.
//
// Deliberate differences from a kernel router:
//   - Every flow is re-originated from the gateway host's own sockets: the
//     corporate side sees the gateway's address (as behind MASQUERADE), and
//     the gateway is the only hop a client's traceroute shows. A client
//     packet's TTL and IP options are not carried to the corporate side, and
//     DSCP and ECN are cleared both ways: both legs send with TOS 0 (gVisor's
//     endpoints and the host sockets alike), where a router would keep them
//     (the parity suite's "DSCP and ECN" probe shows both). The gateway is
//     the corporate network's boundary, where a DiffServ domain re-marks
//     what enters it (RFC 2475's boundary nodes), and each leg's TCP does
//     its own congestion control.
//   - ICMP errors come from the gateway's tunnel address, not from a router
//     interface on the client's path. ICMPv6 errors come from the
//     destination the client addressed: the stack has no IPv6 address of
//     its own.
//   - A UDP mapping lives for its idle timeout (Config.UDPIdleTimeout, 2
//     minutes, RFC 4787 REQ-5) however many packets it has seen; Linux
//     conntrack drops a mapping that saw only one exchange after 30 s.
//   - A TCP connection to a destination that does not answer fails after
//     Config.DialTimeout with ICMP host unreachable, where a router on the
//     destination's subnet answers after its ARP timeout (about 3 s on Linux)
//     and one further away stays silent.
//   - A TCP SYN is answered (SYN-ACK) only once the upstream connection is up,
//     so the client's handshake takes the upstream round trip too.
//   - A ping to a host that does not answer gets no answer at all: the
//     gateway host's ping sockets relay echo replies only, where a router
//     on the host's subnet reports it unreachable after neighbour
//     discovery (ARP) gives up.
//   - An IPv6 fragment whose Fragment header follows a Routing header with
//     segments left is not reassembled by the stack but left to gVisor:
//     its destination is not its final one. Linux's conntrack walks past
//     any Routing header.
//
// Scale: per-flow memory is kept small so that tens of thousands of idle
// flows fit a small server: TCP buffers are caps that auto-tune, relay
// buffers come from a pool only while data moves, and an idle flow parks no
// goroutine (gVisor's waiter callbacks and one epoll set per stack start a
// goroutine per burst of data; about 7 KB per idle TCP flow and 3 KB per
// UDP flow, BENCHMARKS.md). The packet paths avoid per-packet allocations
// and locks.
package netstack
