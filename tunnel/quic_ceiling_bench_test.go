package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/underpass/underpass/internal/core/certutil"
	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// BenchmarkQUICCeiling is what quic-go alone moves on this machine, with
// nothing of Underpass on the path: one QUIC connection over loopback,
// client and server in this process, no HTTP/3, no CONNECT-IP, no IP stack.
// It is the ceiling of the QUIC transport (issue 14's 1.5 Gbit/s target
// counts client and gateway in one process, as BenchmarkClient does):
//   - datagram: unreliable DATAGRAM frames (RFC 9221) of the size a
//     CONNECT-IP inner packet of the 1280-byte IPv6 minimum MTU needs, sent
//     as fast as quic-go accepts them; the metric is what arrived (goodput)
//     and the share lost;
//   - stream: one bidirectional stream, written in 128 KiB chunks (the
//     reliable transport TCP inside CONNECT-IP would need to match).
//
// cpu-µs/op is the process's CPU time (user + system, both ends) per
// datagram or chunk: unlike the rates it hardly depends on what else runs
// on the machine, so 2 cores / cpu-µs/op bounds the rate on this box.
//
//	go test -run '^$' -bench QUICCeiling -benchtime 3s -count 3 ./tunnel/
func BenchmarkQUICCeiling(b *testing.B) {
	cert := testenv.NewCert(b, "127.0.0.1")
	tc, err := certutil.LoadPEM(cert.CertFile, cert.KeyFile)
	if err != nil {
		b.Fatal(err)
	}
	qc := &quic.Config{EnableDatagrams: true, InitialPacketSize: 1350,
		InitialConnectionReceiveWindow: 1 << 20, MaxConnectionReceiveWindow: 16 << 20,
		InitialStreamReceiveWindow: 1 << 20, MaxStreamReceiveWindow: 16 << 20}
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*tc}, NextProtos: []string{"bench"}}, qc)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	accepted := make(chan *quic.Conn, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err == nil {
			accepted <- c
		}
	}()
	cli, err := quic.DialAddr(ctx, ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"bench"}}, qc)
	if err != nil {
		b.Fatal(err)
	}
	defer cli.CloseWithError(0, "")
	var srv *quic.Conn
	select {
	case srv = <-accepted:
	case <-ctx.Done():
		b.Fatal("no connection")
	}
	defer srv.CloseWithError(0, "")

	b.Run("datagram", func(b *testing.B) {
		// 1280 bytes of inner packet plus the quarter stream ID and the
		// context ID RFC 9484 datagrams carry (one byte each here).
		payload := make([]byte, 1282)
		var (
			mu       sync.Mutex
			got      int64
			received = make(chan struct{})
		)
		rctx, rcancel := context.WithCancel(ctx)
		go func() {
			defer close(received)
			for {
				d, err := srv.ReceiveDatagram(rctx)
				if err != nil {
					return
				}
				mu.Lock()
				got += int64(len(d))
				mu.Unlock()
			}
		}()
		b.SetBytes(int64(len(payload)))
		b.ResetTimer()
		cpu0 := processCPU(b)
		start := time.Now()
		for range b.N {
			if err := cli.SendDatagram(payload); err != nil {
				var tl *quic.DatagramTooLargeError
				if errors.As(err, &tl) {
					b.Fatalf("a %d-byte datagram does not fit: %v", len(payload), err)
				}
				b.Fatal(err)
			}
		}
		// What is still in flight arrives within a few milliseconds on
		// loopback; 100 ms is far beyond that and is not timed.
		sent := time.Since(start)
		b.StopTimer()
		time.Sleep(100 * time.Millisecond)
		rcancel()
		<-received
		b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		mu.Lock()
		defer mu.Unlock()
		b.ReportMetric(float64(got)*8/sent.Seconds()/1e6, "Mbit/s-received")
		b.ReportMetric(100*(1-float64(got)/float64(int64(b.N)*int64(len(payload)))), "%lost")
	})

	b.Run("stream", func(b *testing.B) {
		str, err := cli.OpenStreamSync(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := str.Write([]byte{0}); err != nil { // the peer sees a stream on its first byte
			b.Fatal(err)
		}
		sstr, err := srv.AcceptStream(ctx)
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, sstr)
			done <- err
		}()
		chunk := make([]byte, 128<<10)
		b.SetBytes(int64(len(chunk)))
		b.ResetTimer()
		cpu0 := processCPU(b)
		for range b.N {
			if _, err := str.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		if err := str.Close(); err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
			b.Fatal(err)
		}
		b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	})
}
