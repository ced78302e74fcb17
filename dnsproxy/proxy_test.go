package dnsproxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// answerStrings renders an answer section compactly: "name TYPE data".
func answerStrings(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		h := rr.Header()
		data := strings.TrimPrefix(rr.String(), h.String())
		out = append(out, h.Name+" "+dns.TypeToString[h.Rrtype]+" "+data)
	}
	return out
}

// corpConfig is the corporate setup used by most tests.
func corpConfig(upstreams ...string) Config {
	return Config{
		Upstreams: upstreams,
		Search:    []string{"corp.example", "lab.example"},
		Domains:   []string{"10.in-addr.arpa"},
		Timeout:   500 * time.Millisecond,
	}
}

// TestResolveThroughUnbound covers R-N1/R-N2 answers against a real
// corporate unbound and a real public one.
func TestResolveThroughUnbound(t *testing.T) {
	corp := startUnbound(t, corpZones)
	public := startUnbound(t, publicZones)
	cfg := corpConfig(corp)
	cfg.Public = []string{public}
	_, withPublic := startProxy(t, cfg)
	_, noPublic := startProxy(t, corpConfig(corp))

	tests := []struct {
		name    string
		proxy   string
		qname   string
		qtype   uint16
		rcode   int
		answer  []string // exact answer section
		soa     bool     // authority holds an SOA
		network string
	}{
		{name: "fqdn A", proxy: noPublic, qname: "intranet.corp.example.", qtype: dns.TypeA,
			answer: []string{"intranet.corp.example. A 10.1.0.10"}},
		{name: "fqdn AAAA", proxy: noPublic, qname: "intranet.corp.example.", qtype: dns.TypeAAAA,
			answer: []string{"intranet.corp.example. AAAA fd00::10"}},
		{name: "fqdn over TCP", proxy: noPublic, qname: "wiki.corp.example.", qtype: dns.TypeA, network: "tcp",
			answer: []string{"wiki.corp.example. A 10.1.0.20"}},
		{name: "case preserved in question", proxy: noPublic, qname: "WiKi.CORP.example.", qtype: dns.TypeA,
			answer: []string{"WiKi.CORP.example. A 10.1.0.20"}},
		{name: "cname chain", proxy: noPublic, qname: "www.corp.example.", qtype: dns.TypeA,
			answer: []string{"www.corp.example. CNAME web.corp.example.", "web.corp.example. CNAME lb.corp.example.", "lb.corp.example. A 10.1.0.30"}},
		{name: "cname chain across zones", proxy: noPublic, qname: "ext.corp.example.", qtype: dns.TypeA,
			answer: []string{"ext.corp.example. CNAME printer.lab.example.", "printer.lab.example. A 10.2.0.5"}},
		{name: "nxdomain", proxy: noPublic, qname: "nosuch.corp.example.", qtype: dns.TypeA,
			rcode: dns.RcodeNameError, soa: true},
		{name: "nodata", proxy: noPublic, qname: "wiki.corp.example.", qtype: dns.TypeAAAA, soa: true},
		{name: "extra internal domain (reverse zone)", proxy: noPublic, qname: "10.0.1.10.in-addr.arpa.", qtype: dns.TypePTR,
			answer: []string{"10.0.1.10.in-addr.arpa. PTR intranet.corp.example."}},
		{name: "single label with first suffix", proxy: noPublic, qname: "intranet.", qtype: dns.TypeA,
			answer: []string{"intranet. CNAME intranet.corp.example.", "intranet.corp.example. A 10.1.0.10"}},
		{name: "first suffix wins over public single label", proxy: withPublic, qname: "intranet.", qtype: dns.TypeA,
			answer: []string{"intranet. CNAME intranet.corp.example.", "intranet.corp.example. A 10.1.0.10"}},
		{name: "single label AAAA", proxy: noPublic, qname: "intranet.", qtype: dns.TypeAAAA,
			answer: []string{"intranet. CNAME intranet.corp.example.", "intranet.corp.example. AAAA fd00::10"}},
		{name: "multi-suffix order: second suffix", proxy: noPublic, qname: "printer.", qtype: dns.TypeA,
			answer: []string{"printer. CNAME printer.lab.example.", "printer.lab.example. A 10.2.0.5"}},
		{name: "single label nodata stays with its suffix", proxy: noPublic, qname: "printer.", qtype: dns.TypeAAAA,
			answer: []string{"printer. CNAME printer.lab.example."}, soa: true},
		{name: "single label nowhere", proxy: noPublic, qname: "nosuch.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "single label over TCP", proxy: noPublic, qname: "printer.", qtype: dns.TypeA, network: "tcp",
			answer: []string{"printer. CNAME printer.lab.example.", "printer.lab.example. A 10.2.0.5"}},
		{name: "split DNS: public name to public resolver", proxy: withPublic, qname: "www.public.example.", qtype: dns.TypeA,
			answer: []string{"www.public.example. A 192.0.2.80"}},
		{name: "split DNS: public nxdomain", proxy: withPublic, qname: "nosuch.public.example.", qtype: dns.TypeA,
			rcode: dns.RcodeNameError, soa: true},
		{name: "no public resolver: REFUSED", proxy: noPublic, qname: "www.public.example.", qtype: dns.TypeA,
			rcode: dns.RcodeRefused},
		{name: "ANY: RFC 8482 minimal answer", proxy: noPublic, qname: "intranet.corp.example.", qtype: dns.TypeANY,
			answer: []string{`intranet.corp.example. HINFO "RFC8482" ""`}},
		{name: "ANY outside internal domains without public: REFUSED", proxy: noPublic, qname: "www.public.example.", qtype: dns.TypeANY,
			rcode: dns.RcodeRefused},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			network := tc.network
			if network == "" {
				network = "udp"
			}
			r, _ := query(t, tc.proxy, network, tc.qname, tc.qtype, 1232)
			if r.Rcode != tc.rcode {
				t.Fatalf("rcode %s, want %s\n%v", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode], r)
			}
			if len(r.Question) != 1 || r.Question[0].Name != tc.qname {
				t.Errorf("question %v, want %s as asked", r.Question, tc.qname)
			}
			if !r.Response || !r.RecursionAvailable || r.Truncated {
				t.Errorf("flags: %v", r.MsgHdr)
			}
			if got := answerStrings(r.Answer); !slices.Equal(got, tc.answer) {
				t.Errorf("answer\n got %q\nwant %q", got, tc.answer)
			}
			hasSOA := slices.ContainsFunc(r.Ns, func(rr dns.RR) bool { return rr.Header().Rrtype == dns.TypeSOA })
			if hasSOA != tc.soa {
				t.Errorf("SOA in authority: %v, want %v\n%v", hasSOA, tc.soa, r)
			}
			if r.IsEdns0() == nil {
				t.Errorf("no OPT record in the answer to an EDNS query")
			}
		})
	}
}

// TestUpstreamDown: a dead corporate server must yield SERVFAIL within
// the query timeout, never silence (R-N3).
func TestUpstreamDown(t *testing.T) {
	tests := []struct {
		name     string
		upstream func(testing.TB) string
	}{
		{"nothing listening", closedPort},
		{"blackhole", blackhole},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := corpConfig(tc.upstream(t))
			cfg.Timeout, cfg.QueryTimeout = 300*time.Millisecond, time.Second
			s, addr := startProxy(t, cfg)
			for _, q := range []string{"wiki.corp.example.", "intranet."} {
				r, took := query(t, addr, "udp", q, dns.TypeA, 0)
				if r.Rcode != dns.RcodeServerFailure {
					t.Errorf("%s: rcode %s, want SERVFAIL", q, dns.RcodeToString[r.Rcode])
				}
				if took > cfg.QueryTimeout+200*time.Millisecond { // 200 ms: scheduling slack under -race
					t.Errorf("%s: answered after %v, beyond the %v query timeout", q, took, cfg.QueryTimeout)
				}
			}
			if st := s.Stats(); st.ServFail != 2 || st.UpstreamFailures == 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestFailover: the second server answers when the first is down, and the
// dead one is skipped afterwards.
func TestFailover(t *testing.T) {
	corp := startUnbound(t, corpZones)
	tests := []struct {
		name     string
		first    func(testing.TB) string
		slowOnce bool // the first query waits for the attempt timeout
	}{
		{"first refuses connections", closedPort, false},
		{"first never answers", blackhole, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := corpConfig(tc.first(t), corp)
			cfg.Timeout, cfg.QueryTimeout = 300*time.Millisecond, 2*time.Second
			s, addr := startProxy(t, cfg)
			r, took := query(t, addr, "udp", "intranet.corp.example.", dns.TypeA, 0)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Fatalf("first query: %v", r)
			}
			if tc.slowOnce && took < cfg.Timeout {
				t.Errorf("first query took %v: the blackhole was not tried first", took)
			}
			r, took = query(t, addr, "udp", "wiki.corp.example.", dns.TypeA, 0)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Fatalf("second query: %v", r)
			}
			if took >= cfg.Timeout {
				t.Errorf("second query took %v: the dead server was not skipped", took)
			}
			if st := s.Stats(); st.UpstreamFailures != 1 {
				t.Errorf("upstream failures %d, want 1 (dead server remembered)", st.UpstreamFailures)
			}
		})
	}
}

// TestTruncation: an answer too big for UDP is fetched from the upstream
// over TCP, truncated with TC towards UDP clients, and whole over TCP.
func TestTruncation(t *testing.T) {
	corp := startUnbound(t, corpZones)
	s, addr := startProxy(t, corpConfig(corp))
	const name = "big.corp.example."
	txtLen := func(r *dns.Msg) int {
		n := 0
		for _, rr := range r.Answer {
			if txt, ok := rr.(*dns.TXT); ok {
				for _, s := range txt.Txt {
					n += len(s)
				}
			}
		}
		return n
	}
	// TCP first: the whole record can only have come over TCP from
	// unbound, since our upstream EDNS size is 1232.
	r, _ := query(t, addr, "tcp", name, dns.TypeTXT, 0)
	if r.Rcode != dns.RcodeSuccess || r.Truncated || txtLen(r) != bigTXTStrings*bigTXTLen {
		t.Fatalf("over TCP: rcode %s tc %v txt %d bytes", dns.RcodeToString[r.Rcode], r.Truncated, txtLen(r))
	}
	if st := s.Stats(); st.UpstreamQueries != 2 {
		t.Errorf("upstream exchanges %d, want 2 (UDP truncated, then TCP)", st.UpstreamQueries)
	}
	for _, edns := range []uint16{0, 512, 1232, 4096} {
		r, _ := query(t, addr, "udp", name, dns.TypeTXT, edns)
		if !r.Truncated {
			t.Errorf("udp edns %d: TC not set", edns)
		}
		limit := max(512, min(int(edns), maxUDPSize))
		if n := r.Len(); n > limit {
			t.Errorf("udp edns %d: %d-byte answer exceeds %d", edns, n, limit)
		}
	}
}

// TestCache: answers are served from the cache without reaching the
// upstream, negative answers too, with decreasing TTLs; identical
// concurrent questions share one upstream query.
func TestCache(t *testing.T) {
	corp := startUnbound(t, corpZones)
	rl := startRelay(t, corp)
	s, addr := startProxy(t, corpConfig(rl.addr))

	t.Run("positive hit does not reach upstream", func(t *testing.T) {
		for range 5 {
			r, _ := query(t, addr, "udp", "intranet.corp.example.", dns.TypeA, 0)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Fatalf("answer %v", r)
			}
		}
		if n := rl.queriesFor("intranet.corp.example."); n != 1 {
			t.Errorf("upstream saw %d queries, want 1", n)
		}
		// The same question over TCP and with EDNS is one cache entry.
		query(t, addr, "tcp", "intranet.corp.example.", dns.TypeA, 0)
		query(t, addr, "udp", "INTRANET.corp.example.", dns.TypeA, 1232)
		if n := rl.queriesFor("intranet.corp.example."); n != 1 {
			t.Errorf("upstream saw %d queries, want 1", n)
		}
		if st := s.Stats(); st.CacheHits < 6 {
			t.Errorf("cache hits %d, want >= 6", st.CacheHits)
		}
	})
	t.Run("negative caching", func(t *testing.T) {
		for range 3 {
			r, _ := query(t, addr, "udp", "gone.corp.example.", dns.TypeA, 0)
			if r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 {
				t.Fatalf("answer %v", r)
			}
			if ttl := r.Ns[0].Header().Ttl; ttl > 60 {
				t.Errorf("negative TTL %d above the SOA minimum 60", ttl)
			}
		}
		if n := rl.queriesFor("gone.corp.example."); n != 1 {
			t.Errorf("upstream saw %d queries, want 1", n)
		}
	})
	t.Run("short name answers are cached too", func(t *testing.T) {
		for range 3 {
			r, _ := query(t, addr, "udp", "printer.", dns.TypeA, 0)
			if len(r.Answer) != 2 {
				t.Fatalf("answer %v", r)
			}
		}
		if a, b := rl.queriesFor("printer.corp.example."), rl.queriesFor("printer.lab.example."); a != 1 || b != 1 {
			t.Errorf("upstream saw %d and %d queries, want 1 and 1", a, b)
		}
	})
	t.Run("TTL decreases", func(t *testing.T) {
		r1, _ := query(t, addr, "udp", "wiki.corp.example.", dns.TypeA, 0)
		time.Sleep(1100 * time.Millisecond) // the TTL resolution is one second
		r2, _ := query(t, addr, "udp", "wiki.corp.example.", dns.TypeA, 0)
		t1, t2 := r1.Answer[0].Header().Ttl, r2.Answer[0].Header().Ttl
		if t2 >= t1 || t1-t2 > 3 {
			t.Errorf("TTL %d then %d after 1.1 s", t1, t2)
		}
		if n := rl.queriesFor("wiki.corp.example."); n != 1 {
			t.Errorf("upstream saw %d queries, want 1", n)
		}
	})
	t.Run("identical concurrent questions share one upstream query", func(t *testing.T) {
		var wg sync.WaitGroup
		var bad atomic.Int32
		for range 20 {
			wg.Go(func() {
				m := new(dns.Msg)
				m.SetQuestion("www.corp.example.", dns.TypeA)
				c := &dns.Client{Timeout: 5 * time.Second}
				if r, _, err := c.Exchange(m, addr); err != nil || len(r.Answer) != 3 {
					bad.Add(1)
				}
			})
		}
		wg.Wait()
		if bad.Load() != 0 {
			t.Errorf("%d queries failed", bad.Load())
		}
		if n := rl.queriesFor("www.corp.example."); n != 1 {
			t.Errorf("upstream saw %d queries, want 1", n)
		}
	})
}

// TestCacheTTLBounds: MinTTL and MaxTTL clamp cached TTLs.
func TestCacheTTLBounds(t *testing.T) {
	corp := startUnbound(t, corpZones)
	cfg := corpConfig(corp)
	cfg.MaxTTL = 100 * time.Second
	_, addr := startProxy(t, cfg)
	r, _ := query(t, addr, "udp", "wiki.corp.example.", dns.TypeA, 0)
	if ttl := r.Answer[0].Header().Ttl; ttl > 100 {
		t.Errorf("TTL %d above MaxTTL 100", ttl)
	}
	cfg.MaxTTL, cfg.MinTTL = 0, 600*time.Second
	_, addr = startProxy(t, cfg)
	r, _ = query(t, addr, "udp", "wiki.corp.example.", dns.TypeA, 0)
	if ttl := r.Answer[0].Header().Ttl; ttl != 600 {
		t.Errorf("TTL %d, want MinTTL 600", ttl)
	}
}

// TestHooks: metrics and access-log entries per query.
func TestHooks(t *testing.T) {
	corp := startUnbound(t, corpZones)
	cfg := corpConfig(corp)
	var mu sync.Mutex
	var entries []AccessEntry
	cfg.AccessLog = func(e AccessEntry) {
		mu.Lock()
		entries = append(entries, e)
		mu.Unlock()
	}
	m := &countingMetrics{}
	cfg.Metrics = m
	_, addr := startProxy(t, cfg)
	query(t, addr, "udp", "wiki.corp.example.", dns.TypeA, 0)
	query(t, addr, "udp", "wiki.corp.example.", dns.TypeA, 0)
	query(t, addr, "tcp", "www.public.example.", dns.TypeAAAA, 0)
	mu.Lock()
	defer mu.Unlock()
	want := []struct {
		name  string
		rcode int
		hit   bool
		t     Transport
	}{
		{"wiki.corp.example.", dns.RcodeSuccess, false, UDP},
		{"wiki.corp.example.", dns.RcodeSuccess, true, UDP},
		{"www.public.example.", dns.RcodeRefused, false, TCP},
	}
	if len(entries) != len(want) {
		t.Fatalf("%d access-log entries, want %d", len(entries), len(want))
	}
	for i, w := range want {
		e := entries[i]
		if e.Name != w.name || e.Rcode != w.rcode || e.CacheHit != w.hit || e.Transport != w.t || !e.Client.Addr().IsLoopback() {
			t.Errorf("entry %d: %+v, want %+v", i, e, w)
		}
	}
	if m.queries.Load() != 3 || m.hits.Load() != 1 || m.upstream.Load() != 1 {
		t.Errorf("metrics: %d queries %d hits %d upstream", m.queries.Load(), m.hits.Load(), m.upstream.Load())
	}
}

type countingMetrics struct{ queries, hits, upstream atomic.Int64 }

func (m *countingMetrics) Query(_ Transport, _ int, hit bool, _ time.Duration) {
	m.queries.Add(1)
	if hit {
		m.hits.Add(1)
	}
}

func (m *countingMetrics) Upstream(_, _ string, _ time.Duration, _ error) { m.upstream.Add(1) }

// TestConfig: New reports every invalid field.
func TestConfig(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		fields []string // ConfigError fields expected
	}{
		{"valid minimal", Config{Upstreams: []string{"10.0.0.53"}}, nil},
		{"valid full", Config{Upstreams: []string{"10.0.0.53:5353", "[fd00::53]:53", "fd00::54"}, Public: []string{"9.9.9.9"},
			Search: []string{"Corp.Example."}, Domains: []string{"."}, NDots: 2, MinTTL: time.Second}, nil},
		{"no upstream", Config{}, []string{"Upstreams"}},
		{"host name", Config{Upstreams: []string{"dns.corp.example:53"}}, []string{"Upstreams[0]"}},
		{"bad public", Config{Upstreams: []string{"10.0.0.53"}, Public: []string{"1.1.1.1:0"}}, []string{"Public[0]"}},
		{"bad domains", Config{Upstreams: []string{"10.0.0.53"}, Search: []string{"a..b", "."}, Domains: []string{"x y"}},
			[]string{"Search[0]", "Search[1]", "Domains[0]"}},
		{"bad numbers", Config{Upstreams: []string{"10.0.0.53"}, NDots: -1, Timeout: -1, MinTTL: 2 * time.Hour, CacheBytes: -1},
			[]string{"NDots", "Timeout", "MinTTL", "CacheBytes"}},
		{"timeout above query timeout", Config{Upstreams: []string{"10.0.0.53"}, Timeout: 5 * time.Second}, []string{"Timeout"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.cfg)
			if s != nil {
				defer s.Close()
			}
			var got []string
			for _, e := range unwrapAll(err) {
				var ce *ConfigError
				if !errors.As(e, &ce) {
					t.Errorf("error %v is not a *ConfigError", e)
					continue
				}
				got = append(got, ce.Field)
			}
			if !slices.Equal(got, tc.fields) {
				t.Errorf("fields %q, want %q (err: %v)", got, tc.fields, err)
			}
		})
	}
}

func unwrapAll(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// TestShutdown: Shutdown lets an in-flight query finish; serving ends.
func TestShutdown(t *testing.T) {
	cfg := corpConfig(blackhole(t))
	cfg.Timeout, cfg.QueryTimeout = 300*time.Millisecond, 300*time.Millisecond
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServePacket(pc) }()
	c, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion("wiki.corp.example.", dns.TypeA)
	b, _ := m.Pack()
	c.Write(b)
	time.Sleep(50 * time.Millisecond) // let the query reach the slow path
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != ErrServerClosed {
		t.Errorf("ServePacket: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no answer to the in-flight query: %v", err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("answer %v %v", r, err)
	}
	// After Shutdown, Handle still answers promptly: SERVFAIL, as no
	// upstream lookup can start.
	r = new(dns.Msg)
	if err := r.Unpack(s.Handle(context.Background(), netip.AddrPort{}, UDP, b)); err != nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("Handle after Shutdown: %v %v", r, err)
	}
}

// genericPacketConn hides *net.UDPConn, as the gateway's userspace stack
// does, to exercise ServePacket's generic path.
type genericPacketConn struct{ net.PacketConn }

// TestServeGenericConns: ServePacket on a PacketConn that is not a
// *net.UDPConn, and ServeConn on a bare stream (net.Pipe), as the
// gateway's userspace stack provides them.
func TestServeGenericConns(t *testing.T) {
	corp := startUnbound(t, corpZones)
	s, err := New(corpConfig(corp))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServePacket(genericPacketConn{pc}) }()
	for range 2 { // a miss, then a cache hit
		r, _ := query(t, pc.LocalAddr().String(), "udp", "printer.", dns.TypeA, 0)
		if len(r.Answer) != 2 {
			t.Fatalf("answer %v", r)
		}
	}

	client, server := net.Pipe()
	connDone := make(chan struct{})
	go func() {
		s.ServeConn(server)
		close(connDone)
	}()
	dc := &dns.Conn{Conn: client}
	for range 2 {
		m := new(dns.Msg)
		m.SetQuestion("wiki.corp.example.", dns.TypeA)
		client.SetDeadline(time.Now().Add(5 * time.Second))
		if err := dc.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
		r, err := dc.ReadMsg()
		if err != nil || len(r.Answer) != 1 || r.Id != m.Id {
			t.Fatalf("answer %v %v", r, err)
		}
	}
	if got := s.InternalDomains(); !slices.Equal(got, []string{"corp.example", "lab.example", "10.in-addr.arpa"}) {
		t.Errorf("InternalDomains %q", got)
	}
	s.Close()
	<-connDone
	if err := <-done; err != ErrServerClosed {
		t.Errorf("ServePacket: %v", err)
	}
	client.Close()
}
