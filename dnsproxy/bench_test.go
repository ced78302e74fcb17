package dnsproxy

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// benchServer returns a server whose cache holds an A answer for
// wiki.corp.example. (no upstream is ever contacted).
func benchServer(b *testing.B) *Server {
	b.Helper()
	s, err := New(Config{Upstreams: []string{closedPort(b)}, Search: []string{"corp.example"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	for i := range 1000 {
		name := fmt.Sprintf("h%d.corp.example.", i)
		if i == 0 {
			name = "wiki.corp.example."
		}
		for _, do := range []bool{false, true} {
			resp := new(dns.Msg)
			resp.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: []byte{10, 1, 0, 20}}}
			key, _ := makeKey(nil, name, dns.TypeA, do, false)
			s.store(string(key), name, dns.TypeA, resp)
		}
	}
	return s
}

func benchQuery(b *testing.B, name string, edns bool) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	if edns {
		m.SetEdns0(1232, true)
	}
	req, err := m.Pack()
	if err != nil {
		b.Fatal(err)
	}
	return req
}

// BenchmarkCacheHit is the UDP reader's hot path: a cached answer
// rendered into a reused buffer (expect 0 allocs).
func BenchmarkCacheHit(b *testing.B) {
	for _, edns := range []bool{false, true} {
		b.Run(fmt.Sprintf("edns=%v", edns), func(b *testing.B) {
			s := benchServer(b)
			req := benchQuery(b, "WiKi.corp.example.", edns)
			out := make([]byte, 0, maxUDPSize)
			var q wireQuery
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := s.answerFast(out[:0], netip.AddrPort{}, UDP, req, &q); !ok {
					b.Fatal("miss")
				}
			}
		})
	}
}

// BenchmarkCacheHitParallel measures shard-lock contention.
func BenchmarkCacheHitParallel(b *testing.B) {
	s := benchServer(b)
	reqs := make([][]byte, 64)
	for i := range reqs {
		reqs[i] = benchQuery(b, fmt.Sprintf("h%d.corp.example.", i+1), false)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]byte, 0, maxUDPSize)
		var q wireQuery
		i := 0
		for pb.Next() {
			if _, ok := s.answerFast(out[:0], netip.AddrPort{}, UDP, reqs[i%len(reqs)], &q); !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
}

// BenchmarkHandleCacheHit is the exported entry point (allocates the
// answer).
func BenchmarkHandleCacheHit(b *testing.B) {
	s := benchServer(b)
	req := benchQuery(b, "wiki.corp.example.", false)
	b.ReportAllocs()
	for b.Loop() {
		if out := s.Handle(context.Background(), netip.AddrPort{}, UDP, req); out == nil {
			b.Fatal("no answer")
		}
	}
}

// BenchmarkSlowPathCacheHit is a cached answer through the full parser
// (a query shape the fast path does not take: a short name's expansion).
func BenchmarkSlowPathCacheHit(b *testing.B) {
	s := benchServer(b)
	req := benchQuery(b, "wiki.", false)
	if out := s.Handle(context.Background(), netip.AddrPort{}, UDP, req); out == nil {
		b.Fatal("no answer")
	}
	b.ReportAllocs()
	for b.Loop() {
		s.answerSlow(context.Background(), nil, netip.AddrPort{}, UDP, req)
	}
}
