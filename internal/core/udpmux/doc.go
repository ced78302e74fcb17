// Package udpmux serves QUIC and AnyConnect DTLS 1.2 on one UDP port.
//
// # Demultiplexing rule
//
// RFC 9443 ("Multiplexing Scheme Updates for QUIC", §3 and its
// demultiplexing figure) extends the RFC 7983 first-byte scheme so that a
// receiver can tell QUIC from the other protocols that share a port by the
// first byte of the UDP payload alone:
//
//   - DTLS records (RFC 6347 §4.1, RFC 9147 §4) start with the content
//     type: 20 change_cipher_spec, 21 alert, 22 handshake,
//     23 application_data, 24 heartbeat, 25 tls12_cid. All of them are
//     below 64, so bit 0x40 of the first byte is clear.
//   - Every QUIC v1 and v2 packet a server can receive has the "fixed bit"
//     0x40 set (RFC 9000 §17.2 and §17.3.1; RFC 9369 §3). RFC 9000 says a
//     packet with the bit clear is not a valid QUIC packet and MUST be
//     discarded. Only a peer that negotiated grease_quic_bit (RFC 9287)
//     may clear it, and quic-go neither sends nor accepts that transport
//     parameter, so our server never asks for it.
//
// So the rule is: first byte & 0x40 == 0 means DTLS, anything else
// (including an empty datagram, which carries no first byte) means QUIC.
// [IsDTLS] is the one Go definition of this rule. An empty datagram goes to
// the QUIC side because quic-go discards it cheaply, and because the kernel
// program below also sends it there (an out-of-bounds load makes a classic
// BPF program return 0). Garbage with bit 0x40 clear (STUN, RTP, scans)
// goes to the DTLS side, whose record parser rejects it.
//
// # Why not quic-go's Transport.ReadNonQUICPacket
//
// quic-go can hand non-QUIC datagrams to the application through
// Transport.ReadNonQUICPacket, but it queues at most 32 of them and
// silently drops the rest; with 64 DTLS datagrams in flight we measured 21%
// loss. DTLS carries the VPN data plane, so that is not acceptable.
//
// # Linux fast path (the kernel steers)
//
// On Linux, [Listen] creates two UDP sockets bound to the same address with
// SO_REUSEPORT, in this order:
//
//	index 0: the QUIC socket (a plain *net.UDPConn, so quic-go keeps its
//	         GSO, ECN and batched-receive fast paths)
//	index 1: the DTLS socket
//
// The index of a socket inside a reuseport group is the order in which it
// joined the group, which for UDP is the bind order. A classic BPF program
// attached to the group with SO_ATTACH_REUSEPORT_CBPF (socket(7)) returns
// the index of the socket that receives each datagram:
//
//	ldb [0]              ; A = first payload byte (aborts -> 0 if empty)
//	jset #0x40, ret0     ; fixed bit set -> QUIC
//	ret #1               ; DTLS socket
//	ret0: ret #0         ; QUIC socket
//
// For UDP the kernel runs the program with the packet data starting at the
// UDP payload (it pulls the 8-byte UDP header before running the filter);
// the tests send every first-byte value 0..255 and an empty datagram
// through the kernel and check each lands where [IsDTLS] says. Attaching
// the program needs no privilege, so this works for an unprivileged user.
// No user-space queue sits in the path: each socket has its own kernel
// receive buffer, so the only drops are the ones a plain socket would have.
// quic-go grows the QUIC socket's buffer itself; the DTLS server should call
// SetReadBuffer on [Mux.DTLS], whose buffer otherwise stays at the kernel
// default (net.core.rmem_default, often 208 KiB).
//
// # Reuseport group hijacking
//
// Linux only lets a socket join a reuseport group if it was created by the
// same effective user ID as the group's sockets, so other users cannot join.
// A process running as the same user can:
//
//   - Join after us. It gets index 2 or higher and our program only ever
//     returns 0 or 1, so it receives nothing -- but any group member may
//     replace the group's program (SO_ATTACH_REUSEPORT_CBPF again) or remove
//     it (SO_DETACH_REUSEPORT_BPF), and then it can steal traffic.
//     TestKernelIntruder shows both the harmless join and the program
//     replacement. Nothing cheap detects this after the fact; run the
//     gateway under its own user ID.
//   - Be there first. If a same-user SO_REUSEPORT socket already holds the
//     address, our sockets would silently join its group at indexes 1 and 2
//     and be misrouted. For a fixed port [Listen] therefore first binds the
//     address once without SO_REUSEPORT: that bind fails with EADDRINUSE if
//     anyone holds it, and Listen returns that error. The probe is closed
//     before the real binds, so a same-user process can still race into the
//     gap of a few microseconds; port 0 needs no probe because the kernel
//     picks a port nobody holds.
//
// # Portable fallback
//
// On other systems, or when the kernel refuses SO_REUSEPORT or the program
// (for example under gVisor), or when [Config.ForceFallback] is set, the Mux
// binds one socket and a reader goroutine dispatches each datagram, using
// [IsDTLS], into one of two net.PacketConn views. Each view has a bounded
// queue of 1024 datagrams; when a queue is full the datagram is dropped and
// counted in [Mux.Stats]. Writes on either view go straight to the socket.
package udpmux
