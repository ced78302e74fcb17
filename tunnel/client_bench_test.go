package tunnel

import (
	"context"
	"io"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// allocsPerPacket reports heap allocations of the whole process (client
// and gateway) per IP packet the gateway's stack moved, over fn, and the
// share of the client's TCP segments it sent again (loss in the tunnel:
// on loopback there should be none).
func allocsPerPacket(b *testing.B, g *Gateway, c *Client, fn func()) {
	var m0, m1 runtime.MemStats
	s0 := g.Stats().Stack
	st, _, err := c.stack()
	if err != nil {
		b.Fatal(err)
	}
	c0 := st.Stats()
	runtime.ReadMemStats(&m0)
	fn()
	runtime.ReadMemStats(&m1)
	s1 := g.Stats().Stack
	c1 := st.Stats()
	if pk := (s1.PacketsIn - s0.PacketsIn) + (s1.PacketsOut - s0.PacketsOut); pk > 0 {
		b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/float64(pk), "allocs/pkt")
	}
	if sent := c1.TCPSegmentsSent - c0.TCPSegmentsSent; sent > 0 {
		b.ReportMetric(100*float64(c1.TCPRetransmits-c0.TCPRetransmits)/float64(sent), "%retransmitted")
	}
}

// BenchmarkClient measures the Go client through the gateway to a local
// sink, over QUIC and TLS: one flow, 16 flows, and the round trip of a
// 64-byte request/response.
//
//	go test -run '^$' -bench BenchmarkClient -benchtime 3s ./tunnel/
func BenchmarkClient(b *testing.B) {
	for _, mode := range []TransportMode{TransportQUIC, TransportTLS} {
		b.Run(mode.String(), func(b *testing.B) {
			g, addr := startGateway(b, nil)
			c := dialClient(b, addr, func(cc *ClientConfig) { cc.Transport = mode })
			dst := testenv.LoopCorp(testenv.SinkServer(b)).String()
			chunk := make([]byte, 128<<10)

			for _, flows := range []int{1, 16} {
				b.Run(itoa(uint16(flows))+"flow", func(b *testing.B) {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					conns := make([]net.Conn, flows)
					for i := range conns {
						conn, err := c.DialContext(ctx, "tcp", dst)
						if err != nil {
							b.Fatal(err)
						}
						defer conn.Close()
						conns[i] = conn
					}
					b.SetBytes(int64(len(chunk)))
					b.ResetTimer()
					allocsPerPacket(b, g, c, func() {
						var left atomic.Int64
						left.Store(int64(b.N))
						var wg sync.WaitGroup
						for _, conn := range conns {
							wg.Add(1)
							go func() {
								defer wg.Done()
								for left.Add(-1) >= 0 {
									if _, err := conn.Write(chunk); err != nil {
										b.Error(err)
										return
									}
								}
							}()
						}
						wg.Wait()
					})
				})
			}

			b.Run("rtt64", func(b *testing.B) {
				echo := testenv.LoopCorp(testenv.EchoServer(b))
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				conn, err := c.DialContext(ctx, "tcp", echo.String())
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				req, resp := make([]byte, 64), make([]byte, 64)
				rtts := make([]time.Duration, 0, b.N)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					t0 := time.Now()
					if _, err := conn.Write(req); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(conn, resp); err != nil {
						b.Fatal(err)
					}
					rtts = append(rtts, time.Since(t0))
				}
				b.StopTimer()
				slices.Sort(rtts)
				b.ReportMetric(float64(rtts[len(rtts)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(rtts[len(rtts)*99/100].Microseconds()), "p99-µs")
			})
		})
	}
}
