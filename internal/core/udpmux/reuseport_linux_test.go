//go:build linux

package udpmux

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// TestProgramMatchesIsDTLS runs the steering program in x/net/bpf's
// interpreter for every first byte and an empty payload.
func TestProgramMatchesIsDTLS(t *testing.T) {
	vm, err := bpf.NewVM(steeringProgram())
	if err != nil {
		t.Fatal(err)
	}
	inputs := [][]byte{{}}
	for b := range 256 {
		inputs = append(inputs, []byte{byte(b), 0xff})
	}
	for _, in := range inputs {
		got, err := vm.Run(in)
		if err != nil {
			t.Fatalf("Run(% x): %v", in, err)
		}
		want := sideQUIC
		if IsDTLS(in) {
			want = sideDTLS
		}
		if got != want {
			t.Errorf("program(% x) = %d, IsDTLS wants socket %d", in, got, want)
		}
	}
}

// TestKernelFastPath: on Linux Listen must take the kernel path, also for
// an unprivileged user, and hand quic-go a plain *net.UDPConn.
func TestKernelFastPath(t *testing.T) {
	t.Logf("uid %d", unix.Getuid())
	for _, lb := range loopbacks {
		m, err := Listen(context.Background(), lb.network, lb.addr)
		if err != nil {
			t.Fatal(err)
		}
		if !m.Kernel() {
			t.Errorf("%s: Kernel() = false on Linux", lb.name)
		}
		if _, ok := m.QUIC().(*net.UDPConn); !ok {
			t.Errorf("%s: QUIC() is %T, want *net.UDPConn", lb.name, m.QUIC())
		}
		if _, ok := m.DTLS().(*net.UDPConn); !ok {
			t.Errorf("%s: DTLS() is %T, want *net.UDPConn", lb.name, m.DTLS())
		}
		m.Close()
	}
}

// TestKernelRoutingAll runs the routing tests on the kernel path only; it
// exists so `-test.run Kernel` covers them when run as another user.
func TestKernelRoutingAll(t *testing.T) {
	kernel := path{name: "kernel", kernel: true}
	for _, lb := range loopbacks {
		t.Run(lb.name+"/burst", func(t *testing.T) { testBurst(t, kernel, lb.network, lb.addr) })
		t.Run(lb.name+"/every-first-byte", func(t *testing.T) { testEveryFirstByte(t, kernel, lb.network, lb.addr) })
		t.Run(lb.name+"/handshake", func(t *testing.T) { testQUICHandshake(t, kernel, lb.network, lb.addr) })
	}
}

// reusePortSocket binds a same-user SO_REUSEPORT socket to addr, as an
// intruder running under the gateway's user ID could.
func reusePortSocket(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	lc := net.ListenConfig{Control: setReusePort}
	c, err := lc.ListenPacket(context.Background(), "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UDPConn)
}

// TestKernelRefusesExistingGroup: if a same-user reuseport group already
// holds the address, Listen fails instead of joining it at wrong indexes.
func TestKernelRefusesExistingGroup(t *testing.T) {
	holder := reusePortSocket(t, "127.0.0.1:0")
	m, err := Listen(context.Background(), "udp", holder.LocalAddr().String())
	if err == nil {
		m.Close()
		t.Fatal("Listen joined an existing reuseport group")
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("error = %v, want EADDRINUSE", err)
	}
}

// TestKernelIntruder documents the same-user threat: a socket that joins
// the group later gets nothing while our program is attached, but can
// replace the program and take the traffic.
func TestKernelIntruder(t *testing.T) {
	m := listenPath(t, path{name: "kernel", kernel: true}, "udp", "127.0.0.1:0")
	intruder := reusePortSocket(t, m.LocalAddr().String())
	c := client(t, m.LocalAddr())

	const n = 64
	quicCh := collectAsync(m.QUIC(), n)
	dtlsCh := collectAsync(m.DTLS(), n)
	for seq := range n {
		c.WriteTo(payload(quicShort, 1, uint16(seq)), m.LocalAddr())
		c.WriteTo(payload(dtlsApp, 1, uint16(seq)), m.LocalAddr())
	}
	if q, d := len(<-quicCh), len(<-dtlsCh); q != n || d != n {
		t.Errorf("with an intruder in the group: QUIC %d/%d, DTLS %d/%d", q, n, d, n)
	}
	intruder.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, _, err := intruder.ReadFrom(make([]byte, 100)); err == nil {
		t.Errorf("intruder at index 2 received a datagram while our program is attached")
	}

	// Any member may replace the group's program: send everything to 2.
	steal := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 2}}
	if err := control(intruder, func(fd int) error {
		return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF,
			&unix.SockFprog{Len: 1, Filter: &steal[0]})
	}); err != nil {
		t.Fatalf("intruder could not replace the program: %v", err)
	}
	c.WriteTo(payload(dtlsApp, 1, 999), m.LocalAddr())
	if got := collect(intruder, 1); len(got) != 1 {
		t.Errorf("intruder did not get traffic after replacing the program")
	} else {
		t.Logf("as documented: a same-user member replaced the program and received the datagram")
	}
}

// rcvBuf returns c's SO_RCVBUF as the kernel reports it (twice the
// requested size, the kernel's bookkeeping allowance included).
func rcvBuf(t testing.TB, c net.PacketConn) int {
	t.Helper()
	var n int
	if err := control(c.(*net.UDPConn), func(fd int) error {
		var err error
		n, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// loopbackOnlyNetns makes a network namespace holding only lo for this
// test and returns a runner of socket-creating functions inside it
// (testenv.Netns.Do): sockets made there stay there. Needs root; under
// CI=true its absence fails the test.
func loopbackOnlyNetns(t *testing.T) func(func() error) error {
	return testenv.NewNetns(t, "udpmux").Do
}
