package tunnel

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// TestDTLSBatchSegmentation sends batches of records through a loopback
// UDP socket with and without UDP segmentation offload and expects the
// receiver to see the same datagrams, in order, either way: runs of equal
// sizes, a shorter last record, a longer record that starts a new run,
// more records than one segmented send may carry, and single records.
func TestDTLSBatchSegmentation(t *testing.T) {
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	tx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	if !udpGSOSupported(tx) {
		t.Fatal("UDP_SEGMENT unsupported on this kernel (Linux 4.18+ has it)")
	}
	repeat := func(n, size int) []int {
		s := make([]int, n)
		for i := range s {
			s[i] = size
		}
		return s
	}
	cases := []struct {
		name  string
		sizes []int
		runs  int // segmented sends expected
	}{
		{"one record", []int{1434}, 1},
		{"equal run", repeat(10, 1434), 1},
		{"shorter last", append(repeat(5, 1434), 600), 1},
		{"shorter middle ends the run", []int{1434, 1434, 80, 1434, 1434}, 2},
		{"longer starts a run", []int{600, 600, 1434, 1434}, 2},
		{"over the byte limit", repeat(writeBatch, 1434), 2}, // 64 × 1434 > gsoMaxBytes
		{"tiny records", repeat(writeBatch, 40), 1},
	}
	for _, gso := range []bool{false, true} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s gso=%v", tc.name, gso), func(t *testing.T) {
				s := &dtlsServer{g: &Gateway{log: slog.New(slog.DiscardHandler)}, pc: tx, bio: newBatchIO(tx)}
				s.gso.Store(gso)
				ch := &dtlsChannel{peer: &dtlsPeer{s: s, raddr: rx.LocalAddr()}}
				b := dtlsBatches.Get().(*dtlsBatch)
				var want [][]byte
				for i, n := range tc.sizes {
					rec := bytes.Repeat([]byte{byte(i)}, n)
					want = append(want, rec)
					addRaw(b, ch, rec)
				}
				runs := 0
				if gso && len(tc.sizes) > 1 {
					b.planRuns()
					runs = len(b.runs)
					if runs != tc.runs {
						t.Errorf("%d segmented sends, want %d", runs, tc.runs)
					}
				}
				if err := b.send(); err != nil {
					t.Fatal(err)
				}
				dtlsBatches.Put(b)
				buf := make([]byte, 2048)
				for i, w := range want {
					rx.SetReadDeadline(time.Now().Add(5 * time.Second))
					n, err := rx.Read(buf)
					if err != nil {
						t.Fatalf("datagram %d: %v", i, err)
					}
					if !bytes.Equal(buf[:n], w) {
						t.Fatalf("datagram %d: %d bytes of %d, want %d of %d", i, n, buf[0], len(w), w[0])
					}
				}
				if !s.gso.Load() && gso {
					t.Error("segmentation switched itself off")
				}
			})
		}
	}
}

// addRaw is dtlsBatch.add for a record that is already sealed.
func addRaw(b *dtlsBatch, ch *dtlsChannel, rec []byte) {
	b.ch = ch
	off := len(b.arena)
	b.arena = append(b.arena, rec...)
	i := len(b.msgs)
	b.bufs[i] = b.arena[off:]
	b.msgs = append(b.msgs, ipv4.Message{Buffers: b.bufs[i : i+1], Addr: ch.peer.raddr})
}
