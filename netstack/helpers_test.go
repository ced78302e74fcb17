package netstack

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"go.uber.org/goleak"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

func TestMain(m *testing.M) {
	if os.Getenv(echoHelperEnv) != "" {
		serveFlowMemEcho() // TestFlowMemory's child process; exits on its own
		return
	}
	goleak.VerifyTestMain(m)
}

var (
	gwAddr  = netip.MustParseAddr("10.99.0.1")
	cliAddr = netip.MustParseAddr("10.99.0.2")
	cli2    = netip.MustParseAddr("10.99.0.3")
	// far is a "remote" destination; loopDialer maps 198.18.0.0/15 to
	// 127.0.0.1 so tests only ever open loopback sockets.
	far = netip.MustParseAddr("198.18.0.1")
)

const testHeadroom = 8

// loopDialer rewrites every destination to 127.0.0.1 (same port).
type loopDialer struct{ d net.Dialer }

func (l *loopDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	_, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	return l.d.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
}

// wrapDialer is loopDialer behind a connection type the stack does not
// know, as a custom Dialer's (a proxy's, a namespace's) may be: it can
// half-close and reset, but offers no raw descriptor to poll.
type wrapDialer struct{ loopDialer }

type (
	wrappedTCP struct{ *net.TCPConn }
	wrappedUDP struct{ *net.UDPConn }
)

func (w wrapDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	c, err := w.loopDialer.DialContext(ctx, network, address)
	switch c := c.(type) {
	case *net.TCPConn:
		return wrappedTCP{c}, nil
	case *net.UDPConn:
		return wrappedUDP{c}, nil
	}
	return c, err
}

// eachDialer runs fn for a host socket the stack's poller watches (an idle
// flow has no reader goroutine) and for a custom Dialer's connection
// without a raw descriptor (a reader waits in Read).
func eachDialer(t *testing.T, fn func(*testing.T, Dialer)) {
	t.Run("watched", func(t *testing.T) { fn(t, &loopDialer{}) })
	t.Run("wrapped", func(t *testing.T) { fn(t, wrapDialer{}) })
}

// hangDialer never connects; it waits for ctx.
type hangDialer struct{}

func (hangDialer) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func newGW(t testing.TB, mod func(*Config)) *Stack {
	t.Helper()
	cfg := Config{Addr: gwAddr, Dialer: &loopDialer{}, DialTimeout: 2 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// client is a second gVisor stack wired to a Port, standing in for a VPN
// client's kernel.
type client struct {
	st   *stack.Stack
	port *Port
	ep   *channel.Endpoint
	wg   sync.WaitGroup
	stop context.CancelFunc
	// largest is the size of the largest IP packet the gateway sent.
	largest atomic.Int64
	// drop, when set, decides which gateway -> client packets (IP bytes)
	// are lost on the way, as a lossy client link would lose them.
	drop atomic.Pointer[func([]byte) bool]
	// split, when set, cuts each client -> gateway IPv4 packet into the
	// fragments it returns, as a router with a small MTU on the client's
	// path would.
	split atomic.Pointer[func([]byte) [][]byte]
}

func (c *client) maxSize() int { return int(c.largest.Load()) }

func newClient(t testing.TB, gw *Stack, addr netip.Addr, queueLen int) *client {
	t.Helper()
	return newClientAddrs(t, gw, []netip.Addr{addr}, queueLen)
}

// newClientAddrs is newClient for a port with several addresses (a
// dual-stack session: AttachAddrs).
func newClientAddrs(t testing.TB, gw *Stack, addrs []netip.Addr, queueLen int) *client {
	t.Helper()
	port, err := gw.AttachAddrs(addrs, testHeadroom, queueLen)
	if err != nil {
		t.Fatal(err)
	}
	st := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	sack := tcpip.TCPSACKEnabled(true)
	st.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	ep := channel.New(1024, uint32(gw.mtu), "")
	if err := st.CreateNIC(1, ep); err != nil {
		t.Fatal(err)
	}
	for _, addr := range addrs {
		st.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: protoOf(addr),
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpAddr(addr), PrefixLen: addr.BitLen()}}, stack.AddressProperties{})
	}
	st.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}, {Destination: header.IPv6EmptySubnet, NIC: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	c := &client{st: st, port: port, ep: ep, stop: cancel}
	c.wg.Add(2)
	go func() { // client -> gateway, through a Batch like the tunnel's readers
		defer c.wg.Done()
		b := gw.NewBatch()
		for {
			pkt := ep.Read()
			if pkt == nil {
				b.Flush()
				if pkt = ep.ReadContext(ctx); pkt == nil {
					return
				}
			}
			v := pkt.ToView()
			if sp := c.split.Load(); sp != nil {
				for _, f := range (*sp)(v.AsSlice()) {
					port.InjectBatch(b, f)
				}
			} else {
				port.InjectBatch(b, v.AsSlice())
			}
			v.Release()
			pkt.DecRef()
		}
	}()
	go func() { // gateway -> client
		defer c.wg.Done()
		for pk := range port.Packets() {
			f := pk.Frame()[testHeadroom:]
			if n := int64(len(f)); n > c.largest.Load() {
				c.largest.Store(n)
			}
			if d := c.drop.Load(); d != nil && (*d)(f) {
				pk.Release()
				continue
			}
			proto := ipv4.ProtocolNumber
			if f[0]>>4 == 6 {
				proto = ipv6.ProtocolNumber
			}
			pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
			ep.InjectInbound(proto, pb)
			pb.DecRef()
			pk.Release()
		}
	}()
	t.Cleanup(c.close)
	return c
}

// newClientStack wires a ClientStack (tunnel.Client's stack) to a port of
// gw, both ways; with addr6, a dual-stack one.
func newClientStack(t testing.TB, gw *Stack, addr netip.Addr, addr6 ...netip.Addr) *ClientStack {
	t.Helper()
	port, err := gw.AttachAddrs(append([]netip.Addr{addr}, addr6...), testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg := ClientConfig{Addr: addr, MTU: gw.mtu, Headroom: testHeadroom}
	if len(addr6) > 0 {
		cfg.Addr6 = addr6[0]
	}
	cs, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for pk := range cs.Packets() {
			port.Inject(pk.Frame()[testHeadroom:])
			pk.Release()
		}
	}()
	go func() {
		defer wg.Done()
		for pk := range port.Packets() {
			cs.Inject(pk.Frame()[testHeadroom:])
			pk.Release()
		}
	}()
	t.Cleanup(func() {
		cs.Close()
		port.Close()
		wg.Wait()
	})
	return cs
}

func (c *client) close() {
	c.port.Close()
	c.stop()
	c.wg.Wait()
	c.st.Close()
	c.ep.Close()
	c.st.Wait()
}

func (c *client) dialTCP(ctx context.Context, dst netip.AddrPort) (*gonet.TCPConn, error) {
	return gonet.DialContextTCP(ctx, c.st, tcpip.FullAddress{NIC: 1, Addr: tcpAddr(dst.Addr()), Port: dst.Port()}, protoOf(dst.Addr()))
}

func (c *client) dialUDP(dst netip.AddrPort) (*gonet.UDPConn, error) {
	return gonet.DialUDP(c.st, nil, &tcpip.FullAddress{NIC: 1, Addr: tcpAddr(dst.Addr()), Port: dst.Port()}, protoOf(dst.Addr()))
}

// Hand-built packets for tests that talk to a Port directly.

// ipPacket builds an IP packet: IPv4, or IPv6 when src is IPv6.
func ipPacket(src, dst netip.Addr, proto byte, payload []byte) []byte {
	hl := 20
	if src.Is6() {
		hl = 40
	}
	b := make([]byte, hl+len(payload))
	writeIPHeader(b, src, dst, proto, len(payload))
	copy(b[hl:], payload)
	return b
}

func tcpSYN(src, dst netip.AddrPort) []byte { return tcpPacket(src, dst, 1000, 0, tcpFlagSYN) }

func tcpPacket(src, dst netip.AddrPort, seq, ack uint32, flags byte) []byte {
	t := make([]byte, 20)
	binary.BigEndian.PutUint16(t[0:2], src.Port())
	binary.BigEndian.PutUint16(t[2:4], dst.Port())
	binary.BigEndian.PutUint32(t[4:8], seq)
	binary.BigEndian.PutUint32(t[8:12], ack)
	t[12] = 5 << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:16], 65535)
	binary.BigEndian.PutUint16(t[16:18], l4Checksum(src.Addr(), dst.Addr(), protoTCP, t))
	return ipPacket(src.Addr(), dst.Addr(), protoTCP, t)
}

func udpPacket(src, dst netip.AddrPort, data []byte) []byte {
	u := make([]byte, 8+len(data))
	binary.BigEndian.PutUint16(u[0:2], src.Port())
	binary.BigEndian.PutUint16(u[2:4], dst.Port())
	binary.BigEndian.PutUint16(u[4:6], uint16(len(u)))
	copy(u[8:], data)
	binary.BigEndian.PutUint16(u[6:8], l4Checksum(src.Addr(), dst.Addr(), protoUDP, u))
	return ipPacket(src.Addr(), dst.Addr(), protoUDP, u)
}

func echoRequest(src, dst netip.Addr, seq uint16) []byte {
	m := make([]byte, 8+16)
	m[0] = 8
	binary.BigEndian.PutUint16(m[4:6], 0x1234)
	binary.BigEndian.PutUint16(m[6:8], seq)
	copy(m[8:], "underpass-ping!!")
	binary.BigEndian.PutUint16(m[2:4], ^fold(sum(m, 0)))
	return ipPacket(src, dst, protoICMP, m)
}

// nextPacket waits for one outbound packet on p and returns its IP bytes.
func nextPacket(t testing.TB, p *Port, d time.Duration) []byte {
	t.Helper()
	return nextPacketOr(t, p, d, func() string { return "" })
}

// nextPacketOr is nextPacket that says state() when no packet comes.
func nextPacketOr(t testing.TB, p *Port, d time.Duration, state func() string) []byte {
	t.Helper()
	select {
	case pk, ok := <-p.Packets():
		if !ok {
			t.Fatal("port closed")
		}
		b := append([]byte(nil), pk.Frame()[p.headroom:]...)
		pk.Release()
		return b
	case <-time.After(d):
		t.Fatalf("no packet %s", state())
	}
	return nil
}

// udpServer answers every datagram to a loopback UDP socket with
// reply(datagram) and returns the socket's port; it stops at cleanup.
func udpServer(t testing.TB, reply func([]byte) []byte) uint16 {
	t.Helper()
	srv, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.ServePacket(t, srv, func(b []byte, from net.Addr) { srv.WriteTo(reply(b), from) })
	return uint16(srv.LocalAddr().(*net.UDPAddr).Port)
}
