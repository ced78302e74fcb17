package testenv

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// LogBuffer is a goroutine-safe io.Writer for capturing logs in tests (for
// example to scan them for secrets).
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// echoDeadline bounds one echo connection, so a stuck test cannot hold the
// server's cleanup forever.
const echoDeadline = 20 * time.Second

// EchoServer serves TCP on 127.0.0.1 until the test ends: each connection
// gets back what it sends until it half-closes, then "bye", then the server
// closes, so a client sees both directions and both half-closes.
func EchoServer(t testing.TB) netip.AddrPort {
	return serveTCP(t, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(echoDeadline))
		_, _ = io.Copy(c, c)
		_, _ = c.Write([]byte("bye"))
	})
}

// SinkServer serves TCP on 127.0.0.1 until the test ends, discarding
// whatever each connection sends (a throughput sink).
func SinkServer(t testing.TB) netip.AddrPort {
	return serveTCP(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
}

// serveTCP runs handle for each connection to a loopback listener until
// the test ends; cleanup waits for every handler.
func serveTCP(t testing.TB, handle func(net.Conn)) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ServeListener(t, l, handle)
	return netip.MustParseAddrPort(l.Addr().String())
}

// ServeListener runs handle for each connection l accepts until the test
// ends; cleanup closes l and waits for every handler. Each connection is
// closed when its handler returns.
func ServeListener(t testing.TB, l net.Listener, handle func(net.Conn)) {
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// ServePacket runs handle for each datagram pc receives (up to 64 KiB, the
// largest UDP payload) until the test ends; cleanup closes pc and waits.
// handle runs on the reading goroutine and may keep b.
func ServePacket(t testing.TB, pc net.PacketConn, handle func(b []byte, from net.Addr)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			handle(append([]byte(nil), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
}

// LoopCorpNet is the in-process tests' stand-in corporate network (RFC
// 2544 test range; the namespace topology's is CorpNet): LoopCorpDialer
// dials its addresses on loopback.
var LoopCorpNet = netip.MustParsePrefix("198.18.0.0/16")

// LoopCorpNet6 is LoopCorpNet's IPv6 counterpart (a ULA /48) for
// dual-stack tests: LoopCorpDialer dials its addresses on ::1.
var LoopCorpNet6 = netip.MustParsePrefix("fd00:1::/48")

// LoopCorpDialer is a gateway's Dialer for in-process tests: it dials
// LoopCorpNet's 198.18.x.y:port as 127.0.0.1:port and LoopCorpNet6's
// [fd00:1::x]:port as [::1]:port, so loopback listeners play corporate
// hosts, and everything else as given. (Loopback itself
// cannot be a tunnel destination: a TCP/IP stack drops packets from 127/8
// arriving on a real interface as martians.)
type LoopCorpDialer struct{}

// DialContext implements netstack.Dialer.
func (LoopCorpDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if ap, err := netip.ParseAddrPort(address); err == nil && LoopCorpNet.Contains(ap.Addr()) {
		address = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()).String()
	} else if err == nil && LoopCorpNet6.Contains(ap.Addr()) {
		address = netip.AddrPortFrom(netip.IPv6Loopback(), ap.Port()).String()
	}
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// LoopCorp maps a loopback listener's address to its stand-in in
// LoopCorpNet (198.18.1.1, same port).
func LoopCorp(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("198.18.1.1"), ap.Port())
}

// LoopCorpDNS serves the loopback corporate zone over UDP on 127.0.0.1
// until the test ends and returns its host:port: echo.corp.example (and
// so the single label "echo" through a search list) has A 198.18.1.1
// (TTL 60 s, cached for a whole test), no other record (NODATA);
// echo6.corp.example has only AAAA fd00:1::1 (in LoopCorpNet6); every
// other name is NXDOMAIN.
func LoopCorpDNS(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		switch {
		case len(q.Question) != 1:
		case q.Question[0].Name == "echo6.corp.example.":
			if q.Question[0].Qtype == dns.TypeAAAA {
				rr, _ := dns.NewRR("echo6.corp.example. 60 IN AAAA fd00:1::1")
				m.Answer = append(m.Answer, rr)
			}
		case q.Question[0].Name != "echo.corp.example.":
			m.Rcode = dns.RcodeNameError
		case q.Question[0].Qtype == dns.TypeA:
			rr, _ := dns.NewRR("echo.corp.example. 60 IN A 198.18.1.1")
			m.Answer = append(m.Answer, rr)
		}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}
