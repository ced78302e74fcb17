package tally

import (
	"sync"
	"testing"
)

// TestExactAcrossRetire: owners count while they are retired, one by
// one; a sampler's sums never go down, and the final sum is every count
// made, exactly (whether Retire's take or the owner's late take moved it).
func TestExactAcrossRetire(t *testing.T) {
	const owners, per = 8, 5000
	var tot Totals
	cs := make([]Counters, owners)
	var mu sync.Mutex
	live := map[*Counters]bool{}
	for i := range cs {
		live[&cs[i]] = true
	}
	walk := func(add func(*Counters)) {
		mu.Lock()
		defer mu.Unlock()
		for c := range live {
			add(c)
		}
	}
	var wg sync.WaitGroup
	for i := range cs {
		c := &cs[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range per {
				c.AddIn(1)
				c.AddOut(2)
				if j == per/2 {
					tot.Retire(c, func() { mu.Lock(); delete(live, c); mu.Unlock() })
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var last Sum
	for sampling := true; sampling; {
		select {
		case <-done:
			sampling = false
		default:
		}
		s := tot.Sum(walk)
		if s.PacketsIn < last.PacketsIn || s.BytesIn < last.BytesIn || s.PacketsOut < last.PacketsOut || s.BytesOut < last.BytesOut {
			t.Fatalf("sum went down: %+v after %+v", s, last)
		}
		last = s
	}
	want := Sum{PacketsIn: owners * per, BytesIn: owners * per, PacketsOut: owners * per, BytesOut: 2 * owners * per}
	if got := tot.Sum(walk); got != want {
		t.Fatalf("sum %+v, want %+v", got, want)
	}
}
