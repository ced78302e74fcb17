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
)

// echoState is the ICMP echo forwarder's bookkeeping.
type echoState struct {
	inFlight   atomic.Int32
	disabledAt atomic.Int64 // unix nanos of the last failure to open a socket
}

// openPing opens a host socket for ICMP echo: an unprivileged ping socket
// (net.ipv4.ping_group_range, the rootless default in Podman), else a raw
// socket (root or CAP_NET_RAW). raw tells which: a raw socket sees every
// ICMP message and keeps our identifier; a ping socket sees only its own
// replies and rewrites the identifier.
func openPing() (c *icmp.PacketConn, raw bool, err error) {
	if c, err = icmp.ListenPacket("udp4", "0.0.0.0"); err == nil {
		return c, false, nil
	}
	c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	return c, true, err
}

// Pinger forwards ICMP echo requests for clients: it sends an echo with
// the given identifier, sequence number and payload to dst and returns the
// reply's payload. Ping must honour ctx.
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
	c, raw, err := openPing()
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
	binary.BigEndian.PutUint16(msg[4:6], id)
	binary.BigEndian.PutUint16(msg[6:8], seq)
	copy(msg[8:], payload)
	binary.BigEndian.PutUint16(msg[2:4], ^fold(sum(msg, 0))) // the kernel redoes it for ping sockets
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
		if n < 8 || r[0] != icmp4EchoReply || binary.BigEndian.Uint16(r[6:8]) != seq {
			continue
		}
		if raw && (binary.BigEndian.Uint16(r[4:6]) != id || addrOf(from) != dst) {
			continue // a raw socket sees everybody's replies
		}
		return append([]byte(nil), r[8:]...), nil
	}
}

// forwardEcho sends a client's IPv4 echo request to its destination through
// the Pinger and relays the reply, as the TCP and UDP forwarders
// re-originate flows. It reports false when it cannot (no Pinger, the host
// refused to open ICMP sockets recently, or too many pings are in flight);
// the caller then refuses the ping.
func (s *Stack) forwardEcho(p *Port, ip *ipInfo) bool {
	if s.pinger == nil || ip.v6 || len(ip.l4) < 8 {
		return false
	}
	if t := s.echo.disabledAt.Load(); t != 0 && time.Since(time.Unix(0, t)) < echoRetry {
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
			s.echo.disabledAt.Store(time.Now().UnixNano())
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

// sendEchoReply queues an echo reply from src to the client dst.
func (s *Stack) sendEchoReply(p *Port, src, dst netip.Addr, id, seq uint16, payload []byte) {
	n := 20 + 8 + len(payload)
	if mtu := p.linkMTU(); n > mtu {
		// A big ping (ping -s 65000): fragmented to the port's MTU, as
		// the replying host's kernel would fragment it. Rare, so the
		// whole reply is built in a buffer of its own first.
		b := make([]byte, n)
		writeEchoReply(b, src, dst, id, seq, payload)
		s.fragment4(p, b, mtu)
		return
	}
	pk := s.pools.get(p.headroom + n)
	if pk == nil {
		return
	}
	writeEchoReply(pk.buf[p.headroom:p.headroom+n], src, dst, id, seq, payload)
	if !p.send(pk, false) {
		s.stats.rejectsDropped.Add(1)
	}
}

// writeEchoReply writes an IPv4 echo reply carrying payload into b, which
// is exactly its size (28 bytes more than payload).
func writeEchoReply(b []byte, src, dst netip.Addr, id, seq uint16, payload []byte) {
	writeIPHeader(b[:20], src, dst, protoICMP, 8+len(payload))
	m := b[20:]
	m[0], m[1] = icmp4EchoReply, 0
	clear(m[2:4])
	binary.BigEndian.PutUint16(m[4:6], id)
	binary.BigEndian.PutUint16(m[6:8], seq)
	copy(m[8:], payload)
	binary.BigEndian.PutUint16(m[2:4], ^fold(sum(m, 0)))
}
