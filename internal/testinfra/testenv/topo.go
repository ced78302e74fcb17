package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// The standard topology's addresses (RFC 2544 test range only):
//
//	[client] 198.18.0.1/30 ⇄ 198.18.0.2/30 [gw] 198.19.0.1/24 ⇄ 198.19.0.2/24 [corp]
var (
	ClientAddr = netip.MustParseAddr("198.18.0.1") // client's underlay address
	GWAddr     = netip.MustParseAddr("198.18.0.2") // gateway's client-facing address (listen here)
	GWCorpAddr = netip.MustParseAddr("198.19.0.1") // gateway's corp-side address
	CorpAddr   = netip.MustParseAddr("198.19.0.2") // the corp host (HTTP server)
	CorpNet    = netip.MustParsePrefix("198.19.0.0/24")
)

// CorpPage is the body of GET / on the corp HTTP server.
const CorpPage = "underpass testenv corp page\n"

// maxBytes caps /bytes?n=: 1 GiB is more than any test moves through a tunnel
// and keeps a typo from streaming forever.
const maxBytes = 1 << 30

// Topo is the standard three-namespace layout. The client has no route to
// corp, and gw drops every forwarded packet entering or leaving through its
// client-facing interface, so the only path from client to corp is a tunnel
// terminated in gw (a userspace gateway re-originating flows from GWCorpAddr,
// or a kernel tun device).
type Topo struct {
	Client, GW, Corp *Netns

	ClientIf   string // client's veth (to gw)
	GWClientIf string // gw's veth to the client
	GWCorpIf   string // gw's veth to corp
	CorpIf     string // corp's veth (to gw)
}

// Topology builds the standard client ⇄ gw ⇄ corp namespaces, checks that the
// client reaches gw but not corp, and removes everything in t.Cleanup.
func Topology(t testing.TB) *Topo {
	t.Helper()
	RequireRoot(t)
	RequireTool(t, "ip", "iptables")
	tp := &Topo{Client: NewNetns(t, "client"), GW: NewNetns(t, "gw"), Corp: NewNetns(t, "corp")}
	tp.ClientIf, tp.GWClientIf = Link(t, tp.Client, tp.GW, netip.PrefixFrom(ClientAddr, 30), netip.PrefixFrom(GWAddr, 30))
	tp.GWCorpIf, tp.CorpIf = Link(t, tp.GW, tp.Corp, netip.PrefixFrom(GWCorpAddr, 24), netip.PrefixFrom(CorpAddr, 24))
	for _, ns := range []*Netns{tp.Client, tp.GW, tp.Corp} {
		ns.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=0")
	}
	// Isolation even when a test (or a kernel-tun gateway) turns forwarding on.
	tp.GW.Run(t, "iptables", "-w", "-A", "FORWARD", "-i", tp.GWClientIf, "-j", "DROP")
	tp.GW.Run(t, "iptables", "-w", "-A", "FORWARD", "-o", tp.GWClientIf, "-j", "DROP")
	tp.check(t)
	return tp
}

// check proves the underlay works and the client cannot reach corp directly.
func (tp *Topo) check(t testing.TB) {
	t.Helper()
	l, err := tp.GW.Listen("tcp", net.JoinHostPort(GWAddr.String(), "0"))
	if err != nil {
		t.Fatalf("testenv: listen in gw: %v", err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // local veth: ms
	defer cancel()
	c, err := tp.Client.Dial(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("testenv: topology broken: client cannot reach gw: %v", err)
	}
	c.Close()
	c, err = tp.Client.Dial(ctx, "tcp", net.JoinHostPort(CorpAddr.String(), "9"))
	if err == nil {
		c.Close()
	}
	if !errors.Is(err, errNoRoute) {
		t.Fatalf("testenv: ISOLATION BROKEN: client dial to corp: %v (want network unreachable)", err)
	}
}

// EnableForwarding turns on IPv4 forwarding in gw and masquerades pool out of
// the corp-side interface: what a kernel-tun gateway like ocserv needs.
// Underpass (userspace) must work without it.
func (tp *Topo) EnableForwarding(t testing.TB, pool netip.Prefix) {
	t.Helper()
	tp.GW.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	tp.GW.Run(t, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", pool.String(), "-o", tp.GWCorpIf, "-j", "MASQUERADE")
}

// ServeHTTP starts an HTTP server in corp on CorpAddr:port (0 = any free
// port), served by this test process, and returns its base URL
// ("http://198.19.0.2:PORT"). Endpoints:
//
//	/          CorpPage
//	/bytes?n=N N bytes of Pattern (Content-Length set)
//	/whoami    the client address the server sees ("198.19.0.1" behind a userspace gateway)
func (tp *Topo) ServeHTTP(t testing.TB, port int) string {
	t.Helper()
	return serveCorpHTTP(t, tp.Corp, port)
}

// serveCorpHTTP serves corpHandler in corp on CorpAddr:port.
func serveCorpHTTP(t testing.TB, corp *Netns, port int) string {
	t.Helper()
	l, err := corp.Listen("tcp", net.JoinHostPort(CorpAddr.String(), strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("testenv: corp HTTP listen: %v", err)
	}
	srv := &http.Server{Handler: corpHandler(), ReadHeaderTimeout: 10 * time.Second} // slowloris guard; tests send headers at once
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return "http://" + l.Addr().String()
}

func corpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, CorpPage)
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || n < 0 || n > maxBytes {
			http.Error(w, fmt.Sprintf("n must be 0..%d", maxBytes), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(n))
		_, _ = io.CopyN(w, &patternReader{}, int64(n))
	})
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		io.WriteString(w, host)
	})
	return mux
}

// patternPeriod is prime so a shifted or dropped block is visible.
const patternPeriod = 251

// Pattern returns the first n bytes that /bytes serves (byte i = i mod 251),
// for checking a download's integrity.
func Pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % patternPeriod)
	}
	return b
}

// patternReader is an endless Pattern; io.CopyN bounds it.
type patternReader struct{ off int }

func (r *patternReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte((r.off + i) % patternPeriod)
	}
	r.off = (r.off + len(p)) % patternPeriod
	return len(p), nil
}
