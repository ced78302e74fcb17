package netstack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// TestCloseDuringBursts closes a port while its TCP and UDP flows move data
// in short bursts both ways, so that readers are being started, re-armed
// and aborted at every point of their life: every flow must end (the
// counts return to zero, Stack.Close returns, and the package's goleak
// check finds no goroutine left). Rounds close the port after different
// delays.
func TestCloseDuringBursts(t *testing.T) {
	eachDialer(t, func(t *testing.T, d Dialer) {
		for round := range 3 {
			closeDuringBursts(t, d, time.Duration(100+70*round)*time.Millisecond)
		}
	})
}

func closeDuringBursts(t *testing.T, d Dialer, after time.Duration) {
	const flows = 16
	gw := newGW(t, func(c *Config) { c.Dialer = d })
	// The server writes 1 KiB, pauses, and again, so the gateway's reader
	// finds the socket empty (and re-arms) between bursts; it discards
	// what it reads.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpDst := netip.AddrPortFrom(far, uint16(l.Addr().(*net.TCPAddr).Port))
	testenv.ServeListener(t, l, func(c net.Conn) {
		done := make(chan struct{})
		go func() { io.Copy(io.Discard, c); close(done) }()
		b := make([]byte, 1024)
		for {
			if _, err := c.Write(b); err != nil {
				break
			}
			time.Sleep(time.Millisecond)
		}
		c.Close()
		<-done
	})
	udpPort := udpServer(t, func(b []byte) []byte { return b })
	c := newClient(t, gw, cliAddr, 0)

	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []io.Closer
	keep := func(cl io.Closer) { mu.Lock(); conns = append(conns, cl); mu.Unlock() }
	for range flows {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tc, err := c.dialTCP(ctx, tcpDst)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		keep(tc)
		uc, err := c.dialUDP(netip.AddrPortFrom(far, udpPort))
		if err != nil {
			t.Fatal(err)
		}
		keep(uc)
		wg.Add(3)
		go func() { // TCP down: read until the flow is reset or closed
			defer wg.Done()
			io.Copy(io.Discard, tc)
		}()
		go func() { // TCP up: small writes with pauses
			defer wg.Done()
			b := make([]byte, 512)
			for {
				if _, err := tc.Write(b); err != nil {
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
		go func() { // UDP both ways
			defer wg.Done()
			b := make([]byte, 256)
			for {
				if _, err := uc.Write(b); err != nil {
					return
				}
				uc.SetReadDeadline(time.Now().Add(time.Second))
				if _, err := uc.Read(b); err != nil {
					return
				}
			}
		}()
	}
	waitFor(t, "flows open", func() bool {
		st := gw.Stats()
		return st.TCPActive == flows && st.UDPActive == flows
	})
	time.Sleep(after)
	c.port.Close()
	waitFor(t, "flows ended by Port.Close", func() bool {
		st := gw.Stats()
		return st.TCPActive == 0 && st.UDPActive == 0
	})
	for _, cl := range conns { // the client's side never hears of the UDP flows' end
		cl.Close()
	}
	wg.Wait()
}
