package udpmux

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Bounds for the tests. idle is how long a collector waits for one more
// datagram before deciding the rest were lost; loopback delivers in
// microseconds, so 2 s only matters under -race on a loaded machine.
const (
	idle       = 2 * time.Second
	burst      = 512     // datagrams of each kind per client in burst tests
	testRcvBuf = 4 << 20 // 4 MiB: holds a whole burst; capped by net.core.rmem_max
)

// path is one way of demultiplexing.
type path struct {
	name   string
	cfg    Config
	kernel bool
}

func paths() []path {
	ps := []path{{name: "fallback", cfg: Config{ForceFallback: true}}}
	if runtime.GOOS == "linux" {
		ps = append([]path{{name: "kernel", kernel: true}}, ps...)
	}
	return ps
}

// loopbacks are the only addresses the tests bind or send to.
var loopbacks = []struct{ name, network, addr string }{
	{"ipv4", "udp", "127.0.0.1:0"},
	{"ipv6", "udp", "[::1]:0"},
}

func listenPath(t testing.TB, p path, network, addr string) *Mux {
	t.Helper()
	m, err := p.cfg.Listen(context.Background(), network, addr)
	if err != nil {
		t.Fatalf("Listen(%q, %q): %v", network, addr, err)
	}
	t.Cleanup(func() { m.Close() })
	if m.Kernel() != p.kernel {
		t.Fatalf("Kernel() = %v, want %v", m.Kernel(), p.kernel)
	}
	return m
}

func growReadBuffer(t testing.TB, c net.PacketConn) {
	t.Helper()
	if err := c.(interface{ SetReadBuffer(int) error }).SetReadBuffer(testRcvBuf); err != nil {
		t.Fatalf("SetReadBuffer: %v", err)
	}
}

// client opens a loopback UDP socket of the same family as to.
func client(t testing.TB, to net.Addr) *net.UDPConn {
	t.Helper()
	ip := net.IPv4(127, 0, 0, 1)
	if to.(*net.UDPAddr).IP.To4() == nil {
		ip = net.IPv6loopback
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
	if err != nil {
		t.Fatalf("client socket: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// payload builds a test datagram: first byte, then client id and sequence
// number so the receiver can account for every datagram.
func payload(first byte, clientID byte, seq uint16) []byte {
	b := make([]byte, 64) // small, but long enough to look like a packet
	b[0] = first
	b[1] = clientID
	binary.BigEndian.PutUint16(b[2:], seq)
	return b
}

// First bytes used for "a QUIC packet" and "a DTLS record".
const (
	quicLong  = 0xc3 // long header, fixed bit set (an Initial)
	quicShort = 0x43 // short header, fixed bit set
	dtlsApp   = 23   // DTLS application_data
	dtlsHS    = 22   // DTLS handshake
)

// collect reads datagrams from c until want arrived or none came for idle.
// It never fails the test itself; callers compare what they got.
func collect(c net.PacketConn, want int) [][]byte { return collectIdle(c, want, idle) }

func collectIdle(c net.PacketConn, want int, idle time.Duration) [][]byte {
	var got [][]byte
	buf := make([]byte, 2048)
	for len(got) < want {
		c.SetReadDeadline(time.Now().Add(idle))
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			break
		}
		got = append(got, append([]byte(nil), buf[:n]...))
	}
	c.SetReadDeadline(time.Time{})
	return got
}

// collectCounted is collectAsync that also adds each datagram to n.
func collectCounted(c net.PacketConn, want int, n *atomic.Int64) <-chan [][]byte {
	ch := make(chan [][]byte, 1)
	go func() {
		var got [][]byte
		buf := make([]byte, 2048)
		for len(got) < want {
			c.SetReadDeadline(time.Now().Add(idle))
			k, _, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			n.Add(1)
			got = append(got, append([]byte(nil), buf[:k]...))
		}
		c.SetReadDeadline(time.Time{})
		ch <- got
	}()
	return ch
}

// collectAsync runs collect in a goroutine; the result arrives on the
// returned channel.
func collectAsync(c net.PacketConn, want int) <-chan [][]byte {
	ch := make(chan [][]byte, 1)
	go func() { ch <- collect(c, want) }()
	return ch
}

func TestIsDTLS(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want bool
	}{
		{"empty", nil, false},
		{"zero byte", []byte{0}, true},
		{"DTLS change_cipher_spec", []byte{20, 0xfe, 0xfd}, true},
		{"DTLS alert", []byte{21}, true},
		{"DTLS handshake", []byte{22, 0xfe, 0xfd}, true},
		{"DTLS application_data", []byte{23, 0xfe, 0xfd}, true},
		{"DTLS heartbeat", []byte{24}, true},
		{"DTLS tls12_cid", []byte{25}, true},
		{"top of RFC 7983 DTLS range", []byte{63}, true},
		{"QUIC short header lowest", []byte{0x40}, false},
		{"QUIC short header", []byte{quicShort, 1, 2}, false},
		{"RTP range, fixed bit clear", []byte{0x80}, true},
		{"QUIC long header Initial", []byte{0xc0}, false},
		{"QUIC long header highest", []byte{0xff}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsDTLS(tt.in); got != tt.want {
				t.Errorf("IsDTLS(% x) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestListenInvalidNetwork(t *testing.T) {
	for _, network := range []string{"tcp", "ip", "unix", ""} {
		_, err := Listen(context.Background(), network, "127.0.0.1:0")
		var unknown net.UnknownNetworkError
		if !errors.As(err, &unknown) {
			t.Errorf("Listen(%q) error = %v, want net.UnknownNetworkError", network, err)
		}
	}
}

// TestBurstRouting sends, from two client sockets at once, 512 QUIC and
// 512 DTLS datagrams each, interleaved, and checks that every datagram
// lands on its side exactly once. The kernel path must lose nothing.
func TestBurstRouting(t *testing.T) {
	for _, p := range paths() {
		for _, lb := range loopbacks {
			t.Run(p.name+"/"+lb.name, func(t *testing.T) { testBurst(t, p, lb.network, lb.addr) })
		}
	}
}

// burstBudget is the receive buffer, in bytes as getsockopt(SO_RCVBUF)
// reports it, that one socket needs to hold a whole unpaced test burst
// (clients*burst datagrams) if its reader falls behind: on loopback a
// 64-byte datagram costs about 1.7 KiB of buffer (skb truesize); 2 KiB is
// the round-up.
const burstBudget = 2 * burst * 2048

// pacedWindow is how many datagrams may be in flight when the kernel
// buffers are too small for unpaced bursts (net.core.rmem_max below
// testRcvBuf, as on a stock kernel): 64 * 2 KiB fits the 208 KiB default.
const pacedWindow = 64

func testBurst(t *testing.T, p path, network, addr string) {
	m := listenPath(t, p, network, addr)
	growReadBuffer(t, m.QUIC())
	growReadBuffer(t, m.DTLS())
	const clients = 2
	want := clients * burst

	// A datagram lost in a full kernel receive buffer is not a steering
	// error; only pace when the buffers cannot hold the burst.
	window := int64(math.MaxInt64)
	if p.kernel {
		if b := min(rcvBuf(t, m.QUIC()), rcvBuf(t, m.DTLS())); b < burstBudget {
			window = pacedWindow
			t.Logf("SO_RCVBUF is %d bytes (< %d): pacing to %d datagrams in flight", b, burstBudget, window)
		}
	}
	var sent, received atomic.Int64
	quicCh := collectCounted(m.QUIC(), want, &received)
	dtlsCh := collectCounted(m.DTLS(), want, &received)
	send := func(c *net.UDPConn, b []byte) error {
		for start := time.Now(); sent.Load()-received.Load() >= window && time.Since(start) < idle; {
			time.Sleep(50 * time.Microsecond)
		}
		sent.Add(1)
		_, err := c.WriteTo(b, m.LocalAddr())
		return err
	}

	var wg sync.WaitGroup
	for id := range clients {
		c := client(t, m.LocalAddr())
		wg.Go(func() {
			for seq := range burst {
				q := payload(quicLong, byte(id), uint16(seq))
				if seq%2 == 1 {
					q[0] = quicShort
				}
				if err := send(c, q); err != nil {
					t.Errorf("send QUIC: %v", err)
					return
				}
				if err := send(c, payload(dtlsApp, byte(id), uint16(seq))); err != nil {
					t.Errorf("send DTLS: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	gotQ, gotD := <-quicCh, <-dtlsCh
	lostQ := account(t, "QUIC", gotQ, false, clients)
	lostD := account(t, "DTLS", gotD, true, clients)
	st := m.Stats()
	t.Logf("QUIC %d/%d, DTLS %d/%d received; stats %+v", len(gotQ), want, len(gotD), want, st)
	if p.kernel && (lostQ != 0 || lostD != 0) {
		t.Errorf("kernel path lost %d QUIC and %d DTLS datagrams, want 0", lostQ, lostD)
	}
}

// account checks that got holds only datagrams of the expected kind and no
// duplicates, and returns how many of clients*burst are missing.
func account(t *testing.T, side string, got [][]byte, dtls bool, clients int) int {
	t.Helper()
	seen := make(map[[2]int]bool)
	for _, b := range got {
		if IsDTLS(b) != dtls {
			t.Errorf("%s side got a datagram with first byte %#x", side, b[0])
			continue
		}
		k := [2]int{int(b[1]), int(binary.BigEndian.Uint16(b[2:]))}
		if seen[k] {
			t.Errorf("%s side got client %d seq %d twice", side, k[0], k[1])
		}
		seen[k] = true
	}
	return clients*burst - len(seen)
}

// TestEveryFirstByte sends one datagram for each first-byte value 0..255
// and one empty datagram, and checks each lands on the side IsDTLS picks.
// On the kernel path this checks the BPF program against IsDTLS, and that
// the kernel runs it at the start of the UDP payload.
func TestEveryFirstByte(t *testing.T) {
	for _, p := range paths() {
		for _, lb := range loopbacks {
			t.Run(p.name+"/"+lb.name, func(t *testing.T) { testEveryFirstByte(t, p, lb.network, lb.addr) })
		}
	}
}

func testEveryFirstByte(t *testing.T, p path, network, addr string) {
	m := listenPath(t, p, network, addr)
	growReadBuffer(t, m.QUIC())
	growReadBuffer(t, m.DTLS())
	wantD := 0
	for b := range 256 {
		if IsDTLS([]byte{byte(b)}) {
			wantD++
		}
	}
	wantQ := 256 - wantD + 1 // +1: the empty datagram
	quicCh := collectAsync(m.QUIC(), wantQ)
	dtlsCh := collectAsync(m.DTLS(), wantD)
	c := client(t, m.LocalAddr())
	for b := range 256 {
		if _, err := c.WriteTo([]byte{byte(b), 0xAA, byte(b)}, m.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.WriteTo(nil, m.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	gotQ, gotD := <-quicCh, <-dtlsCh
	seen := make(map[int]string)
	empties := 0
	check := func(side string, got [][]byte, dtls bool) {
		for _, d := range got {
			if len(d) == 0 {
				empties++
				if dtls {
					t.Errorf("empty datagram went to DTLS")
				}
				continue
			}
			if len(d) != 3 || d[1] != 0xAA || d[2] != d[0] {
				t.Errorf("%s: unexpected datagram % x", side, d)
				continue
			}
			if IsDTLS(d) != dtls {
				t.Errorf("first byte %#02x went to %s, IsDTLS says %v", d[0], side, IsDTLS(d))
			}
			if prev, ok := seen[int(d[0])]; ok {
				t.Errorf("first byte %#02x arrived twice (%s, %s)", d[0], prev, side)
			}
			seen[int(d[0])] = side
		}
	}
	check("QUIC", gotQ, false)
	check("DTLS", gotD, true)
	if len(seen) != 256 || empties != 1 {
		t.Errorf("got %d of 256 first-byte values and %d of 1 empty datagram", len(seen), empties)
	}
}

// TestCloseUnblocksReaders blocks a reader on each side, closes the Mux and
// expects both readers to return net.ErrClosed promptly.
func TestCloseUnblocksReaders(t *testing.T) {
	for _, p := range paths() {
		t.Run(p.name, func(t *testing.T) {
			m := listenPath(t, p, "udp", "127.0.0.1:0")
			errs := make(chan error, 2)
			for _, c := range []net.PacketConn{m.QUIC(), m.DTLS()} {
				go func() {
					_, _, err := c.ReadFrom(make([]byte, 100))
					errs <- err
				}()
			}
			time.Sleep(50 * time.Millisecond) // let both readers block
			if err := m.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			for range 2 {
				select {
				case err := <-errs:
					if !errors.Is(err, net.ErrClosed) {
						t.Errorf("ReadFrom after Close: %v, want net.ErrClosed", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("reader still blocked 5s after Close")
				}
			}
			if err := m.Close(); err != nil {
				t.Errorf("second Close: %v, want nil (idempotent)", err)
			}
			if _, err := m.DTLS().WriteTo([]byte{dtlsApp}, m.LocalAddr()); !errors.Is(err, net.ErrClosed) {
				t.Errorf("WriteTo after Close: %v, want net.ErrClosed", err)
			}
		})
	}
}

// TestReadDeadline checks the net.PacketConn deadline contract on both
// sides: a passed deadline fails reads with a timeout even when data is
// queued, and clearing it makes the data readable.
func TestReadDeadline(t *testing.T) {
	for _, p := range paths() {
		t.Run(p.name, func(t *testing.T) {
			m := listenPath(t, p, "udp", "127.0.0.1:0")
			for _, side := range []struct {
				name  string
				conn  net.PacketConn
				first byte
			}{{"QUIC", m.QUIC(), quicLong}, {"DTLS", m.DTLS(), dtlsApp}} {
				c := side.conn
				c.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
				start := time.Now()
				_, _, err := c.ReadFrom(make([]byte, 100))
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("%s: ReadFrom past deadline: %v, want timeout", side.name, err)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Errorf("%s: timeout took %v", side.name, d)
				}
				cl := client(t, m.LocalAddr())
				if _, err := cl.WriteTo(payload(side.first, 9, 1), m.LocalAddr()); err != nil {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond) // let it be queued
				// Deadline still in the past: the queued datagram must wait.
				if _, _, err := c.ReadFrom(make([]byte, 100)); !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("%s: ReadFrom with passed deadline and data queued: %v", side.name, err)
				}
				c.SetReadDeadline(time.Time{})
				c.SetReadDeadline(time.Now().Add(idle))
				n, from, err := c.ReadFrom(make([]byte, 100))
				if err != nil || n != 64 || from.String() != cl.LocalAddr().String() {
					t.Fatalf("%s: ReadFrom = %d, %v, %v; want 64 bytes from %v", side.name, n, from, err, cl.LocalAddr())
				}
				c.SetReadDeadline(time.Time{})
			}
		})
	}
}

// TestAddresses binds each supported address shape, checks LocalAddr, and
// routes one datagram of each kind through every loopback the socket
// serves. Wildcard binds (":0", "[::]:0") listen beyond loopback, so they
// run in a fresh network namespace holding only lo (Linux, root).
func TestAddresses(t *testing.T) {
	v4 := net.IPv4(127, 0, 0, 1)
	v6 := net.IPv6loopback
	tests := []struct {
		network, addr string
		sendTo        []net.IP
		wildcard      bool
	}{
		{"udp", "127.0.0.1:0", []net.IP{v4}, false},
		{"udp4", "127.0.0.1:0", []net.IP{v4}, false},
		{"udp", "[::1]:0", []net.IP{v6}, false},
		{"udp6", "[::1]:0", []net.IP{v6}, false},
		{"udp", ":0", []net.IP{v4, v6}, true},     // dual stack
		{"udp", "[::]:0", []net.IP{v4, v6}, true}, // dual stack
		{"udp", "0.0.0.0:0", []net.IP{v4, v6}, true},
		{"udp4", ":0", []net.IP{v4}, true},
		{"udp6", "[::]:0", []net.IP{v6}, true},
	}
	for _, p := range paths() {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/%s/%s", p.name, tt.network, tt.addr), func(t *testing.T) {
				do := func(fn func() error) error { return fn() }
				if tt.wildcard {
					// A wildcard bind listens beyond loopback: in a fresh
					// namespace holding only lo it reaches nothing else.
					do = loopbackOnlyNetns(t)
				}
				var m *Mux
				if err := do(func() (err error) { m, err = p.cfg.Listen(context.Background(), tt.network, tt.addr); return err }); err != nil {
					t.Fatalf("Listen(%q, %q): %v", tt.network, tt.addr, err)
				}
				t.Cleanup(func() { m.Close() })
				if m.Kernel() != p.kernel {
					t.Fatalf("Kernel() = %v, want %v", m.Kernel(), p.kernel)
				}
				port := m.LocalAddr().(*net.UDPAddr).Port
				if port == 0 {
					t.Fatalf("LocalAddr %v has port 0", m.LocalAddr())
				}
				for _, ip := range tt.sendTo {
					to := &net.UDPAddr{IP: ip, Port: port}
					var c *net.UDPConn
					if err := do(func() (err error) { c, err = net.ListenUDP("udp", &net.UDPAddr{IP: ip}); return err }); err != nil {
						t.Fatalf("client socket: %v", err)
					}
					t.Cleanup(func() { c.Close() })
					for _, tc := range []struct {
						conn  net.PacketConn
						first byte
					}{{m.QUIC(), quicShort}, {m.DTLS(), dtlsHS}} {
						if _, err := c.WriteTo(payload(tc.first, 1, 1), to); err != nil {
							t.Fatal(err)
						}
						got := collect(tc.conn, 1)
						if len(got) != 1 || got[0][0] != tc.first {
							t.Fatalf("sent %#x to %v, got %d datagrams on its side", tc.first, to, len(got))
						}
					}
				}
			})
		}
	}
}

// TestFixedPort binds a port chosen earlier, as production does.
func TestFixedPort(t *testing.T) {
	for _, p := range paths() {
		t.Run(p.name, func(t *testing.T) {
			m0 := listenPath(t, p, "udp", "127.0.0.1:0")
			addr := m0.LocalAddr().String()
			m0.Close()
			m := listenPath(t, p, "udp", addr)
			if m.LocalAddr().String() != addr {
				t.Fatalf("LocalAddr = %v, want %v", m.LocalAddr(), addr)
			}
			c := client(t, m.LocalAddr())
			c.WriteTo(payload(dtlsApp, 1, 1), m.LocalAddr())
			if got := collect(m.DTLS(), 1); len(got) != 1 {
				t.Fatalf("DTLS datagram not received on fixed port")
			}
		})
	}
}

// TestAddrInUse: a port held by an ordinary socket is refused on both paths.
func TestAddrInUse(t *testing.T) {
	for _, p := range paths() {
		t.Run(p.name, func(t *testing.T) {
			holder, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Close()
			m, err := p.cfg.Listen(context.Background(), "udp", holder.LocalAddr().String())
			if err == nil {
				m.Close()
				t.Fatal("Listen on a held port succeeded")
			}
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("Listen error = %v, want EADDRINUSE", err)
			}
		})
	}
}

// TestFallbackQueueFull overfills the QUIC queue of the fallback without
// reading, and checks the excess is dropped and counted, not queued.
func TestFallbackQueueFull(t *testing.T) {
	m := listenPath(t, path{name: "fallback", cfg: Config{ForceFallback: true}}, "udp", "127.0.0.1:0")
	growReadBuffer(t, m.QUIC())
	c := client(t, m.LocalAddr())
	const extra = 256
	for seq := range queueLen + extra {
		if _, err := c.WriteTo(payload(quicShort, 1, uint16(seq)), m.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for m.Stats().QUICDropped == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // let the reader finish the burst
	st := m.Stats()
	got := collectIdle(m.QUIC(), queueLen+extra, 200*time.Millisecond)
	t.Logf("stats %+v, drained %d", st, len(got))
	if st.QUICDropped == 0 || st.DTLSDropped != 0 {
		t.Errorf("stats %+v, want QUIC drops only", st)
	}
	if len(got) > queueLen {
		t.Errorf("drained %d datagrams, queue holds at most %d", len(got), queueLen)
	}
	if uint64(len(got))+st.QUICDropped > queueLen+extra {
		t.Errorf("drained %d + dropped %d > sent %d", len(got), st.QUICDropped, queueLen+extra)
	}
}

// TestFallbackViewClose closes one view; the other keeps working.
func TestFallbackViewClose(t *testing.T) {
	m := listenPath(t, path{name: "fallback", cfg: Config{ForceFallback: true}}, "udp", "127.0.0.1:0")
	if err := m.DTLS().Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.DTLS().Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second view Close: %v, want net.ErrClosed", err)
	}
	if _, _, err := m.DTLS().ReadFrom(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadFrom on closed view: %v", err)
	}
	c := client(t, m.LocalAddr())
	c.WriteTo(payload(dtlsApp, 1, 1), m.LocalAddr())
	c.WriteTo(payload(quicLong, 1, 2), m.LocalAddr())
	if got := collect(m.QUIC(), 1); len(got) != 1 || got[0][0] != quicLong {
		t.Fatalf("QUIC side after DTLS view close: %d datagrams", len(got))
	}
	if st := m.Stats(); st != (Stats{}) {
		t.Errorf("datagrams for a closed view counted as drops: %+v", st)
	}
}

// TestQUICHandshake runs a real quic-go handshake and stream echo through
// m.QUIC() while DTLS-looking datagrams stream into m.DTLS().
func TestQUICHandshake(t *testing.T) {
	for _, p := range paths() {
		for _, lb := range loopbacks {
			t.Run(p.name+"/"+lb.name, func(t *testing.T) {
				testQUICHandshake(t, p, lb.network, lb.addr)
			})
		}
	}
}

func testQUICHandshake(t *testing.T, p path, network, addr string) {
	m := listenPath(t, p, network, addr)
	serverTLS, clientTLS := testTLS(t)
	ln, err := quic.Listen(m.QUIC(), serverTLS, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Server: echo one stream.
	serverDone := make(chan error, 1)
	go func() {
		conn, err := ln.Accept(ctx)
		if err != nil {
			serverDone <- err
			return
		}
		defer conn.CloseWithError(0, "")
		s, err := conn.AcceptStream(ctx)
		if err != nil {
			serverDone <- err
			return
		}
		_, err = io.Copy(s, s)
		s.Close()
		serverDone <- err
		<-conn.Context().Done() // keep the connection until the client closes it
	}()

	// DTLS traffic at the same time, from its own socket.
	const dtlsCount = 256
	dtlsCh := collectAsync(m.DTLS(), dtlsCount)
	dc := client(t, m.LocalAddr())
	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		for seq := range dtlsCount {
			dc.WriteTo(payload(dtlsApp, 7, uint16(seq)), m.LocalAddr())
			if seq%16 == 0 {
				time.Sleep(time.Millisecond) // spread over the handshake
			}
		}
	}()

	cc := client(t, m.LocalAddr())
	conn, err := quic.Dial(ctx, cc, m.LocalAddr(), clientTLS, nil)
	if err != nil {
		t.Fatalf("quic.Dial: %v", err)
	}
	if proto := conn.ConnectionState().TLS.NegotiatedProtocol; proto != "test" {
		t.Errorf("ALPN = %q, want test", proto)
	}
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("hello through the demultiplexer")
	if _, err := s.Write(msg); err != nil {
		t.Fatal(err)
	}
	s.Close()
	echo, err := io.ReadAll(s)
	if err != nil || string(echo) != string(msg) {
		t.Fatalf("echo = %q, %v; want %q", echo, err, msg)
	}
	if err := <-serverDone; err != nil {
		t.Fatalf("server: %v", err)
	}
	conn.CloseWithError(0, "")

	<-sendDone
	got := <-dtlsCh
	for _, d := range got {
		if !IsDTLS(d) || d[1] != 7 {
			t.Fatalf("DTLS side got a non-DTLS datagram, first byte %#x", d[0])
		}
	}
	t.Logf("DTLS side received %d/%d during the handshake", len(got), dtlsCount)
	if p.kernel && len(got) != dtlsCount {
		t.Errorf("kernel path: DTLS side received %d of %d", len(got), dtlsCount)
	}
}

// testTLS returns a server config with a fresh self-signed certificate for
// localhost/127.0.0.1/::1 and a client config trusting it, ALPN "test".
func testTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos:   []string{"test"},
	}
	client = &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"test"}}
	return server, client
}
