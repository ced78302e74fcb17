package tunnel

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkQUICRestartRecovery: 100 tunnel.Clients over QUIC are signed in
// at a gateway that dies without a word; another gateway with the same site
// key takes its address. Each client keeps sending (one UDP datagram every
// 100 ms, a user's traffic), so its next packet meets the new gateway, whose
// stateless reset (RFC 9000 section 10.3, the key derived from the site
// key) ends the old connection at once; the client reconnects and resumes
// its session. Reported: the time until the first, the median and the last
// client is back, per restart. Without the shared reset key each client
// waits out QUIC's idle timeout instead (2.5 DPD; 25 s here).
//
//	go test -run '^$' -bench QUICRestartRecovery -benchtime 3x ./tunnel/
func BenchmarkQUICRestartRecovery(b *testing.B) {
	const clients = 100
	cfg := restartConfig(b)
	addr, kill := serveUntilKilled(b, cfg, "127.0.0.1:0")
	cs := make([]*Client, clients)
	for i := range cs {
		cs[i] = dialClient(b, addr, func(cc *ClientConfig) { cc.Transport = TransportQUIC })
	}
	echo := net.JoinHostPort("198.18.1.1", itoa(udpEcho(b).Port()))
	var first, median, last []time.Duration
	b.ResetTimer()
	for range b.N {
		before := make([]int, clients)
		for i, c := range cs {
			before[i] = c.Reconnects()
		}
		kill()
		_, kill = serveUntilKilled(b, cfg, addr)
		start := time.Now()
		back := make([]time.Duration, clients)
		var wg sync.WaitGroup
		for i, c := range cs {
			wg.Go(func() {
				// 60 s: far past the 25 s idle timeout a client without the
				// reset would wait; reaching it is a failure, not a figure.
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				for c.Reconnects() == before[i] {
					if ctx.Err() != nil {
						b.Errorf("client %d not back after %v", i, time.Since(start))
						return
					}
					if uc, err := c.DialContext(ctx, "udp", echo); err == nil {
						_, _ = uc.Write([]byte("anyone?"))
						uc.Close()
					}
					time.Sleep(100 * time.Millisecond)
				}
				back[i] = time.Since(start)
			})
		}
		wg.Wait()
		slices.Sort(back)
		first, median, last = append(first, back[0]), append(median, back[clients/2]), append(last, back[clients-1])
	}
	b.StopTimer()
	mid := func(d []time.Duration) float64 { slices.Sort(d); return d[len(d)/2].Seconds() }
	b.ReportMetric(mid(first), "s-first-back")
	b.ReportMetric(mid(median), "s-median-back")
	b.ReportMetric(mid(last), "s-last-back")
}
