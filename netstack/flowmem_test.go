package netstack

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Flags of TestFlowMemory (go test -run TestFlowMemory ./netstack/ -args
// -flowmem.n=19000 -flowmem.profile=/tmp/fm). Without them the test runs
// at a small size and checks only goroutines.
var (
	flowMemN       = flag.Int("flowmem.n", 0, "TestFlowMemory: flows to open (0: a small CI size, goroutine check only)")
	flowMemProfile = flag.String("flowmem.profile", "", "TestFlowMemory: directory for heap and goroutine profiles of the idle flows")
)

// echoHelperEnv makes the test binary an echo server instead (TestMain
// runs serveFlowMemEcho when it is set), so the flows' far ends cost
// nothing in the process being measured.
const echoHelperEnv = "UNDERPASS_FLOWMEM_ECHO"

// serveFlowMemEcho is the test binary as TestFlowMemory's child process:
// it echoes every loopback TCP connection and UDP datagram until its stdin
// closes, then exits.
func serveFlowMemEcho() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	u, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		b := make([]byte, 2048)
		for {
			n, from, err := u.ReadFrom(b)
			if err != nil {
				return
			}
			u.WriteTo(b[:n], from)
		}
	}()
	fmt.Printf("port %d %d\n", l.Addr().(*net.TCPAddr).Port, u.LocalAddr().(*net.UDPAddr).Port)
	os.Stdout.Sync()
	go func() { // the parent closes our stdin when done (or dies)
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			// A plain loop: io.Copy would splice(2) through a pipe,
			// two more descriptors per connection.
			b := make([]byte, 512)
			for {
				n, err := c.Read(b)
				if err != nil {
					return
				}
				if _, err := c.Write(b[:n]); err != nil {
					return
				}
			}
		}()
	}
}

// startEcho runs the echo helper in a child process and returns its TCP
// and UDP ports.
func startEcho(t *testing.T) (tcpPort, udpPort uint16) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), echoHelperEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	rd := bufio.NewReader(out)
	line, err := rd.ReadString('\n')
	if err != nil {
		t.Fatalf("echo helper: %v", err)
	}
	go io.Copy(os.Stderr, rd) // anything else it says
	var tp, up uint16
	if _, err := fmt.Sscanf(line, "port %d %d", &tp, &up); err != nil {
		t.Fatalf("echo helper said %q: %v", line, err)
	}
	return tp, up
}

// rss is the process's resident set (/proc/self/statm) after two GCs and
// returning free memory to the OS.
func rss(t *testing.T) int64 {
	runtime.GC()
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
}

type memPoint struct {
	rss, heap, stack int64
	goroutines       int
}

func measure(t *testing.T) memPoint {
	r := rss(t)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memPoint{rss: r, heap: int64(ms.HeapInuse), stack: int64(ms.StackInuse), goroutines: runtime.NumGoroutine()}
}

// report logs m's cost per flow over base, and what 64,000 such flows
// would take (the reference product's connections per server).
func (m memPoint) report(t *testing.T, what string, base memPoint, n int) {
	per := (m.rss - base.rss) / int64(n)
	t.Logf("%s: RSS %d B/flow, heap %d B/flow, stacks %d B/flow, %.2f goroutines/flow; 64,000 such flows ≈ %d MiB",
		what, per, (m.heap-base.heap)/int64(n), (m.stack-base.stack)/int64(n),
		float64(m.goroutines-base.goroutines)/float64(n), per*64000>>20)
}

// TestFlowMemory opens n flows through the stack to an echo server in a
// child process (hand-built client packets, so no client stack is
// measured) and reports RSS, heap and stack per flow and goroutines per
// flow: for TCP idle after the handshake (never used) and idle again after
// one byte each way (used); for UDP idle after one datagram each way. It
// checks that an idle flow parks no goroutine of its own and that
// Port.Close ends idle flows; memory is reported, not asserted.
func TestFlowMemory(t *testing.T) {
	n := *flowMemN
	if n == 0 {
		n = 200
	}
	if n > 40000 {
		t.Fatalf("-flowmem.n=%d: client ports are 20000+i, so at most 40000 flows", n)
	}
	tcpEcho, udpEcho := startEcho(t)
	t.Run("tcp", func(t *testing.T) { flowMemTCP(t, n, netip.AddrPortFrom(far, tcpEcho)) })
	t.Run("udp", func(t *testing.T) { flowMemUDP(t, n, netip.AddrPortFrom(far, udpEcho)) })
}

func flowMemTCP(t *testing.T, n int, dst netip.AddrPort) {
	gw := newGW(t, func(c *Config) {
		c.MaxTCPFlowsPerPort = n
		// Loopback dials to a busy echo process on a loaded 2-core
		// box were seen to outlast the tests' usual 2 s.
		c.DialTimeout = time.Minute
	})
	p, err := gw.Attach(cliAddr, testHeadroom, 1024)
	if err != nil {
		t.Fatal(err)
	}
	src := func(i int) netip.AddrPort { return netip.AddrPortFrom(cliAddr, uint16(20000+i)) }

	base := measure(t)
	// Handshakes, in batches so neither queue overflows.
	const batch = 250
	isn := make(map[uint16]uint32, n) // client port -> the gateway's ISN
	start := time.Now()
	for first := 0; first < n; first += batch {
		last := min(first+batch, n)
		for i := first; i < last; i++ {
			if err := p.Inject(tcpSeg(src(i), dst, 1000, 0, tcpFlagSYN, append(linuxSYNOpts, 0, 0), nil)); err != nil {
				t.Fatal(err)
			}
		}
		for got := first; got < last; {
			b := nextPacketOr(t, p, time.Minute, func() string {
				return fmt.Sprintf("at handshake %d of %d: %+v", got, n, gw.Stats())
			})
			if b[9] != protoTCP || b[33] != tcpFlagSYN|tcpFlagACK {
				continue
			}
			cport := binary.BigEndian.Uint16(b[22:24])
			if _, dup := isn[cport]; !dup { // else a retransmission: ACK it again
				got++
			}
			isn[cport] = binary.BigEndian.Uint32(b[24:28])
			p.Inject(tcpPacket(netip.AddrPortFrom(cliAddr, cport), dst, 1001, isn[cport]+1, tcpFlagACK))
		}
	}
	waitFor(t, "flows established", func() bool { return gw.Stats().TCPActive == int64(n) })
	setup := time.Since(start)
	time.Sleep(200 * time.Millisecond) // let handler goroutines exit
	fresh := measure(t)
	t.Logf("%d flows set up in %v (%d packets out)", n, setup.Round(time.Millisecond), gw.Stats().PacketsOut)
	fresh.report(t, "idle, never used", base, n)

	// One byte each way: the client sends "x", the echo server returns it,
	// the client acknowledges it.
	for first := 0; first < n; first += batch {
		last := min(first+batch, n)
		for i := first; i < last; i++ {
			s := src(i)
			if err := p.Inject(tcpSeg(s, dst, 1001, isn[s.Port()]+1, tcpFlagPSH|tcpFlagACK, nil, []byte("x"))); err != nil {
				t.Fatal(err)
			}
		}
		for got := first; got < last; {
			b := nextPacketOr(t, p, time.Minute, func() string {
				return fmt.Sprintf("at echo %d of %d: %+v", got, n, gw.Stats())
			})
			ihl := int(b[0]&0xf) * 4
			if b[9] != protoTCP {
				continue
			}
			tcp := b[ihl:]
			payload := int(binary.BigEndian.Uint16(b[2:4])) - ihl - int(tcp[12]>>4)*4
			if payload == 0 {
				continue
			}
			got++
			cport := binary.BigEndian.Uint16(tcp[2:4])
			seq := binary.BigEndian.Uint32(tcp[4:8])
			p.Inject(tcpPacket(netip.AddrPortFrom(cliAddr, cport), dst, 1002, seq+uint32(payload), tcpFlagACK))
		}
	}
	if a := gw.Stats().TCPActive; a != int64(n) {
		t.Fatalf("%d flows active after the echo, want %d", a, n)
	}
	time.Sleep(500 * time.Millisecond) // stragglers: delayed ACKs, drains exiting
	used := measure(t)
	used.report(t, "idle, used (1 byte each way)", base, n)

	writeProfiles(t, "tcp")
	// Closing the port resets every idle flow, though none has a
	// goroutine to notice.
	p.Close()
	waitFor(t, "flows ended by Port.Close", func() bool { return gw.Stats().TCPActive == 0 })
	checkNoGoroutines(t, n, base, map[string]memPoint{"never used": fresh, "used": used})
}

// flowMemUDP opens n UDP flows (client ports 20000+i), each carrying one
// datagram each way, and measures them idle.
func flowMemUDP(t *testing.T, n int, dst netip.AddrPort) {
	gw := newGW(t, func(c *Config) {
		c.MaxUDPFlowsPerPort = n
		c.DialTimeout = time.Minute
		c.UDPIdleTimeout = 10 * time.Minute // longer than the test
	})
	p, err := gw.Attach(cliAddr, testHeadroom, 1024)
	if err != nil {
		t.Fatal(err)
	}
	base := measure(t)
	const batch = 250
	start := time.Now()
	for first := 0; first < n; first += batch {
		last := min(first+batch, n)
		for i := first; i < last; i++ {
			if err := p.Inject(udpPacket(netip.AddrPortFrom(cliAddr, uint16(20000+i)), dst, []byte("x"))); err != nil {
				t.Fatal(err)
			}
		}
		for got := first; got < last; {
			b := nextPacketOr(t, p, time.Minute, func() string {
				return fmt.Sprintf("at reply %d of %d: %+v", got, n, gw.Stats())
			})
			if b[9] == protoUDP {
				got++
			}
		}
	}
	waitFor(t, "flows counted", func() bool { return gw.Stats().UDPActive == int64(n) })
	t.Logf("%d UDP flows set up in %v", n, time.Since(start).Round(time.Millisecond))
	time.Sleep(500 * time.Millisecond) // flow goroutines settle
	used := measure(t)
	used.report(t, "idle, used (1 datagram each way)", base, n)
	writeProfiles(t, "udp")
	p.Close()
	waitFor(t, "flows ended by Port.Close", func() bool { return gw.Stats().UDPActive == 0 })
	checkNoGoroutines(t, n, base, map[string]memPoint{"used": used})
}

// writeProfiles writes heap and goroutine profiles to -flowmem.profile.
func writeProfiles(t *testing.T, prefix string) {
	dir := *flowMemProfile
	if dir == "" {
		return
	}
	for _, name := range []string{"heap", "goroutine"} {
		f, err := os.Create(filepath.Join(dir, prefix+"-"+name+".pprof"))
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	t.Logf("profiles in %s", dir)
}

// checkNoGoroutines fails if n idle flows hold more goroutines than a few
// (the stack's own workers), at any of the points measured.
func checkNoGoroutines(t *testing.T, n int, base memPoint, at map[string]memPoint) {
	for name, m := range at {
		if extra := m.goroutines - base.goroutines; extra > 8 {
			t.Errorf("%s: %d idle flows hold %d goroutines, want none per flow", name, n, extra)
		}
	}
}

// tcpSeg is a hand-built TCP segment with options (a multiple of 4
// bytes) and data.
func tcpSeg(src, dst netip.AddrPort, seq, ack uint32, flags byte, opts, data []byte) []byte {
	h := 20 + len(opts)
	t := make([]byte, h+len(data))
	binary.BigEndian.PutUint16(t[0:2], src.Port())
	binary.BigEndian.PutUint16(t[2:4], dst.Port())
	binary.BigEndian.PutUint32(t[4:8], seq)
	binary.BigEndian.PutUint32(t[8:12], ack)
	t[12] = byte(h/4) << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:16], 65535)
	copy(t[20:], opts)
	copy(t[h:], data)
	binary.BigEndian.PutUint16(t[16:18], l4Checksum(src.Addr(), dst.Addr(), protoTCP, t))
	return ipPacket(src.Addr(), dst.Addr(), protoTCP, t)
}

// linuxSYNOpts are the options of a Linux client's SYN but timestamps
// (which every later segment would then have to carry): MSS 1460,
// SACK permitted, window scale 7.
var linuxSYNOpts = []byte{2, 4, 0x05, 0xb4, 4, 2, 1, 3, 3, 7}

const tcpFlagPSH = 0x08
