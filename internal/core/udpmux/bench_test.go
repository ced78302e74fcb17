package udpmux

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkKernel and BenchmarkFallback push datagrams (half QUIC, half
// DTLS, 1200 bytes like a full QUIC packet) from one loopback client
// through each path and report delivered datagrams per second. A window of
// benchWindow datagrams in flight keeps the sender from simply overrunning
// the receive buffers, so the number measures the demultiplexer.
func BenchmarkKernel(b *testing.B) {
	if len(paths()) < 2 {
		b.Skip("kernel path is Linux-only")
	}
	benchmarkPath(b, paths()[0])
}

func BenchmarkFallback(b *testing.B) {
	benchmarkPath(b, path{name: "fallback", cfg: Config{ForceFallback: true}})
}

const (
	benchWindow  = 256  // datagrams in flight; well under the 1024 queue
	benchSize    = 1200 // bytes; a typical full-size QUIC packet
	benchLostAge = 50 * time.Millisecond
)

func benchmarkPath(b *testing.B, p path) {
	m := listenPath(b, p, "udp", "127.0.0.1:0")
	growReadBuffer(b, m.QUIC())
	growReadBuffer(b, m.DTLS())
	c := client(b, m.LocalAddr())
	to := m.LocalAddr()

	credit := make(chan struct{}, benchWindow)
	for range benchWindow {
		credit <- struct{}{}
	}
	var received atomic.Int64
	var wg sync.WaitGroup
	for _, conn := range []net.PacketConn{m.QUIC(), m.DTLS()} {
		wg.Go(func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := conn.ReadFrom(buf); err != nil {
					return
				}
				received.Add(1)
				select {
				case credit <- struct{}{}:
				default:
				}
			}
		})
	}

	q := make([]byte, benchSize)
	q[0] = quicShort
	d := make([]byte, benchSize)
	d[0] = dtlsApp
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		select {
		case <-credit:
		case <-time.After(benchLostAge):
			// A window's worth went missing; send anyway.
		}
		pkt := q
		if i%2 == 1 {
			pkt = d
		}
		if _, err := c.WriteTo(pkt, to); err != nil {
			b.Fatal(err)
		}
	}
	for received.Load() < int64(b.N) && time.Since(start) < time.Duration(b.N)*time.Millisecond+time.Second {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	got := received.Load()
	b.ReportMetric(float64(got)/elapsed.Seconds(), "dgrams/s")
	b.ReportMetric(float64(int64(b.N)-got)/float64(b.N)*100, "%lost")
	m.Close()
	wg.Wait()
}
