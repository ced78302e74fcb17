package netstack

import (
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"
)

// holdServer accepts loopback connections and holds them, with no
// goroutine per connection, so a flow's cost is the gateway's alone.
func holdServer(t testing.TB) (netip.AddrPort, func() int) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return netip.AddrPortFrom(far, uint16(l.Addr().(*net.TCPAddr).Port)),
		func() int { mu.Lock(); defer mu.Unlock(); return len(conns) }
}

func memInUse() uint64 {
	h, s := memSplit()
	return h + s
}

func memSplit() (heap, stack uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse, ms.StackInuse
}

// TestIdleFlowMemory opens idleFlows established, idle TCP flows through the
// gateway (handshakes hand-built, so no client stack is measured) and
// reports the gateway's Go memory per flow, net of the loopback sockets'
// own cost (measured the same way without the gateway).
func TestIdleFlowMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens thousands of loopback sockets")
	}
	const idleFlows = 2000
	// Baseline: the same number of plain loopback connection pairs.
	dst, accepted := holdServer(t)
	base0 := memInUse()
	var plain []net.Conn
	for range idleFlows {
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", itoa(dst.Port())))
		if err != nil {
			t.Fatal(err)
		}
		plain = append(plain, c)
	}
	waitFor(t, "baseline accepts", func() bool { return accepted() == idleFlows })
	base := int64(memInUse()) - int64(base0)
	for _, c := range plain {
		c.Close()
	}
	plain = nil

	gw := newGW(t, nil)
	p, err := gw.Attach(cliAddr, testHeadroom, 4*idleFlows)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	dst2, accepted2 := holdServer(t)
	h0, s0 := memSplit()
	m0 := h0 + s0
	start := time.Now()
	const batch = 250
	for first := 0; first < idleFlows; first += batch {
		for i := first; i < first+batch; i++ {
			if err := p.Inject(tcpSYN(netip.AddrPortFrom(cliAddr, uint16(10000+i)), dst2)); err != nil {
				t.Fatal(err)
			}
		}
		for got := 0; got < batch; {
			b := nextPacket(t, p, 5*time.Second)
			if b[9] != protoTCP || b[33] != tcpFlagSYN|tcpFlagACK {
				continue
			}
			got++
			seq := binary.BigEndian.Uint32(b[24:28])
			cport := binary.BigEndian.Uint16(b[22:24])
			p.Inject(tcpPacket(netip.AddrPortFrom(cliAddr, cport), dst2, 1001, seq+1, tcpFlagACK))
		}
	}
	waitFor(t, "flows established", func() bool {
		return gw.Stats().TCPActive == idleFlows && accepted2() == idleFlows
	})
	setup := time.Since(start)
	h1, s1 := memSplit()
	t.Logf("heap %d B/flow, stacks %d B/flow, goroutines %d", (int64(h1)-int64(h0))/idleFlows, (int64(s1)-int64(s0))/idleFlows, runtime.NumGoroutine())
	total := int64(memInUse()) - int64(m0)
	per := (total - base) / idleFlows
	t.Logf("%d idle TCP flows in %v: %d B/flow total, %d B/flow loopback sockets, %d B/flow netstack; 64k flows ≈ %d MiB",
		idleFlows, setup.Round(time.Millisecond), total/idleFlows, base/idleFlows, per, per*64000>>20)
	if per > 48<<10 {
		t.Errorf("netstack costs %d B per idle flow, want < 48 KiB", per)
	}
}

func itoa(v uint16) string { return netip.AddrPortFrom(netip.IPv4Unspecified(), v).String()[8:] }
