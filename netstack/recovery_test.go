package netstack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestTailLossRecovers loses the last three segments of a download on the
// client link, once each, the way a burst on a mobile link or a full
// datagram queue loses them: nothing follows them to trigger duplicate
// ACKs, so the gateway's sender must find the loss itself (a timeout, or a
// probe then SACK recovery) and resend both the tail and the holes. The
// loss detection in use is chosen in setTCPOptions.
func TestTailLossRecovers(t *testing.T) {
	const size = 200_000 // many flights, so cwnd and the window have grown
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var srv sync.WaitGroup
	srv.Add(1)
	go func() {
		defer srv.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write(make([]byte, size))
		io.Copy(io.Discard, c) // until the client closes
	}()
	defer srv.Wait()

	gw := newGW(t, nil)
	c := newClient(t, gw, cliAddr, 0)
	l := newTailLoss(size, 3)
	c.drop.Store(&l.fn)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := c.dialTCP(ctx, netip.AddrPortFrom(far, uint16(ln.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// 15 s: recovery takes at most a few retransmission timeouts (200 ms
	// minimum each); a sender that stopped never finishes.
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	n, err := io.CopyN(io.Discard, conn, size)
	if err != nil {
		t.Fatalf("read %d of %d bytes: %v (dropped %d segments)", n, size, err, l.count())
	}
	if d := l.count(); d != 3 {
		t.Fatalf("dropped %d segments, want the last 3", d)
	}
}

// tailLoss drops the first transmission of the last k data segments of a
// size-byte server -> client stream.
type tailLoss struct {
	size, k int
	mu      sync.Mutex
	isn     uint32 // server's initial sequence number (from its SYN-ACK)
	haveISN bool
	mss     int // payload of the first full data segment
	seen    map[uint32]bool
	dropped int
	fn      func([]byte) bool
}

func newTailLoss(size, k int) *tailLoss {
	l := &tailLoss{size: size, k: k, seen: map[uint32]bool{}}
	l.fn = l.decide
	return l
}

func (l *tailLoss) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dropped
}

func (l *tailLoss) decide(p []byte) bool {
	if len(p) < header.IPv4MinimumSize || p[0]>>4 != 4 {
		return false
	}
	ip := header.IPv4(p)
	if ip.Protocol() != uint8(header.TCPProtocolNumber) {
		return false
	}
	tcp := header.TCP(ip.Payload())
	l.mu.Lock()
	defer l.mu.Unlock()
	if tcp.Flags().Contains(header.TCPFlagSyn) {
		l.isn, l.haveISN = tcp.SequenceNumber()+1, true
		return false
	}
	plen := len(tcp) - int(tcp.DataOffset())
	if !l.haveISN || plen == 0 {
		return false
	}
	if l.mss == 0 {
		l.mss = plen
	}
	off := int(tcp.SequenceNumber() - l.isn)
	segs := (l.size + l.mss - 1) / l.mss
	if off < (segs-l.k)*l.mss || off >= l.size {
		return false
	}
	if l.seen[tcp.SequenceNumber()] {
		return false // a retransmission passes
	}
	l.seen[tcp.SequenceNumber()] = true
	l.dropped++
	return true
}
