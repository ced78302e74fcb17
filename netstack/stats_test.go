package netstack

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// trafficOf is the packet-counter part of a Stats snapshot.
func trafficOf(st Stats) [4]uint64 {
	return [4]uint64{st.PacketsIn, st.BytesIn, st.PacketsOut, st.BytesOut}
}

var trafficNames = [4]string{"PacketsIn", "BytesIn", "PacketsOut", "BytesOut"}

// TestStatsExact: n packets injected (ICMP echo requests the stack
// answers) move PacketsIn and PacketsOut by exactly n and the byte
// counters by exactly their IP sizes, on two ports at once; closing one
// port leaves every total where it was.
func TestStatsExact(t *testing.T) {
	gw := newGW(t, nil)
	const n = 100
	p1, err := gw.Attach(cliAddr, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := gw.Attach(cli2, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	st0 := trafficOf(gw.Stats())
	var want [4]uint64
	for i := range n {
		for _, p := range []*Port{p1, p2} {
			req := echoRequest(p.Addr(), gwAddr, uint16(i))
			if err := p.Inject(req); err != nil {
				t.Fatal(err)
			}
			reply := nextPacket(t, p, 5*time.Second)
			want[0]++
			want[1] += uint64(len(req))
			want[2]++
			want[3] += uint64(len(reply))
		}
	}
	delta := func(st Stats) [4]uint64 {
		d := trafficOf(st)
		for i := range d {
			d[i] -= st0[i]
		}
		return d
	}
	if got := delta(gw.Stats()); got != want {
		t.Fatalf("after %d packets on each of 2 ports: %v = %v, want %v", n, trafficNames, got, want)
	}
	p1.Close()
	if got := delta(gw.Stats()); got != want {
		t.Fatalf("after one port closed: %v = %v, want %v (a closed port's packets stay counted)", trafficNames, got, want)
	}
	// Traffic on the port still attached adds to the retired totals.
	req := echoRequest(cli2, gwAddr, n)
	if err := p2.Inject(req); err != nil {
		t.Fatal(err)
	}
	reply := nextPacket(t, p2, 5*time.Second)
	want[0]++
	want[1] += uint64(len(req))
	want[2]++
	want[3] += uint64(len(reply))
	if got := delta(gw.Stats()); got != want {
		t.Fatalf("after one more packet: %v = %v, want %v", trafficNames, got, want)
	}
}

// TestStatsMonotonicAcrossClose: ports are closed while clients inject
// into them and the stack answers; a concurrent reader of Stats never sees
// a packet counter go down, and in the end every packet Inject accepted
// and every packet queued to a port is counted exactly once, including
// those counted just as their port closed.
func TestStatsMonotonicAcrossClose(t *testing.T) {
	gw := newGW(t, nil)
	// Enough ports that closes overlap with traffic on the others; enough
	// packets per port before its close that its injector is mid-loop.
	const ports, before = 8, 200
	st0 := trafficOf(gw.Stats())

	stop := make(chan struct{})
	sampled := make(chan int)
	go func() { // the sampler, like a metrics scrape running hot
		prev, samples := st0, 0
		defer func() { sampled <- samples }()
		for {
			cur := trafficOf(gw.Stats())
			for i := range cur {
				if cur[i] < prev[i] {
					t.Errorf("%s went down: %d -> %d", trafficNames[i], prev[i], cur[i])
				}
			}
			prev = cur
			samples++
			select {
			case <-stop:
				return
			default:
			}
		}
	}()

	var (
		wg                    sync.WaitGroup
		accepted, acceptedB   atomic.Uint64 // Inject returned nil
		delivered, deliveredB atomic.Uint64 // received from Packets
		ps                    = make([]*Port, ports)
		busy                  = make([]chan struct{}, ports) // closed when port i has carried `before` packets
	)
	for i := range ports {
		busy[i] = make(chan struct{})
		addr := cliAddr
		for range i {
			addr = addr.Next()
		}
		p, err := gw.Attach(addr, testHeadroom, 0)
		if err != nil {
			t.Fatal(err)
		}
		ps[i] = p
		req := echoRequest(addr, gwAddr, 1)
		wg.Add(2)
		go func() { // the client's reader: inject until the port closes
			defer wg.Done()
			for k := 0; ; k++ {
				if k == before {
					close(busy[i])
				}
				err := p.Inject(req)
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Inject: %v", err)
					return
				}
				accepted.Add(1)
				acceptedB.Add(uint64(len(req)))
			}
		}()
		go func() { // the client's writer: drain until the port closes
			defer wg.Done()
			for pk := range p.Packets() {
				delivered.Add(1)
				deliveredB.Add(uint64(len(pk.IP())))
				pk.Release()
			}
		}()
	}
	for i, p := range ps {
		<-busy[i]
		p.Close()
	}
	wg.Wait()
	close(stop)
	if n := <-sampled; n < 2 {
		t.Fatalf("the sampler took %d snapshots", n)
	}

	got := trafficOf(gw.Stats())
	for i := range got {
		got[i] -= st0[i]
	}
	want := [4]uint64{accepted.Load(), acceptedB.Load(), delivered.Load(), deliveredB.Load()}
	if got != want {
		t.Fatalf("%v = %v, want %v (accepted by Inject, delivered to the clients)", trafficNames, got, want)
	}
	if want[0] < ports*before {
		t.Fatalf("only %d packets injected on %d ports", want[0], ports)
	}
}
