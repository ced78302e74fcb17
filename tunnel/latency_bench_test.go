package tunnel_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// BenchmarkOpenconnectLatencyUnderLoad measures what DTLS exists for:
// the round trip of a small request/response flow (64 bytes each way on a
// TCP connection of its own) while a bulk download runs in the same
// session, with the stock openconnect (kernel tun), over DTLS and over
// TLS only (--no-dtls, MTU 16000), on a clean client link and with 0.5 %
// of packets dropped each way on it (iptables statistic in each end's
// INPUT chain; these machines have no netem, so there is no added delay:
// the link's RTT is ~0.1 ms).
// Inside one TCP connection a lost segment holds back every flow until it
// is retransmitted (head-of-line blocking); over DTLS only the flow that
// lost it waits. Run it alone (root, ~1 minute):
//
//	go test -run '^$' -bench OpenconnectLatencyUnderLoad -benchtime 1x ./tunnel/
//
// Reported per case: rr-p50-us and rr-p99-us (the request/response round
// trips, microseconds) and bulk-Mbit/s (the download meanwhile).
func BenchmarkOpenconnectLatencyUnderLoad(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireTool(b, "openconnect", "iptables")
	tp := testenv.Topology(b)
	cert := testenv.NewCert(b, testenv.GWAddr.String())
	echo := startCorpEcho(b, tp.Corp, 7)
	bulk := startCorpSource(b, tp, 9)
	var logs testenv.LogBuffer
	_, listen := udpGateway(b, tp, cert, 443, &logs, nil)
	for _, tc := range []struct {
		name string
		dtls bool
		loss string // iptables statistic probability, "" for none
	}{
		{"DTLS clean", true, ""},
		{"TLS clean", false, ""},
		{"DTLS loss 0.5%", true, "0.005"},
		{"TLS loss 0.5%", false, "0.005"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if tc.loss != "" {
				for _, ns := range []struct {
					ns *testenv.Netns
					If string
				}{{tp.Client, tp.ClientIf}, {tp.GW, tp.GWClientIf}} {
					// INPUT, not OUTPUT: a packet dropped in the sender's
					// OUTPUT chain fails its sendto (EPERM), which GnuTLS
					// takes for a dead DTLS session; a lossy link is silent.
					rule := []string{"-w", "-I", "INPUT", "-i", ns.If, "-m", "statistic", "--mode", "random", "--probability", tc.loss, "-j", "DROP"}
					ns.ns.Run(b, "iptables", rule...)
					b.Cleanup(func() { rule[1] = "-D"; ns.ns.Run(b, "iptables", rule...) })
				}
			}
			b.Cleanup(func() {
				if b.Failed() {
					b.Logf("gateway log:\n%s", logs.String())
				}
			})
			s := testenv.Openconnect(b, tp.Client, testenv.OCOptions{Server: listen, ServerCertPin: cert.Pin,
				User: "alice", Password: "secret", Mode: testenv.ModeTun, DTLS: tc.dtls})
			defer s.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			for range b.N {
				p50, p99, mbps := latencyUnderLoad(b, ctx, tp, echo.tcp, bulk)
				b.ReportMetric(float64(p50.Microseconds()), "rr-p50-us")
				b.ReportMetric(float64(p99.Microseconds()), "rr-p99-us")
				b.ReportMetric(mbps, "bulk-Mbit/s")
			}
		})
	}
}

// latencyUnderLoad runs a bulk download from src for the duration of 400
// request/response exchanges with the echo at rr (bounded: 400 exchanges
// or 20 s), and returns their p50 and p99 and the download's rate.
func latencyUnderLoad(b *testing.B, ctx context.Context, tp *testenv.Topo, rr, src netip.AddrPort) (p50, p99 time.Duration, mbps float64) {
	b.Helper()
	bc, err := tp.Client.Dial(ctx, "tcp", src.String())
	if err != nil {
		b.Fatal(err)
	}
	defer bc.Close()
	got := make(chan int64, 1)
	start := time.Now()
	go func() {
		n, _ := io.Copy(io.Discard, bc)
		got <- n
	}()
	time.Sleep(time.Second) // the download reaches its pace
	c, err := tp.Client.Dial(ctx, "tcp", rr.String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg, buf := make([]byte, 64), make([]byte, 64)
	var rtts []time.Duration
	deadline := time.Now().Add(20 * time.Second)
	for len(rtts) < 400 && time.Now().Before(deadline) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatalf("exchange %d: %v", len(rtts), err)
		}
		rtts = append(rtts, time.Since(t0))
		time.Sleep(10 * time.Millisecond) // a chatty interactive flow, not a flood
	}
	bc.Close()
	n := <-got
	slices.Sort(rtts)
	return rtts[len(rtts)/2], rtts[len(rtts)*99/100], float64(n) * 8 / time.Since(start).Seconds() / 1e6
}

// startCorpSource serves an endless download on the corp host: every
// connection gets pattern bytes until the client closes it.
func startCorpSource(tb testing.TB, tp *testenv.Topo, port int) netip.AddrPort {
	tb.Helper()
	addr := netip.AddrPortFrom(testenv.CorpAddr, uint16(port))
	l, err := tp.Corp.Listen("tcp", addr.String())
	if err != nil {
		tb.Fatal(err)
	}
	block := testenv.Pattern(64 << 10)
	testenv.ServeListener(tb, l, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(2 * time.Minute)) // bounded, whatever the client does
		for {
			if _, err := c.Write(block); err != nil {
				return
			}
		}
	})
	return addr
}
