package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/underpass/underpass/internal/core/cstp"
	"github.com/underpass/underpass/internal/testinfra/testenv"
)

func TestTCPThroughTunnel(t *testing.T) {
	_, addr := startGateway(t, nil)
	echo := testenv.EchoServer(t)
	tc := dial(t, addr, "alice", "secret")
	tc.startStack(16000)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := tc.dialTCP(ctx, testenv.LoopCorp(echo))
	if err != nil {
		t.Fatalf("dial echo through tunnel: %v", err)
	}
	defer c.Close()
	msg := make([]byte, 1<<20) // 1 MiB: many full-size packets each way
	_, _ = rand.Read(msg)
	errc := make(chan error, 1)
	go func() { _, err := c.Write(msg); errc <- err }()
	got := make([]byte, len(msg))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo mismatch")
	}
}

// TestRefusedDestinationsFailFast: a closed port, an excluded address and an
// address outside the include routes all fail within a second, not after a
// timeout.
func TestRefusedDestinationsFailFast(t *testing.T) {
	echo := testenv.EchoServer(t)
	_, addr := startGateway(t, func(c *Config) { c.HostAddrs = []netip.Addr{testenv.LoopCorp(echo).Addr()} })
	tc := dial(t, addr, "alice", "secret")
	tc.startStack(16000)

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAP := netip.MustParseAddrPort(closed.Addr().String())
	closed.Close()
	for _, dst := range []netip.AddrPort{
		testenv.LoopCorp(closedAP),                 // refused upstream
		netip.MustParseAddrPort("198.18.200.1:80"), // in the exclude route
		netip.MustParseAddrPort("198.51.100.7:80"), // outside the include routes
		testenv.LoopCorp(echo),                     // the gateway host itself (HostAddrs), under a broad include
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		c, err := tc.dialTCP(ctx, dst)
		cancel()
		if err == nil {
			c.Close()
			t.Errorf("%v: connected, want refusal", dst)
			continue
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%v: refusal took %v (err %v)", dst, d, err)
		}
	}
}

func icmpEcho(src, dst netip.Addr, id, seq uint16) []byte {
	const payload = "underpass ping"
	b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(src.As4()), DstAddr: tcpip.AddrFrom4(dst.As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	ic := header.ICMPv4(b[header.IPv4MinimumSize:])
	ic.SetType(header.ICMPv4Echo)
	ic.SetIdent(id)
	ic.SetSequence(seq)
	copy(ic.Payload(), payload)
	ic.SetChecksum(0)
	ic.SetChecksum(^checksum(ic))
	return b
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// TestPingGatewayAndIsolation: ICMP echo to the gateway's tunnel address is
// answered; a packet to another session, or with a spoofed source, is not
// delivered.
func TestPingGatewayAndIsolation(t *testing.T) {
	g, addr := startGateway(t, nil)
	a := dial(t, addr, "alice", "secret")
	b := dial(t, addr, "bob", "hunter2")

	if err := a.writeFrame(cstp.Data, icmpEcho(a.tunAddr, g.Addr(), 7, 1)); err != nil {
		t.Fatal(err)
	}
	typ, p, err := a.readFrame(5 * time.Second)
	if err != nil || typ != cstp.Data {
		t.Fatalf("no echo reply: %v %v", typ, err)
	}
	ip := header.IPv4(p)
	if ip.TransportProtocol() != header.ICMPv4ProtocolNumber || header.ICMPv4(ip.Payload()).Type() != header.ICMPv4EchoReply {
		t.Fatalf("not an echo reply: % x", p)
	}

	// a -> b, and a spoofing b's address towards the gateway: b must see
	// nothing, and a gets no echo reply for the spoofed packet.
	_ = a.writeFrame(cstp.Data, icmpEcho(a.tunAddr, b.tunAddr, 7, 2))
	_ = a.writeFrame(cstp.Data, icmpEcho(b.tunAddr, g.Addr(), 7, 3))
	if typ, p, err := b.readFrame(time.Second); err == nil && typ == cstp.Data {
		t.Fatalf("session b received a packet: % x", p)
	}
	for {
		typ, p, err := a.readFrame(time.Second)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			t.Fatal(err)
		}
		if typ != cstp.Data {
			continue
		}
		ip := header.IPv4(p)
		if ip.TransportProtocol() == header.ICMPv4ProtocolNumber {
			ic := header.ICMPv4(ip.Payload())
			if ic.Type() == header.ICMPv4EchoReply {
				t.Fatalf("echo reply to a blocked or spoofed packet (seq %d)", ic.Sequence())
			}
		}
	}
}

// BenchmarkTunnelTCP measures the Go-side data path end to end: a client
// TCP stack -> CSTP over TLS (loopback) -> gateway stack -> host socket -> a
// sink on loopback. b.SetBytes makes -bench report MB/s.
func BenchmarkTunnelTCP(b *testing.B) {
	for _, dir := range []string{"upload", "download"} {
		b.Run(dir, func(b *testing.B) {
			g, addr := startGateway(b, nil)
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			chunk := make([]byte, 256<<10)
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				if dir == "upload" {
					_, _ = io.Copy(io.Discard, c)
					return
				}
				for {
					if _, err := c.Write(chunk); err != nil {
						return
					}
				}
			}()
			tc := dial(b, addr, "alice", "secret")
			tc.startStack(16000)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := tc.dialTCP(ctx, testenv.LoopCorp(netip.MustParseAddrPort(l.Addr().String())))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.SetBytes(int64(len(chunk)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if dir == "upload" {
					_, err = c.Write(chunk)
				} else {
					_, err = io.ReadFull(c, chunk)
				}
				if err != nil && !errors.Is(err, syscall.EPIPE) {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			st := g.stack.Stats()
			b.ReportMetric(float64(st.DropBlocked), "stall-drops")
			b.ReportMetric(float64(st.WriteBlocked), "blocked-writes")
		})
	}
}
