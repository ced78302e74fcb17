package netstack

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

const benchChunk = 64 << 10

// BenchmarkTCPThroughput moves bytes over one TCP flow: a client gVisor
// stack -> Port.Inject -> gateway -> loopback sink (up), and a loopback
// source -> gateway -> Port.Packets -> client stack (down). Both stacks run
// in this process on the same CPUs, so the figure is a floor for the
// gateway alone. allocs/pkt counts every allocation in the process
// (client stack included) per packet crossing the port.
func BenchmarkTCPThroughput(b *testing.B) {
	for _, mtu := range []int{1500, 16384} {
		for _, dir := range []string{"up", "down"} {
			b.Run(fmt.Sprintf("%s/mtu%d", dir, mtu), func(b *testing.B) {
				benchTCP(b, mtu, dir == "up")
			})
		}
	}
}

func benchTCP(b *testing.B, mtu int, up bool) {
	gw := newGW(b, func(c *Config) { c.MTU = mtu })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	total := int64(b.N) * benchChunk
	srvDone := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			srvDone <- -1
			return
		}
		defer c.Close()
		if up {
			n, _ := io.Copy(io.Discard, c)
			srvDone <- n
			return
		}
		buf := make([]byte, benchChunk)
		var n int64
		for n < total {
			w, err := c.Write(buf)
			n += int64(w)
			if err != nil {
				break
			}
		}
		srvDone <- n
	}()
	c := newClient(b, gw, cliAddr, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.dialTCP(ctx, netip.AddrPortFrom(far, uint16(l.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, benchChunk)
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	st0 := gw.Stats()
	b.SetBytes(benchChunk)
	b.ResetTimer()
	if up {
		for range b.N {
			if _, err := conn.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		conn.CloseWrite()
		if n := <-srvDone; n != total {
			b.Fatalf("sink got %d of %d", n, total)
		}
	} else {
		n, _ := io.CopyBuffer(io.Discard, conn, buf)
		if n != total {
			b.Fatalf("client got %d of %d", n, total)
		}
		<-srvDone
	}
	b.StopTimer()
	runtime.ReadMemStats(&ms1)
	st1 := gw.Stats()
	pkts := (st1.PacketsIn - st0.PacketsIn) + (st1.PacketsOut - st0.PacketsOut)
	if pkts > 0 {
		b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(pkts), "allocs/pkt")
		b.ReportMetric(float64(pkts)/b.Elapsed().Seconds(), "pkts/s")
	}
}

// BenchmarkPacketPath is the gateway's own per-packet cost with nothing
// else in the process: one ICMP echo request injected, one reply copied to
// a pooled Packet, received and released. allocs/op is per packet pair.
func BenchmarkPacketPath(b *testing.B) { benchPacketPath(b, 0, false) }

// BenchmarkPacketPathManyPorts is BenchmarkPacketPath with 20,000 other
// ports attached: the per-packet port lookup at a full gateway's size.
func BenchmarkPacketPathManyPorts(b *testing.B) { benchPacketPath(b, 20000, false) }

// BenchmarkPacketPathDualStack is BenchmarkPacketPath on a dual-stack
// port (AttachAddrs with an IPv6 address too): the same packets, so the
// difference is what owning a second address costs per packet.
func BenchmarkPacketPathDualStack(b *testing.B) { benchPacketPath(b, 0, true) }

func benchPacketPath(b *testing.B, others int, dual bool) {
	gw := newGW(b, nil)
	attachN(b, gw, others)
	addrs := []netip.Addr{cliAddr}
	if dual {
		addrs = append(addrs, cliAddr6)
	}
	p, err := gw.AttachAddrs(addrs, testHeadroom, 16)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	req := echoRequest(cliAddr, gwAddr, 1)
	b.ReportAllocs()
	b.SetBytes(int64(len(req)))
	b.ResetTimer()
	for range b.N {
		if err := p.Inject(req); err != nil {
			b.Fatal(err)
		}
		pk := <-p.Packets()
		pk.Release()
	}
}

// seqAddr is the i-th address of 10.100.0.0/16, clear of the other test
// addresses (10.99.0.0/24); i < 65536.
func seqAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)}) }

// attachN attaches n ports (seqAddr 0..n-1) as sessions do (queue
// length 0: DefaultQueueLen).
func attachN(b *testing.B, gw *Stack, n int) {
	b.Helper()
	for i := range n {
		if _, err := gw.Attach(seqAddr(i), testHeadroom, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAttachDetach is one session's connect plus disconnect (Attach,
// then Port.Close) while n other ports stay attached: the port table's
// cost per event must not grow with n. B/op includes the Port itself and
// its DefaultQueueLen-slot queue (about 4.3 KiB).
func BenchmarkAttachDetach(b *testing.B) {
	for _, n := range []int{1000, 10000, 20000} {
		b.Run(fmt.Sprintf("ports=%d", n), func(b *testing.B) {
			gw := newGW(b, nil)
			attachN(b, gw, n)
			a := seqAddr(n)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				p, err := gw.Attach(a, testHeadroom, 0)
				if err != nil {
					b.Fatal(err)
				}
				p.Close()
			}
		})
	}
}
