package acdtls

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
)

// BenchmarkPSKRecords measures pion's cost per 1400-byte record (a full
// tunnel packet plus type byte) through a PSK-mode Conn pair over loopback
// UDP, client to server. allocs/op and B/op count both sides (encrypt,
// socket write, socket read, decrypt, hand-over to Read).
//
//   - serial: one record in flight: write, then read it (latency-bound).
//   - window64: up to 64 records in flight (throughput-bound; 64×1.5 kB
//     stays well inside the default socket buffer, so nothing is dropped).
func BenchmarkPSKRecords(b *testing.B) {
	for _, s := range []struct {
		name string
		id   dtls.CipherSuiteID
	}{
		{"AES128GCM", dtls.TLS_PSK_WITH_AES_128_GCM_SHA256},
		{"CHACHA20", dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256},
	} {
		for _, window := range []int{1, 64} {
			name := s.name + "/serial"
			if window > 1 {
				name = s.name + "/window64"
			}
			b.Run(name, func(b *testing.B) { benchRecords(b, s.id, window) })
		}
	}
}

func benchRecords(b *testing.B, id dtls.CipherSuiteID, window int) {
	key := seq(PSKLen)
	p := pskParams(b)
	r := runHandshake(b, func(first []byte) ([]dtls.ServerOption, error) {
		return p.ServerOptions(key, nil, nil)
	}, pskClientOptions(key, p.AppID, id), false, handshakeTimeout)
	if r.clientErr != nil || r.serverErr != nil {
		b.Fatalf("handshake: %v / %v", r.clientErr, r.serverErr)
	}
	if cs, _ := r.client.ConnectionState(); cs.CipherSuiteID != id {
		b.Fatalf("suite %v", cs.CipherSuiteID)
	}
	rec := bytes.Repeat([]byte{0x45}, 1400)
	buf := make([]byte, 8192)
	if err := r.server.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	b.ResetTimer()

	if window == 1 {
		for range b.N {
			if _, err := r.client.Write(rec); err != nil {
				b.Fatal(err)
			}
			if n, err := r.server.Read(buf); err != nil || n != len(rec) {
				b.Fatalf("read %d, %v", n, err)
			}
		}
	} else {
		credits := make(chan struct{}, window)
		readErr := make(chan error, 1)
		go func() {
			for range b.N {
				if n, err := r.server.Read(buf); err != nil || n != len(rec) {
					readErr <- errors.Join(err, errors.New("short or failed read"))
					return
				}
				<-credits
			}
			readErr <- nil
		}()
		for range b.N {
			select {
			case credits <- struct{}{}:
			case err := <-readErr:
				b.Fatal(err)
			}
			if _, err := r.client.Write(rec); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-readErr; err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}
