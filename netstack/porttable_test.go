package netstack

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPortTableConcurrent attaches, uses and closes ports from many
// goroutines at once while Stats is sampled, and checks the port table
// never loses a port (a closed address stays taken, or a live port is
// not found for its replies) nor holds two for one address:
//   - owned addresses have one goroutine each, so every Attach must
//     succeed; a port left behind by Close fails the next round;
//   - contended addresses have several goroutines racing to Attach: at
//     most one may hold the address at a time;
//   - every holder's echo request must be answered on its own port (the
//     outbound lookup finds it, not a predecessor);
//   - in the end the table is empty, and the packet totals equal exactly
//     what was injected and answered (no port counted twice or lost).
func TestPortTableConcurrent(t *testing.T) {
	gw := newGW(t, nil)
	const (
		owned, rounds     = 8, 150 // one goroutine each: every Attach succeeds
		contended, racers = 4, 4   // racers goroutines per address
		tries             = 150    // Attach attempts per racer
		replyWait         = 10 * time.Second
	)
	st0 := trafficOf(gw.Stats())
	var (
		wg      sync.WaitGroup
		held    atomic.Uint64 // rounds that attached, injected and got the reply
		stop    = make(chan struct{})
		sampled = make(chan struct{})
		holders = make([]atomic.Int32, contended)
	)
	go func() { // a metrics scrape running hot: walks the table meanwhile
		defer close(sampled)
		for {
			gw.Stats()
			select {
			case <-stop:
				return
			default:
				runtime.Gosched()
			}
		}
	}()
	// use holds p for one round: its echo request must come back on p.
	use := func(p *Port, seq uint16) error {
		if got := gw.lookup(p.Addr()); got != p {
			return fmt.Errorf("lookup(%v) = %p, want the attached port %p", p.Addr(), got, p)
		}
		if err := p.Inject(echoRequest(p.Addr(), gwAddr, seq)); err != nil {
			return fmt.Errorf("Inject on %v: %w", p.Addr(), err)
		}
		select {
		case pk := <-p.Packets():
			pk.Release()
		case <-time.After(replyWait):
			return fmt.Errorf("no echo reply on %v: the stack delivered it elsewhere", p.Addr())
		}
		held.Add(1)
		return nil
	}
	for i := range owned {
		a := seqAddr(i)
		wg.Go(func() {
			for r := range rounds {
				p, err := gw.Attach(a, testHeadroom, 0)
				if err != nil {
					t.Errorf("round %d: Attach(%v) = %v: the previous port was not detached", r, a, err)
					return
				}
				if err := use(p, uint16(r)); err != nil {
					t.Error(err)
				}
				p.Close()
				if got := gw.lookup(a); got != nil {
					t.Errorf("lookup(%v) after Close = %p, want none", a, got)
				}
			}
		})
	}
	for i := range contended {
		a := seqAddr(owned + i)
		for range racers {
			wg.Go(func() {
				for r := range tries {
					p, err := gw.Attach(a, testHeadroom, 0)
					if errors.Is(err, ErrAddrInUse) {
						runtime.Gosched()
						continue
					}
					if err != nil {
						t.Errorf("Attach(%v) = %v", a, err)
						return
					}
					if n := holders[i].Add(1); n != 1 {
						t.Errorf("%d ports hold %v at once", n, a)
					}
					if err := use(p, uint16(r)); err != nil {
						t.Error(err)
					}
					holders[i].Add(-1)
					p.Close()
				}
			})
		}
	}
	wg.Wait()
	close(stop)
	<-sampled

	left := 0
	gw.ports.each(func(*Port) { left++ })
	if left != 0 {
		t.Fatalf("%d ports left in the table after every port closed", left)
	}
	n := held.Load()
	if n < owned*rounds+contended {
		t.Fatalf("only %d rounds held a port", n)
	}
	got := trafficOf(gw.Stats())
	req := uint64(len(echoRequest(cliAddr, gwAddr, 0)))
	want := [4]uint64{n, n * req, n, n * req} // an echo reply is as long as its request
	for i := range got {
		got[i] -= st0[i]
	}
	if got != want {
		t.Fatalf("%v = %v, want %v (%d echo exchanges)", trafficNames, got, want, n)
	}
}
