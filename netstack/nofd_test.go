package netstack

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// TestDialNoFD runs the gateway with the process's open-files limit
// lowered to a few descriptors above those already open, and opens TCP
// flows to a loopback listener (which never accepts: the kernel completes
// the handshakes, so each flow costs the gateway's one socket) until dials
// fail. Each failure is counted in TCPDialFailed and in DialNoFD, the
// client gets a prompt refusal, and one warning (rate-limited) goes to the
// injected logger; a UDP flow refused likewise is counted too.
func TestDialNoFD(t *testing.T) {
	var logs testenv.LogBuffer
	gw := newGW(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dst := netip.AddrPortFrom(far, uint16(l.Addr().(*net.TCPAddr).Port))
	c := newClient(t, gw, cliAddr, 0)

	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
			t.Errorf("restoring RLIMIT_NOFILE: %v", err)
		}
	}
	defer restore()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	const spare = 6 // flows that still fit under the lowered limit
	low := orig
	low.Cur = uint64(len(fds) + spare)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}

	const maxFlows, wantFailures = 4 * spare, 3 // bounded: the limit is hit after about spare flows
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	failures := 0
	for range maxFlows {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := c.dialTCP(ctx, dst)
		cancel()
		if err != nil {
			if !strings.Contains(err.Error(), "refused") {
				t.Fatalf("flow refused with %v, want a reset (connection refused)", err)
			}
			if failures++; failures == wantFailures {
				break
			}
			continue
		}
		conns = append(conns, conn)
	}
	// A UDP flow needs a socket too.
	uc, err := c.dialUDP(netip.AddrPortFrom(far, 9))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	if _, err := uc.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the UDP dial to fail", func() bool { return gw.Stats().UDPDialFailed == 1 })
	restore()

	st := gw.Stats()
	if len(conns) == 0 || failures != wantFailures {
		t.Fatalf("%d flows opened, %d refused; want some of each (limit %d, %d descriptors open before)",
			len(conns), failures, low.Cur, len(fds))
	}
	if st.TCPDialFailed != uint64(failures) || st.DialNoFD != uint64(failures)+1 {
		t.Errorf("TCPDialFailed = %d, DialNoFD = %d; want %d and %d (TCP and UDP)",
			st.TCPDialFailed, st.DialNoFD, failures, failures+1)
	}
	out := logs.String()
	if n := strings.Count(out, "lack of file descriptors"); n != 1 {
		t.Errorf("%d warnings for %d failed dials, want 1 (rate-limited):\n%s", n, failures+1, out)
	}
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "proto=tcp") || !strings.Contains(out, "too many open files") {
		t.Errorf("warning lacks its level, protocol or cause:\n%s", out)
	}
}
