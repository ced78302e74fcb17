// Package netstack is the gateway's data plane: one shared gVisor userspace
// TCP/IP stack that terminates every client's IP packets and re-originates
// each TCP and UDP flow with ordinary host sockets, so the gateway "NATs" its
// clients without a TUN device or any privilege.
//
// A client session attaches its leased address with [Stack.Attach] and gets a
// [Port]: [Port.Inject] feeds the client's IP packets into the stack after
// checking the source (anti-spoofing) and the route policy ([Config.Allow]);
// [Port.Packets] yields the packets the stack sends back, in pooled buffers
// that already leave room for the tunnel's frame header.
//
// Flows: a client TCP SYN is answered only after the upstream connection has
// been dialed, so a refused or unreachable destination becomes a prompt RST
// instead of a connection that opens and then dies. UDP gets one connected
// host socket per 4-tuple, closed after an idle timeout. ICMP echo to the
// gateway's own address is answered by the stack. [Stack.ListenTCP] and
// [Stack.ListenUDP] host in-tunnel services (DNS proxy, a web page) that take
// precedence over forwarding.
//
// Scale: per-flow memory is kept small (TCP buffers are caps that auto-tune,
// relay buffers come from a pool only while data moves) so that tens of
// thousands of idle flows fit a small server; the packet paths avoid
// per-packet allocations and locks.
package netstack
