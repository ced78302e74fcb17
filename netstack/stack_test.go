package netstack

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// echoServer is testenv.EchoServer reached as the "remote" host far
// (loopDialer maps it to loopback).
func echoServer(t testing.TB) netip.AddrPort {
	return netip.AddrPortFrom(far, testenv.EchoServer(t).Port())
}

func freePort(t testing.TB, network string) uint16 {
	t.Helper()
	if network == "tcp" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return uint16(l.Addr().(*net.TCPAddr).Port)
	}
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// TestTCPRelayHalfClose relays each size both ways with half-closes, for
// a host socket the stack's poller watches (an idle flow has no reader
// goroutine) and for a custom Dialer's connection without a raw
// descriptor (a reader waits in Read).
func TestTCPRelayHalfClose(t *testing.T) { eachDialer(t, testTCPRelayHalfClose) }

func testTCPRelayHalfClose(t *testing.T, d Dialer) {
	var mu sync.Mutex
	var recs []FlowRecord
	gw := newGW(t, func(c *Config) {
		c.Dialer = d
		c.FlowLog = func(r FlowRecord) { mu.Lock(); recs = append(recs, r); mu.Unlock() }
	})
	dst := echoServer(t)
	c := newClient(t, gw, cliAddr, 0)
	for _, size := range []int{0, 1, 100 << 10, 2 << 20} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := c.dialTCP(ctx, dst)
		cancel()
		if err != nil {
			t.Fatalf("size %d: dial: %v", size, err)
		}
		conn.SetDeadline(time.Now().Add(15 * time.Second))
		data := make([]byte, size)
		rand.Read(data)
		errc := make(chan error, 1)
		go func() {
			_, err := conn.Write(data)
			if err == nil {
				err = conn.CloseWrite() // client FIN -> upstream CloseWrite
			}
			errc <- err
		}()
		got, err := io.ReadAll(conn) // upstream close -> client EOF
		if err != nil {
			t.Fatalf("size %d: read: %v", size, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("size %d: write: %v", size, err)
		}
		want := append(data, "bye"...)
		if !bytes.Equal(got, want) {
			t.Fatalf("size %d: got %d bytes, want %d", size, len(got), len(want))
		}
		conn.Close()
	}
	waitFor(t, "tcp flows to end", func() bool { return gw.Stats().TCPActive == 0 })
	mu.Lock()
	defer mu.Unlock()
	if len(recs) != 4 || recs[3].BytesUp != 2<<20 || recs[3].BytesDown != 2<<20+3 || recs[3].Proto != "tcp" {
		t.Fatalf("flow records: %+v", recs)
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestInjectDrops covers every drop reason with a hand-built packet and the
// answer the client gets for refused destinations.
// fakePinger answers every ping itself, reversing the payload, so echo
// forwarding is tested without sending ICMP anywhere.
type fakePinger struct{ got chan netip.Addr }

func (f fakePinger) Ping(ctx context.Context, dst netip.Addr, id, seq uint16, payload []byte) ([]byte, error) {
	f.got <- dst
	r := append([]byte(nil), payload...)
	slices.Reverse(r)
	return r, nil
}

func TestEchoForwarding(t *testing.T) {
	fp := fakePinger{got: make(chan netip.Addr, 1)}
	gw := newGW(t, func(c *Config) { c.Pinger = fp })
	p, err := gw.Attach(cliAddr, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	req := echoRequest(cliAddr, far, 7)
	if err := p.Inject(req); err != nil {
		t.Fatalf("Inject: %v", err)
	}
	if dst := <-fp.got; dst != far {
		t.Fatalf("pinged %v, want %v", dst, far)
	}
	b := nextPacket(t, p, 2*time.Second)
	want := slices.Clone(req[28:])
	slices.Reverse(want)
	if b[9] != protoICMP || b[20] != icmp4EchoReply || netip.AddrFrom4([4]byte(b[12:16])) != far ||
		netip.AddrFrom4([4]byte(b[16:20])) != cliAddr || !bytes.Equal(b[24:28], req[24:28]) || !bytes.Equal(b[28:], want) {
		t.Fatalf("bad echo reply % x", b)
	}
	if fold(sum(b[20:], 0)) != 0xffff || fold(sum(b[:20], 0)) != 0xffff {
		t.Fatal("bad checksum")
	}
	// A listener's address (as the DNS proxy's) owns only its port: a
	// ping there goes to the real host, not answered by the stack.
	dnsAddr := netip.MustParseAddr("10.0.0.53")
	pc, err := gw.ListenUDP(netip.AddrPortFrom(dnsAddr, 53))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if err := p.Inject(echoRequest(cliAddr, dnsAddr, 8)); err != nil {
		t.Fatalf("Inject to the listener address: %v", err)
	}
	select {
	case dst := <-fp.got:
		if dst != dnsAddr {
			t.Fatalf("pinged %v, want the listener address %v", dst, dnsAddr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a ping to the listener address was not forwarded (answered by the stack?)")
	}
	if b := nextPacket(t, p, 2*time.Second); netip.AddrFrom4([4]byte(b[12:16])) != dnsAddr || b[20] != icmp4EchoReply {
		t.Fatalf("bad echo reply from the listener address % x", b)
	}
	// The stack's own address is still answered by the stack.
	if err := p.Inject(echoRequest(cliAddr, gwAddr, 9)); err != nil {
		t.Fatalf("Inject to the gateway address: %v", err)
	}
	if b := nextPacket(t, p, 2*time.Second); netip.AddrFrom4([4]byte(b[12:16])) != gwAddr || b[20] != icmp4EchoReply {
		t.Fatalf("bad echo reply from the gateway address % x", b)
	}
	select {
	case dst := <-fp.got:
		t.Fatalf("pinged %v for the gateway's own address", dst)
	default:
	}
	// A traceroute to the DNS server: a TTL-1 echo to the listener's
	// address is traffic a router forwards, so the gateway answers time
	// exceeded; the listener's own port is the stack's and is delivered.
	if err := p.Inject(withTTL(echoRequest(cliAddr, dnsAddr, 11), 1)); !errors.Is(err, ErrTTLExceeded) {
		t.Fatalf("TTL-1 echo to the listener address: Inject = %v, want ErrTTLExceeded", err)
	}
	if b := nextPacket(t, p, 2*time.Second); netip.AddrFrom4([4]byte(b[12:16])) != gwAddr || b[20] != 11 {
		t.Fatalf("want time exceeded from the gateway, got % x", b)
	}
	if err := p.Inject(withTTL(udpPacket(netip.AddrPortFrom(cliAddr, 40001), netip.AddrPortFrom(dnsAddr, 53), []byte("q")), 1)); err != nil {
		t.Fatalf("TTL-1 datagram to the listener's port: %v", err)
	}
	pc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, _, err := pc.ReadFrom(make([]byte, 16)); err != nil || n != 1 {
		t.Fatalf("the listener did not get the TTL-1 datagram: %d bytes, %v", n, err)
	}
	// Not allowed by policy: refused, never pinged.
	gw2 := newGW(t, func(c *Config) { c.Pinger = fp; c.Allow = func(netip.Addr) bool { return false } })
	p2, err := gw2.Attach(cliAddr, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	if err := p2.Inject(req); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("Inject = %v, want ErrNotAllowed", err)
	}
	// Nor at a listener's address the policy does not route: the
	// listener owns its port, not the host's reachability.
	pc2, err := gw2.ListenUDP(netip.AddrPortFrom(dnsAddr, 53))
	if err != nil {
		t.Fatal(err)
	}
	defer pc2.Close()
	if err := p2.Inject(echoRequest(cliAddr, dnsAddr, 10)); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("Inject to an unrouted listener address = %v, want ErrNotAllowed", err)
	}
	select {
	case dst := <-fp.got:
		t.Fatalf("pinged %v despite policy", dst)
	default:
	}
}

func TestInjectDrops(t *testing.T) {
	gw := newGW(t, func(c *Config) {
		c.Allow = func(a netip.Addr) bool { return a != netip.MustParseAddr("203.0.113.9") }
	})
	p, err := gw.Attach(cliAddr, testHeadroom, 16)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := gw.Attach(cli2, testHeadroom, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	defer p.Close()
	denied := netip.MustParseAddr("203.0.113.9")
	src := netip.AddrPortFrom(cliAddr, 40000)
	short := tcpSYN(src, netip.AddrPortFrom(far, 80))
	binaryTotLen := func(b []byte, n uint16) []byte {
		b = append([]byte(nil), b...)
		b[2], b[3] = byte(n>>8), byte(n)
		return b
	}
	tests := []struct {
		name   string
		pkt    []byte
		want   error
		answer func([]byte) bool // nil: no answer expected
	}{
		{"empty", nil, ErrMalformed, nil},
		{"not ip", []byte{0x10, 0, 0, 0}, ErrNotIP, nil},
		{"short v4", short[:10], ErrMalformed, nil},
		{"bad total length", binaryTotLen(short, 200), ErrMalformed, nil},
		{"too big", make([]byte, 1501), ErrTooBig, nil},
		{"spoofed", tcpSYN(netip.AddrPortFrom(cli2, 40000), netip.AddrPortFrom(far, 80)), ErrSpoofed, nil},
		{"tcp to denied -> RST", tcpSYN(src, netip.AddrPortFrom(denied, 80)), ErrNotAllowed, func(b []byte) bool {
			return b[9] == protoTCP && netip.AddrFrom4([4]byte(b[12:16])) == denied && b[33]&tcpFlagRST != 0 &&
				b[33]&tcpFlagACK != 0 && l4Checksum(denied, cliAddr, protoTCP, b[20:]) == 0
		}},
		{"udp to denied -> ICMP admin prohibited", udpPacket(src, netip.AddrPortFrom(denied, 53), []byte("q")), ErrNotAllowed, func(b []byte) bool {
			return b[9] == protoICMP && b[20] == 3 && b[21] == 13 && fold(sum(b[20:], 0)) == 0xffff && fold(sum(b[:20], 0)) == 0xffff
		}},
		{"session to session -> RST", tcpSYN(src, netip.AddrPortFrom(cli2, 22)), ErrNotAllowed, func(b []byte) bool {
			return b[9] == protoTCP && b[33]&tcpFlagRST != 0
		}},
		{"session to session udp", udpPacket(src, netip.AddrPortFrom(cli2, 53), nil), ErrNotAllowed, func(b []byte) bool {
			return b[9] == protoICMP && b[20] == 3 && b[21] == 13
		}},
		{"broadcast, silently", udpPacket(src, netip.AddrPortFrom(broadcast4, 67), nil), ErrNotAllowed, nil},
		{"echo to far -> prohibited", echoRequest(cliAddr, far, 1), ErrNotAllowed, func(b []byte) bool { return b[20] == 3 && b[21] == 13 }},
		{"ttl 1 -> time exceeded from the gateway", withTTL(udpPacket(src, netip.AddrPortFrom(far, 33434), []byte("probe")), 1), ErrTTLExceeded, func(b []byte) bool {
			return b[9] == protoICMP && netip.AddrFrom4([4]byte(b[12:16])) == gwAddr && b[20] == 11 && b[21] == 0 &&
				fold(sum(b[20:], 0)) == 0xffff && netip.AddrFrom4([4]byte(b[28+16:28+20])) == far // quotes the probe
		}},
		{"ttl 0 to denied -> time exceeded first, as a router", withTTL(tcpSYN(src, netip.AddrPortFrom(denied, 80)), 0), ErrTTLExceeded, func(b []byte) bool {
			return b[9] == protoICMP && b[20] == 11
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := p.Inject(tt.pkt)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Inject = %v, want %v", err, tt.want)
			}
			if tt.answer == nil {
				select {
				case pk := <-p.Packets():
					pk.Release()
					t.Fatal("unexpected answer")
				case <-time.After(20 * time.Millisecond):
				}
				return
			}
			b := nextPacket(t, p, time.Second)
			if !tt.answer(b) {
				t.Fatalf("bad answer % x", b)
			}
		})
	}
	st := gw.Stats()
	if st.DropSpoofed != 1 || st.DropNotAllowed != 6 || st.DropMalformed != 3 || st.DropNotIP != 1 || st.DropTooBig != 1 || st.TTLExceeded != 2 {
		t.Fatalf("stats %+v", st)
	}
	// Session B never saw anything.
	select {
	case pk := <-p2.Packets():
		t.Fatalf("session B got % x", pk.Frame())
	default:
	}
}

func TestICMPEcho(t *testing.T) {
	gw := newGW(t, nil)
	p, err := gw.Attach(cliAddr, testHeadroom, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Inject(echoRequest(cliAddr, gwAddr, 7)); err != nil {
		t.Fatal(err)
	}
	b := nextPacket(t, p, time.Second)
	if b[9] != protoICMP || b[20] != 0 || netip.AddrFrom4([4]byte(b[12:16])) != gwAddr ||
		!bytes.Equal(b[28:], []byte("underpass-ping!!")) || fold(sum(b[20:], 0)) != 0xffff {
		t.Fatalf("bad echo reply % x", b)
	}
}

// TestUDPRelayAndIdle relays datagrams, keeps a flow with traffic alive
// past the idle timeout, and ends it once idle, for a host socket the
// stack's poller watches and for a custom Dialer's connection.
func TestUDPRelayAndIdle(t *testing.T) { eachDialer(t, testUDPRelayAndIdle) }

func testUDPRelayAndIdle(t *testing.T, d Dialer) {
	// idle is long enough that only a stall of most of a second on a
	// loaded box could end the flow between the keep-alive datagrams
	// below (sent every idle/10).
	const idle = time.Second
	gw := newGW(t, func(c *Config) { c.Dialer = d; c.UDPIdleTimeout = idle })
	port := udpServer(t, func(b []byte) []byte { return append([]byte("re:"), b...) })
	c := newClient(t, gw, cliAddr, 0)
	dst := netip.AddrPortFrom(far, port)
	uc, err := c.dialUDP(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	buf := make([]byte, 2048)
	for i := range 3 {
		msg := []byte{'m', byte('0' + i)}
		uc.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := uc.Write(msg); err != nil {
			t.Fatal(err)
		}
		n, err := uc.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:n]) != "re:"+string(msg) {
			t.Fatalf("got %q", buf[:n])
		}
	}
	if a := gw.Stats().UDPActive; a != 1 {
		t.Fatalf("UDPActive = %d, want 1 (one 4-tuple)", a)
	}
	// Traffic keeps it: datagrams for twice the idle timeout, one flow.
	for end := time.Now().Add(2 * idle); time.Now().Before(end); {
		time.Sleep(idle / 10)
		uc.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := uc.Write([]byte("k")); err != nil {
			t.Fatal(err)
		}
		if _, err := uc.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	if st := gw.Stats(); st.UDPFlows != 1 || st.UDPActive != 1 {
		t.Fatalf("after traffic past the idle timeout: %d flows, %d active; want the first still open", st.UDPFlows, st.UDPActive)
	}
	waitFor(t, "udp idle expiry", func() bool { return gw.Stats().UDPActive == 0 })
	// A new datagram opens a new flow.
	uc.SetDeadline(time.Now().Add(2 * time.Second))
	uc.Write([]byte("again"))
	if n, err := uc.Read(buf); err != nil || string(buf[:n]) != "re:again" {
		t.Fatalf("after expiry: %q %v", buf[:n], err)
	}
}

func TestUDPRefusedAnswersPortUnreachable(t *testing.T) {
	gw := newGW(t, nil)
	p, err := gw.Attach(cliAddr, testHeadroom, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	src := netip.AddrPortFrom(cliAddr, 40001)
	dst := netip.AddrPortFrom(far, freePort(t, "udp"))
	// The first datagram provokes the host's ICMP; the second write or the
	// read reports ECONNREFUSED.
	for range 2 {
		if err := p.Inject(udpPacket(src, dst, []byte("x"))); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b := nextPacket(t, p, 2*time.Second)
	if b[9] != protoICMP || b[20] != 3 || b[21] != 3 || netip.AddrFrom4([4]byte(b[12:16])) != far ||
		netip.AddrFrom4([4]byte(b[28+16:28+20])) != far || int(b[28+22])<<8|int(b[28+23]) != int(dst.Port()) {
		t.Fatalf("bad port unreachable % x", b)
	}
}

// TestListenPrecedence: a local service on an address:port wins over a live
// upstream with the same port.
func TestListenPrecedence(t *testing.T) {
	gw := newGW(t, nil)
	up := echoServer(t)
	tcpAP := netip.AddrPortFrom(far, up.Port()) // would be forwarded to the echo server
	l, err := gw.ListenTCP(tcpAP)
	if err != nil {
		t.Fatal(err)
	}
	ldone := make(chan struct{})
	go func() {
		defer close(ldone)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("local"))
			c.Close()
		}
	}()
	gwWeb, err := gw.ListenTCP(netip.AddrPortFrom(gwAddr, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer gwWeb.Close()
	udpPort := freePort(t, "udp")
	pc, err := gw.ListenUDP(netip.AddrPortFrom(far, udpPort))
	if err != nil {
		t.Fatal(err)
	}
	udone := make(chan struct{})
	go func() {
		defer close(udone)
		buf := make([]byte, 1500)
		for {
			n, a, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("dns:"), buf[:n]...), a)
		}
	}()

	c := newClient(t, gw, cliAddr, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.dialTCP(ctx, tcpAP)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(conn)
	conn.Close()
	if string(got) != "local" {
		t.Fatalf("tcp got %q, want local listener", got)
	}
	uc, err := c.dialUDP(netip.AddrPortFrom(far, udpPort))
	if err != nil {
		t.Fatal(err)
	}
	uc.SetDeadline(time.Now().Add(5 * time.Second))
	uc.Write([]byte("q"))
	buf := make([]byte, 100)
	n, err := uc.Read(buf)
	uc.Close()
	if err != nil || string(buf[:n]) != "dns:q" {
		t.Fatalf("udp got %q %v", buf[:n], err)
	}
	if s := gw.Stats(); s.TCPFlows != 0 || s.UDPFlows != 0 {
		t.Fatalf("forwarded: %+v", s)
	}
	if _, err := gw.ListenTCP(netip.MustParseAddrPort("0.0.0.0:80")); !errors.Is(err, ErrInvalidAddr) {
		t.Fatalf("listen on unspecified: %v", err)
	}
	l.Close()
	pc.Close()
	<-ldone
	<-udone
}

// TestBackpressure: a port whose consumer stops reading blocks the stack's
// writer (here the echo reply, written in the injecting goroutine) without
// dropping; reading resumes it; Close unblocks it.
func TestBackpressure(t *testing.T) {
	gw := newGW(t, nil)
	const q = 4
	p, err := gw.Attach(cliAddr, testHeadroom, q)
	if err != nil {
		t.Fatal(err)
	}
	for i := range q {
		if err := p.Inject(echoRequest(cliAddr, gwAddr, uint16(i))); err != nil {
			t.Fatal(err)
		}
	}
	injected := make(chan error, 1)
	go func() { injected <- p.Inject(echoRequest(cliAddr, gwAddr, q)) }()
	select {
	case <-injected:
		t.Fatal("writer did not block on a full queue")
	case <-time.After(100 * time.Millisecond):
	}
	nextPacket(t, p, time.Second) // make room
	select {
	case err := <-injected:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("writer still blocked after room was made")
	}
	for i := 1; i <= q; i++ { // all q replies arrive in order: nothing dropped
		b := nextPacket(t, p, time.Second)
		if seq := int(b[26])<<8 | int(b[27]); seq != i {
			t.Fatalf("reply %d has seq %d", i, seq)
		}
	}
	if s := gw.Stats(); s.DropPortClosed != 0 || s.DropBlocked != 0 || s.WriteBlocked == 0 {
		t.Fatalf("stats %+v", s)
	}
	// Fill again, block a writer, then Close must release it.
	for i := range q {
		p.Inject(echoRequest(cliAddr, gwAddr, uint16(i)))
	}
	go func() { injected <- p.Inject(echoRequest(cliAddr, gwAddr, 99)) }()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	p.Close()
	select {
	case <-injected:
	case <-time.After(time.Second):
		t.Fatal("Close did not unblock the writer")
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("unblock took %v", d)
	}
	n := 0
	for pk := range p.Packets() {
		pk.Release()
		n++
	}
	if n != q {
		t.Fatalf("drained %d, want %d", n, q)
	}
	if err := p.Inject(echoRequest(cliAddr, gwAddr, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Inject after Close: %v", err)
	}
}

// TestStalledPort: with MaxWriteBlock, a client that stops draining costs
// one bounded wait; later packets for it drop at once (the stack's shared
// goroutines are not held again) until its queue is half empty, after which
// senders block (back-pressure) as before.
func TestStalledPort(t *testing.T) {
	const wait = 100 * time.Millisecond
	gw := newGW(t, func(c *Config) { c.MaxWriteBlock = wait })
	const q = 4
	p, err := gw.Attach(cliAddr, testHeadroom, q)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := range q {
		if err := p.Inject(echoRequest(cliAddr, gwAddr, uint16(i))); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	_ = p.Inject(echoRequest(cliAddr, gwAddr, 10)) // the reply waits MaxWriteBlock, then drops
	if d := time.Since(start); d < wait/2 {
		t.Fatalf("first full-queue send did not wait (%v)", d)
	}
	start = time.Now()
	for i := range 5 {
		_ = p.Inject(echoRequest(cliAddr, gwAddr, uint16(20+i)))
	}
	if d := time.Since(start); d > wait {
		t.Fatalf("a stalled port still blocks senders (%v for 5 packets)", d)
	}
	if s := gw.Stats(); s.DropBlocked < 6 {
		t.Fatalf("DropBlocked %d, want >= 6", s.DropBlocked)
	}
	for range q { // drain: the port recovers
		nextPacket(t, p, time.Second)
	}
	injected := make(chan error, 1)
	for i := range q {
		_ = p.Inject(echoRequest(cliAddr, gwAddr, uint16(40+i)))
	}
	go func() { injected <- p.Inject(echoRequest(cliAddr, gwAddr, 50)) }()
	select {
	case <-injected:
		t.Fatal("recovered port does not apply back-pressure")
	case <-time.After(wait / 4):
	}
	nextPacket(t, p, time.Second)
	if err := <-injected; err != nil {
		t.Fatal(err)
	}
}

func TestAttachAndClose(t *testing.T) {
	gw := newGW(t, nil)
	p, err := gw.Attach(cliAddr, 8, 0)
	if err != nil {
		t.Fatal(err)
	}
	if cap(p.ch) != DefaultQueueLen {
		t.Fatalf("queue %d", cap(p.ch))
	}
	for _, tc := range []struct {
		addr     netip.Addr
		headroom int
		want     error
	}{
		{cliAddr, 8, ErrAddrInUse},
		{gwAddr, 8, ErrInvalidAddr},
		{netip.Addr{}, 8, ErrInvalidAddr},
		{cli2, MaxHeadroom + 1, ErrHeadroom},
		{cli2, -1, ErrHeadroom},
	} {
		if _, err := gw.Attach(tc.addr, tc.headroom, 0); !errors.Is(err, tc.want) {
			t.Errorf("Attach(%v, %d) = %v, want %v", tc.addr, tc.headroom, err, tc.want)
		}
	}
	p.Close()
	p.Close()
	p2, err := gw.Attach(cliAddr, 8, 0) // reusable after Close
	if err != nil {
		t.Fatal(err)
	}
	// A live flow and a listener: Close tears all down, twice, no leaks
	// (TestMain's goleak).
	up := echoServer(t)
	p2.Close()
	c := newClient(t, gw, cli2, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.dialTCP(ctx, up)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := gw.ListenTCP(netip.AddrPortFrom(gwAddr, 80)); err != nil {
		t.Fatal(err)
	}
	if err := gw.Close(); err != nil {
		t.Fatal(err)
	}
	gw.Close()
	if _, err := gw.Attach(cliAddr, 8, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Attach after Close: %v", err)
	}
	if a := gw.Stats().TCPActive; a != 0 {
		t.Fatalf("TCPActive after Close = %d", a)
	}
}

// TestParkedPort: while no transport drains a port (the session waits for
// a reconnect), a full queue never blocks the stack, even without
// MaxWriteBlock: the excess drops at once and is counted. The queued
// packets wait for the next transport; after Unpark, senders get
// back-pressure again.
func TestParkedPort(t *testing.T) {
	gw := newGW(t, nil) // no MaxWriteBlock: an unparked full queue blocks
	const q = 4
	p, err := gw.Attach(cliAddr, testHeadroom, q)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Park()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range q + 6 { // 6 more than fit
			_ = p.Inject(echoRequest(cliAddr, gwAddr, uint16(i)))
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a parked port blocked the stack")
	}
	if s := gw.Stats(); s.DropParked != 6 || s.DropBlocked != 0 || s.WriteBlocked != 0 {
		t.Fatalf("DropParked %d (want 6), DropBlocked %d, WriteBlocked %d", s.DropParked, s.DropBlocked, s.WriteBlocked)
	}
	p.Unpark()
	for range q { // what was queued while parked reaches the next transport
		nextPacket(t, p, time.Second)
	}
	for i := range q {
		_ = p.Inject(echoRequest(cliAddr, gwAddr, uint16(40+i)))
	}
	blocked := make(chan struct{})
	go func() {
		defer close(blocked)
		_ = p.Inject(echoRequest(cliAddr, gwAddr, 50)) // full again: waits for room
	}()
	waitFor(t, "the sender to block", func() bool { return gw.Stats().WriteBlocked > 0 })
	nextPacket(t, p, time.Second) // room: the blocked sender gets through
	<-blocked
	if s := gw.Stats(); s.DropParked != 6 {
		t.Fatalf("DropParked %d after Unpark, want 6", s.DropParked)
	}
}

// TestResetsPassThrough: a reset from either end reaches the other end as
// a reset, as through a Linux router, never as an orderly close. The
// server side is a kernel socket, so what it reads is what the kernel
// reports for a peer's RST (ECONNRESET).
func TestResetsPassThrough(t *testing.T) {
	gw := newGW(t, nil)
	c := newClient(t, gw, cliAddr, 0)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dst := netip.AddrPortFrom(far, uint16(l.Addr().(*net.TCPAddr).Port))

	t.Run("client resets", func(t *testing.T) {
		var wq waiter.Queue
		ep, terr := c.st.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
		if terr != nil {
			t.Fatal(terr)
		}
		conn, err := connectEndpoint(ep, &wq, dst)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		srv, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		_ = srv.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write([]byte("half a request")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		if _, err := io.ReadFull(srv, buf[:len("half a request")]); err != nil {
			t.Fatal(err)
		}
		ep.Abort() // SO_LINGER{1,0} and close: a RST
		n, err := srv.Read(buf)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("server read after the client's reset: %d bytes, %v; want ECONNRESET", n, err)
		}
	})
	t.Run("server resets", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := c.dialTCP(ctx, dst)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		srv, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := srv.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		_ = srv.(*net.TCPConn).SetLinger(0)
		srv.Close()
		_, err = conn.Read(make([]byte, 1))
		if err == nil || err == io.EOF || !strings.Contains(err.Error(), "reset") {
			t.Fatalf("client read after the server's reset: %v; want a connection reset", err)
		}
	})
}

// connectEndpoint connects ep to dst and wraps it as a net.Conn.
func connectEndpoint(ep tcpip.Endpoint, wq *waiter.Queue, dst netip.AddrPort) (net.Conn, error) {
	we, ch := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	terr := ep.Connect(tcpip.FullAddress{NIC: 1, Addr: tcpAddr(dst.Addr()), Port: dst.Port()})
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			ep.Close()
			return nil, errors.New("connect: timeout")
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, errors.New(terr.String())
	}
	return gonet.NewTCPConn(wq, ep), nil
}

// countingDialer hangs every dial until ctx ends, counting dials per
// destination.
type countingDialer struct {
	mu    sync.Mutex
	dials map[string]int // destination -> dials started
}

func (d *countingDialer) DialContext(ctx context.Context, _, address string) (net.Conn, error) {
	d.mu.Lock()
	d.dials[address]++
	d.mu.Unlock()
	<-ctx.Done()
	return nil, ctx.Err()
}

func (d *countingDialer) count(address string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dials[address]
}

// TestDialCapPerPort: one client's SYNs to a black hole take at most
// MaxInFlightPerPort dial slots; the rest are ignored and counted, and
// another client's SYN is still dialed.
func TestDialCapPerPort(t *testing.T) {
	d := &countingDialer{dials: map[string]int{}}
	gw := newGW(t, func(c *Config) {
		c.Dialer = d
		c.DialTimeout = 5 * time.Second
		c.MaxInFlightPerPort = 4
	})
	a, err := gw.Attach(cliAddr, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := gw.Attach(netip.MustParseAddr("10.99.0.3"), testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	hole := netip.AddrPortFrom(far, 9) // every dial hangs: a black hole
	other := netip.AddrPortFrom(far, 10)
	for i := range 10 {
		if err := a.Inject(tcpSYN(netip.AddrPortFrom(cliAddr, uint16(40000+i)), hole)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the scanning client's dials", func() bool { return d.count(hole.String()) == 4 && gw.Stats().TCPDialCapped == 6 })
	if err := b.Inject(tcpSYN(netip.AddrPortFrom(netip.MustParseAddr("10.99.0.3"), 40000), other)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other client's dial", func() bool { return d.count(other.String()) == 1 })
	if n := d.count(hole.String()); n != 4 {
		t.Errorf("%d dials for the scanning client, want 4", n)
	}
	if n := gw.Stats().TCPDialCapped; n != 6 {
		t.Errorf("TCPDialCapped = %d, want 6", n)
	}
}

// errDialer fails every dial with err.
type errDialer struct{ err error }

func (d errDialer) DialContext(context.Context, string, string) (net.Conn, error) { return nil, d.err }

// TestDialFailureAnswers checks every way a connection can fail answers the
// client's SYN at once (never a hang: the client's own 3 s limit would
// show as a timeout), and says why the way a router would: a refusal as a
// RST, an unreachable host or network, or no answer at all, as ICMP
// unreachable (connect() then fails with "no route to host" / "network is
// unreachable", not "refused").
func TestDialFailureAnswers(t *testing.T) {
	refused := netip.AddrPortFrom(far, freePort(t, "tcp"))
	live := echoServer(t)
	tests := []struct {
		name string
		mod  func(*Config)
		dst  netip.AddrPort
		want string
		// errno is what tunnel.Client's stack (ClientStack) reports, as
		// a host socket's connect() would; errno6 over IPv6 where Linux
		// says otherwise (0: the same).
		errno, errno6 syscall.Errno
	}{
		{"refused", nil, refused, "refused", syscall.ECONNREFUSED, 0},
		{"no answer", func(c *Config) { c.Dialer = hangDialer{}; c.DialTimeout = 100 * time.Millisecond }, live, "no route to host", syscall.EHOSTUNREACH, 0},
		{"host unreachable", func(c *Config) { c.Dialer = errDialer{syscall.EHOSTUNREACH} }, live, "no route to host", syscall.EHOSTUNREACH, 0},
		{"net unreachable", func(c *Config) { c.Dialer = errDialer{syscall.ENETUNREACH} }, live, "network is unreachable", syscall.ENETUNREACH, 0},
		// Administratively prohibited: Linux reports ICMP's code 13 as
		// EHOSTUNREACH, ICMPv6's code 1 as EACCES (icmp_err_convert,
		// icmpv6_err_convert).
		{"local firewall", func(c *Config) { c.Dialer = errDialer{syscall.EACCES} }, live, "no route to host", syscall.EHOSTUNREACH, syscall.EACCES},
		{"other failure", func(c *Config) { c.Dialer = errDialer{errors.New("proxy said no")} }, live, "refused", syscall.ECONNREFUSED, 0},
		{"not allowed", func(c *Config) { c.Allow = func(netip.Addr) bool { return false } }, live, "refused", syscall.ECONNREFUSED, 0},
		{"gateway addr, no listener", nil, netip.AddrPortFrom(gwAddr, 81), "refused", syscall.ECONNREFUSED, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gw := newGW(t, tt.mod)
			c := newClient(t, gw, cliAddr, 0)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			conn, err := c.dialTCP(ctx, tt.dst)
			if err == nil {
				conn.Close()
				t.Fatal("connected")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			c.port.flowMu.Lock()
			n := len(c.port.syns)
			c.port.flowMu.Unlock()
			if n != 0 {
				t.Errorf("%d SYNs still recorded after the dial ended", n)
			}
			cs := newClientStack(t, gw, cli2, cli2Addr)
			if _, err := cs.DialContext(ctx, "tcp", tt.dst.String()); !errors.Is(err, tt.errno) {
				t.Errorf("ClientStack: err = %v, want errno %v", err, tt.errno)
			}
			if tt.dst.Addr() == gwAddr {
				return // the gateway has no IPv6 address of its own
			}
			// The same over IPv6 (ICMPv6 codes; clientunreach.go).
			dst6, want6 := netip.AddrPortFrom(far6, tt.dst.Port()), tt.errno
			if tt.errno6 != 0 {
				want6 = tt.errno6
			}
			if _, err := cs.DialContext(ctx, "tcp", dst6.String()); !errors.Is(err, want6) {
				t.Errorf("ClientStack over IPv6: err = %v, want errno %v", err, want6)
			}
		})
	}
}

// withTTL returns a copy of the IPv4 packet b with TTL ttl.
func withTTL(b []byte, ttl byte) []byte {
	b = append([]byte(nil), b...)
	b[8] = ttl
	b[10], b[11] = 0, 0
	binary.BigEndian.PutUint16(b[10:12], ^fold(sum(b[:20], 0)))
	return b
}

// blockingPinger holds every ping until release is closed.
type blockingPinger struct{ release chan struct{} }

func (p blockingPinger) Ping(ctx context.Context, _ netip.Addr, _, _ uint16, payload []byte) ([]byte, error) {
	select {
	case <-p.release:
		return payload, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestFlowCapsPerPort: one client at its share of TCP flows, UDP flows or
// forwarded pings is refused more (counted), another client is not, and a
// closed flow frees its slot.
func TestFlowCapsPerPort(t *testing.T) {
	pinger := blockingPinger{release: make(chan struct{})}
	gw := newGW(t, func(c *Config) {
		c.MaxTCPFlowsPerPort, c.MaxUDPFlowsPerPort = 2, 2
		c.Pinger = pinger
	})
	a := newClient(t, gw, cliAddr, 0)
	b := newClient(t, gw, cli2, 0)
	echo := echoServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("tcp", func(t *testing.T) {
		var held []net.Conn
		for range 2 {
			c, err := a.dialTCP(ctx, echo)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		if c, err := a.dialTCP(ctx, echo); err == nil || !strings.Contains(err.Error(), "refused") {
			if err == nil {
				c.Close()
			}
			t.Fatalf("third flow: %v, want refused", err)
		}
		if gw.Stats().TCPFlowsCapped != 1 {
			t.Errorf("TCPFlowsCapped = %d, want 1", gw.Stats().TCPFlowsCapped)
		}
		c, err := b.dialTCP(ctx, echo)
		if err != nil {
			t.Fatalf("the other client: %v", err)
		}
		c.Close()
		held[0].Close()
		waitFor(t, "the closed flow's slot", func() bool {
			c, err := a.dialTCP(ctx, echo)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		held[1].Close()
	})

	t.Run("udp", func(t *testing.T) {
		port := udpServer(t, func(b []byte) []byte { return b })
		dst := netip.AddrPortFrom(far, port)
		ask := func(c *client) error {
			uc, err := c.dialUDP(dst)
			if err != nil {
				return err
			}
			defer uc.Close()
			uc.SetDeadline(time.Now().Add(500 * time.Millisecond))
			uc.Write([]byte("q"))
			_, err = uc.Read(make([]byte, 8))
			return err
		}
		for i := range 2 {
			if err := ask(a); err != nil {
				t.Fatalf("flow %d: %v", i, err)
			}
		}
		if err := ask(a); err == nil {
			t.Fatal("a third 4-tuple was answered")
		}
		if n := gw.Stats().UDPFlowsCapped; n == 0 {
			t.Error("UDPFlowsCapped = 0")
		}
		if err := ask(b); err != nil {
			t.Fatalf("the other client: %v", err)
		}
	})

	t.Run("echo", func(t *testing.T) {
		for i := range maxEchoPerPort {
			if err := a.port.Inject(echoRequest(cliAddr, far, uint16(i))); err != nil {
				t.Fatalf("ping %d: %v", i, err)
			}
		}
		if err := a.port.Inject(echoRequest(cliAddr, far, 999)); !errors.Is(err, ErrNotAllowed) {
			t.Fatalf("ping over the share: %v, want refused", err)
		}
		if n := gw.Stats().EchoCapped; n != 1 {
			t.Errorf("EchoCapped = %d, want 1", n)
		}
		if err := b.port.Inject(echoRequest(cli2, far, 1)); err != nil {
			t.Fatalf("the other client's ping: %v", err)
		}
		close(pinger.release)
	})
}

// holeDialer hangs on dials to hole (a black-holed network) and dials
// everything else on loopback.
type holeDialer struct {
	hole string
	loopDialer
}

func (d *holeDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if address == d.hole {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return d.loopDialer.DialContext(ctx, network, address)
}

// TestScanDoesNotStarveOthers: one session sends 5,000 SYNs to a black hole
// with the default caps (issue 11's fairness case); another session's
// connection still completes, and all but the scanner's share of dial
// slots were ignored. Asserted as "completes", not as a time.
func TestScanDoesNotStarveOthers(t *testing.T) {
	hole := netip.AddrPortFrom(far, 9)
	gw := newGW(t, func(c *Config) { c.Dialer = &holeDialer{hole: hole.String()}; c.DialTimeout = 30 * time.Second })
	scanner, err := gw.Attach(cliAddr, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer scanner.Close()
	const syns = 5000
	for i := range syns {
		if err := scanner.Inject(tcpSYN(netip.AddrPortFrom(cliAddr, uint16(10000+i)), hole)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the scan's SYNs to be dialed or capped", func() bool {
		return gw.Stats().TCPDialCapped == syns-DefaultMaxInFlightPerPort
	})
	other := newClient(t, gw, cli2, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := other.dialTCP(ctx, echoServer(t))
	if err != nil {
		t.Fatalf("the other session's connect during the scan: %v", err)
	}
	c.Close()
}

// TestClientStackReset: a server's reset reaches a tunnel.Client program as
// ECONNRESET on its next read, as on a host socket.
func TestClientStackReset(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testenv.ServeListener(t, l, func(c net.Conn) {
		c.Read(make([]byte, 1))
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	gw := newGW(t, nil)
	cs := newClientStack(t, gw, cliAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dst := netip.AddrPortFrom(far, uint16(l.Addr().(*net.TCPAddr).Port))
	c, err := cs.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("x"))
	_, err = io.ReadAll(c)
	var oe *net.OpError
	if !errors.Is(err, syscall.ECONNRESET) || !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("read after the server's reset: %v, want a read OpError with ECONNRESET", err)
	}
	if _, err := c.Write([]byte("y")); !errors.Is(err, syscall.EPIPE) {
		t.Errorf("write after the reset: %v, want EPIPE", err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("CloseWrite after the reset: %v, want ENOTCONN", err)
	}
}
