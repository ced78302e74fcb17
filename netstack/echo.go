package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
)

const (
	// maxEchoInFlight bounds forwarded pings waiting for a reply: each
	// holds a socket and a goroutine for up to echoTimeout, so a client
	// flooding pings costs at most this much.
	maxEchoInFlight = 256
	// maxEchoPerPort is one client's share of those: ping and traceroute
	// keep a handful in flight, and a flooding client leaves the rest
	// (Stats.EchoCapped counts its excess).
	maxEchoPerPort = maxEchoInFlight / 8
	// echoTimeout is how long a forwarded ping waits for its reply; ping's
	// own default wait is a few seconds, a later reply helps nobody.
	echoTimeout = 3 * time.Second
	// echoRetry is how long to wait before trying host ping sockets again
	// after the host refused to open one (ping_group_range, no CAP_NET_RAW).
	echoRetry      = time.Minute
	icmp4Echo      = 8
	icmp4EchoReply = 0
	icmp6Echo      = 128 // RFC 4443 4.1
	icmp6EchoReply = 129 // RFC 4443 4.2
)

// echoState is the ICMP echo forwarder's bookkeeping.
type echoState struct {
	inFlight atomic.Int32
	// disabledAt is the unix nanos of the last failure to open a socket,
	// per family ([0] IPv4, [1] IPv6): a host without IPv6 (or a Pinger
	// that only speaks IPv4) must not stop IPv4 pings.
	disabledAt [2]atomic.Int64
}

// openPing opens a host socket for ICMP echo: an unprivileged ping socket
// (net.ipv4.ping_group_range, the rootless default in Podman), else a raw
// socket (root or CAP_NET_RAW). raw tells which: a raw socket sees every
// ICMP message and keeps our identifier; a ping socket sees only its own
// replies and rewrites the identifier.
// For IPv6 the same sysctl governs ping sockets, and the kernel fills in
// the ICMPv6 checksum on both kinds (RFC 3542 3.1).
func openPing(v6 bool) (c *icmp.PacketConn, raw bool, err error) {
	if v6 {
		if c, err = icmp.ListenPacket("udp6", "::"); err == nil {
			return c, false, nil
		}
		c, err = icmp.ListenPacket("ip6:ipv6-icmp", "::")
		return c, true, err
	}
	if c, err = icmp.ListenPacket("udp4", "0.0.0.0"); err == nil {
		return c, false, nil
	}
	c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	return c, true, err
}

// Pinger forwards ICMP echo requests for clients: it sends an echo with
// the given identifier, sequence number and payload to dst (IPv4, or IPv6
// for a dual-stack client's ICMPv6 echo) and returns the reply's payload.
// Ping must honour ctx. An error other than a timeout stops forwarding of
// that address family for a minute.
type Pinger interface {
	Ping(ctx context.Context, dst netip.Addr, id, seq uint16, payload []byte) ([]byte, error)
}

// HostPinger pings from the gateway host's own sockets: an unprivileged
// ping socket where the host allows one (net.ipv4.ping_group_range, the
// rootless Podman default), else a raw socket (root or CAP_NET_RAW).
type HostPinger struct{}

// errEchoTimeout is returned when no matching reply came in time.
var errEchoTimeout = errors.New("netstack: no echo reply")

// Ping implements Pinger.
func (HostPinger) Ping(ctx context.Context, dst netip.Addr, id, seq uint16, payload []byte) ([]byte, error) {
	v6 := dst.Is6()
	c, raw, err := openPing(v6)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) }) // unblock the read on cancel
	defer stop()
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	msg := make([]byte, 8+len(payload))
	msg[0] = icmp4Echo
	want := byte(icmp4EchoReply)
	if v6 {
		msg[0], want = icmp6Echo, icmp6EchoReply
	}
	binary.BigEndian.PutUint16(msg[4:6], id)
	binary.BigEndian.PutUint16(msg[6:8], seq)
	copy(msg[8:], payload)
	if !v6 { // ICMPv6's checksum covers a pseudo-header: the kernel computes it
		binary.BigEndian.PutUint16(msg[2:4], ^fold(sum(msg, 0))) // the kernel redoes it for ping sockets
	}
	var to net.Addr = &net.UDPAddr{IP: dst.AsSlice()}
	if raw {
		to = &net.IPAddr{IP: dst.AsSlice()}
	}
	if _, err := c.WriteTo(msg, to); err != nil {
		return nil, err
	}
	buf := make([]byte, 64<<10) // the largest ICMP message an IPv4 packet can carry
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, errEchoTimeout
			}
			return nil, err
		}
		r := buf[:n]
		if n < 8 || r[0] != want || binary.BigEndian.Uint16(r[6:8]) != seq {
			continue
		}
		if raw && (binary.BigEndian.Uint16(r[4:6]) != id || addrOf(from) != dst) {
			continue // a raw socket sees everybody's replies
		}
		return append([]byte(nil), r[8:]...), nil
	}
}

// forwardEcho sends a client's echo request (ICMP or ICMPv6) to its destination through
// the Pinger and relays the reply, as the TCP and UDP forwarders
// re-originate flows. It reports false when it cannot (no Pinger, the host
// refused to open ICMP sockets recently, or too many pings are in flight);
// the caller then refuses the ping.
func (s *Stack) forwardEcho(p *Port, ip *ipInfo) bool {
	if s.pinger == nil || len(ip.l4) < 8 {
		return false
	}
	fam := 0
	if ip.v6 {
		fam = 1
	}
	if t := s.echo.disabledAt[fam].Load(); t != 0 && time.Since(time.Unix(0, t)) < echoRetry {
		return false
	}
	if !reserve(&p.echoes, maxEchoPerPort, &s.stats.echoCapped) {
		return false
	}
	if s.echo.inFlight.Add(1) > maxEchoInFlight {
		s.echo.inFlight.Add(-1)
		p.echoes.Add(-1)
		return false
	}
	if !s.track() {
		s.echo.inFlight.Add(-1)
		p.echoes.Add(-1)
		return false
	}
	id := binary.BigEndian.Uint16(ip.l4[4:6])
	seq := binary.BigEndian.Uint16(ip.l4[6:8])
	payload := append([]byte(nil), ip.l4[8:]...) // the caller's buffer is reused
	src, dst := ip.src, ip.dst
	go func() {
		defer s.wg.Done()
		defer s.echo.inFlight.Add(-1)
		defer p.echoes.Add(-1)
		ctx, cancel := context.WithTimeout(s.ctx, echoTimeout)
		defer cancel()
		reply, err := s.pinger.Ping(ctx, dst, id, seq, payload)
		switch {
		case err == nil:
			s.sendEchoReply(p, dst, src, id, seq, reply)
		case !errors.Is(err, errEchoTimeout) && ctx.Err() == nil:
			s.echo.disabledAt[fam].Store(time.Now().UnixNano())
			s.log.Debug("icmp echo forwarding unavailable", "err", err)
		}
	}()
	return true
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.IPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// sendEchoReply queues an echo reply (ICMPv6 if src is IPv6) from src to
// the client dst. A reply bigger than the port's MTU (a big ping) is sent
// in fragments, as the host that answers it would (the stack is its
// source on the tunnel leg: RFC 791 3.2, RFC 8200 4.5).
func (s *Stack) sendEchoReply(p *Port, src, dst netip.Addr, id, seq uint16, payload []byte) {
	hl, proto, typ := 20, byte(protoICMP), byte(icmp4EchoReply)
	if src.Is6() {
		hl, proto, typ = 40, protoICMPv6, icmp6EchoReply
	}
	n := hl + 8 + len(payload)
	if n-hl > 65535 || (!src.Is6() && n > 65535) { // the length fields' limits
		return
	}
	fill := func(b []byte) {
		writeIPHeader(b[:hl], src, dst, proto, 8+len(payload))
		m := b[hl:]
		m[0], m[1] = typ, 0
		clear(m[2:4])
		binary.BigEndian.PutUint16(m[4:6], id)
		binary.BigEndian.PutUint16(m[6:8], seq)
		copy(m[8:], payload)
		if proto == protoICMPv6 {
			binary.BigEndian.PutUint16(m[2:4], l4Checksum(src, dst, protoICMPv6, m))
		} else {
			binary.BigEndian.PutUint16(m[2:4], ^fold(sum(m, 0)))
		}
	}
	if mtu := p.linkMTU(); n > mtu {
		b := make([]byte, n) // rare (a ping over the MTU): fragmented from here
		fill(b)
		if proto == protoICMPv6 {
			s.fragment6(p, b, mtu)
		} else {
			s.fragment4(p, b, mtu)
		}
		return
	}
	pk := s.pools.get(p.headroom + n)
	if pk == nil {
		return
	}
	fill(pk.buf[p.headroom : p.headroom+n])
	if !p.send(pk, false) {
		s.stats.rejectsDropped.Add(1)
	}
}
