package dnsproxy

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// This file runs real unbound instances as the corporate and public DNS
// servers, plus test doubles for broken servers.

// The corporate server's zones. Search is corp.example then lab.example;
// intranet exists in both (the first suffix must win), printer only in
// the second. unbound serves them as a recursive resolver would (auth-zone
// for-upstream), so CNAME chains across zones are chased.
var corpZones = map[string]string{
	"corp.example.": `
@        300 IN SOA ns hostmaster 1 3600 600 86400 60
@        300 IN NS ns
ns       300 IN A 10.1.0.1
intranet 300 IN A 10.1.0.10
intranet 300 IN AAAA fd00::10
wiki     300 IN A 10.1.0.20
www      300 IN CNAME web
web      300 IN CNAME lb
lb       300 IN A 10.1.0.30
ext      300 IN CNAME printer.lab.example.
big      300 IN TXT ` + bigTXT() + `
`,
	"lab.example.": `
@        300 IN SOA ns hostmaster 1 3600 600 86400 60
@        300 IN NS ns
ns       300 IN A 10.2.0.1
intranet 300 IN A 10.2.0.10
printer  300 IN A 10.2.0.5
`,
	"10.in-addr.arpa.": `
@           300 IN SOA ns.corp.example. hostmaster.corp.example. 1 3600 600 86400 60
@           300 IN NS ns.corp.example.
10.0.1      300 IN PTR intranet.corp.example.
`,
}

// bigTXTStrings and bigTXTLen size a TXT record (10 strings of 200 bytes)
// larger than the 1232-byte EDNS size, so UDP answers are truncated.
const (
	bigTXTStrings = 10
	bigTXTLen     = 200
)

func bigTXT() string {
	var b strings.Builder
	for i := range bigTXTStrings {
		fmt.Fprintf(&b, `"%s" `, strings.Repeat(string(rune('a'+i)), bigTXTLen))
	}
	return strings.TrimSpace(b.String())
}

// publicZones are the "public resolver"'s zones.
var publicZones = map[string]string{
	"public.example.": `
@   300 IN SOA ns hostmaster 1 3600 600 86400 60
@   300 IN NS ns
ns  300 IN A 192.0.2.1
www 300 IN A 192.0.2.80
`,
	// A public single-label name: must never win over a search suffix.
	"intranet.": `
@   300 IN SOA ns.public.example. hostmaster.public.example. 1 3600 600 86400 60
@   300 IN NS ns.public.example.
@   300 IN A 192.0.2.99
`,
}

// unboundBinary finds unbound or stops the test: a missing dependency is
// fatal in CI and locally (the tests are the spec), skipped only in -short.
func unboundBinary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("unbound"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/unbound"); err == nil {
		return "/usr/sbin/unbound"
	}
	if testing.Short() && os.Getenv("CI") != "true" {
		t.Skip("unbound not installed (run scripts/deps.sh)")
	}
	t.Fatal("unbound not installed: run scripts/deps.sh (apt-get install -y unbound)")
	return ""
}

// startUnbound runs unbound on 127.0.0.1 serving zones (apex -> zone file
// body) and refusing every other name, so it never contacts the internet.
// It returns its "ip:port" once it answers and is killed at cleanup.
func startUnbound(t testing.TB, zones map[string]string) string {
	t.Helper()
	bin := unboundBinary(t)
	dir := t.TempDir()
	var conf strings.Builder
	conf.WriteString("\tlocal-zone: \".\" refuse\n")
	var auth strings.Builder
	var readyName string
	for _, apex := range slices.Sorted(maps.Keys(zones)) {
		file := filepath.Join(dir, apex+"zone")
		if err := os.WriteFile(file, []byte("$ORIGIN "+apex+"\n"+zones[apex]), 0o600); err != nil {
			t.Fatal(err)
		}
		// A transparent local zone lets the name past the "." refusal.
		fmt.Fprintf(&conf, "\tlocal-zone: %q transparent\n", apex)
		fmt.Fprintf(&auth, "auth-zone:\n\tname: %q\n\tzonefile: %q\n\tfor-downstream: no\n\tfor-upstream: yes\n\tfallback-enabled: no\n", apex, file)
		readyName = apex
	}
	const attempts = 5 // a free port picked here can be taken before unbound binds it
	var lastErr error
	for range attempts {
		port := freePort(t)
		confFile := filepath.Join(dir, fmt.Sprintf("unbound-%d.conf", port))
		cfg := fmt.Sprintf(`server:
	interface: 127.0.0.1
	port: %d
	do-daemonize: no
	chroot: ""
	username: ""
	directory: %q
	pidfile: %q
	use-syslog: no
	logfile: ""
	verbosity: 0
	do-ip6: no
	num-threads: 1
	module-config: "iterator"
	access-control: 127.0.0.0/8 allow
%s%s
remote-control:
	control-enable: no
`, port, dir, filepath.Join(dir, "unbound.pid"), conf.String(), auth.String())
		if err := os.WriteFile(confFile, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd := exec.Command(bin, "-d", "-c", confFile)
		cmd.Stdout, cmd.Stderr = &stderr, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if err := waitReady(addr, readyName, exited); err != nil {
			cmd.Process.Kill()
			<-exited
			lastErr = fmt.Errorf("%v; unbound output: %s", err, stderr.String())
			continue
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
		})
		return addr
	}
	t.Fatalf("unbound did not start: %v", lastErr)
	return ""
}

// waitReady polls addr with an SOA query for zone until it answers
// NOERROR (bounded: 10 s).
func waitReady(addr, zone string, exited <-chan error) error {
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion(zone, dns.TypeSOA)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("unbound exited: %v", err)
		default:
		}
		if r, _, err := c.Exchange(m, addr); err == nil && r.Rcode == dns.RcodeSuccess {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("unbound on %s not ready after 10s", addr)
}

// freePort returns a port free for both UDP and TCP on 127.0.0.1.
func freePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// closedPort returns an address with nothing listening on UDP or TCP.
func closedPort(t testing.TB) string {
	return fmt.Sprintf("127.0.0.1:%d", freePort(t))
}

// blackhole returns an address whose UDP socket never answers and whose
// TCP listener never reads.
func blackhole(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

// relay is a counting UDP relay in front of a server: it shows which
// queries reach the upstream.
type relay struct {
	addr  string
	count atomic.Int64
	names sync.Map // question name -> *atomic.Int64
}

func startRelay(t testing.TB, upstream string) *relay {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{addr: pc.LocalAddr().String()}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			r.count.Add(1)
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) == nil && len(q.Question) == 1 {
				v, _ := r.names.LoadOrStore(strings.ToLower(q.Question[0].Name), new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
			}
			req := bytes.Clone(buf[:n])
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("udp", upstream)
				if err != nil {
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Second))
				c.Write(req)
				rb := make([]byte, 65535)
				n, err := c.Read(rb)
				if err == nil {
					pc.WriteTo(rb[:n], from)
				}
			}()
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
	return r
}

// queriesFor returns how many queries for name reached the relay.
func (r *relay) queriesFor(name string) int64 {
	if v, ok := r.names.Load(strings.ToLower(name)); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

// startProxy serves a new Server on one 127.0.0.1 port (UDP and TCP) and
// closes it at cleanup.
func startProxy(t testing.TB, cfg Config) (*Server, string) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var pc net.PacketConn
	var l net.Listener
	for range 20 {
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	go func() { done <- s.ServePacket(pc) }()
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		for range 2 {
			if err := <-done; err != ErrServerClosed {
				t.Errorf("serve returned %v, want ErrServerClosed", err)
			}
		}
	})
	return s, pc.LocalAddr().String()
}

// query asks addr over network ("udp" or "tcp") with an optional EDNS
// size (0: no EDNS) and returns the answer and the time it took.
func query(t testing.TB, addr, network, name string, qtype uint16, edns uint16) (*dns.Msg, time.Duration) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: network, Timeout: 10 * time.Second, UDPSize: 65535}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	r, _, err := c.ExchangeContext(ctx, m, addr)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r, time.Since(start)
}
