package dnsproxy

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeUpstream answers every query at once: NXDOMAIN with an SOA for names
// starting with "no", a big TXT (forcing truncation) for "big", an A
// record otherwise. It serves UDP only; TCP retries fail fast.
func fakeUpstream(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil || len(q.Question) != 1 {
				continue
			}
			r := new(dns.Msg)
			r.SetReply(q)
			name := q.Question[0].Name
			switch {
			case strings.HasPrefix(name, "no"):
				r.Rcode = dns.RcodeNameError
				r.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "corp.example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
					Ns: "ns.corp.example.", Mbox: "h.corp.example.", Minttl: 30}}
			case strings.HasPrefix(name, "big"):
				r.Truncated = true
			default:
				r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{10, 0, 0, 1}}}
			}
			b, _ := r.Pack()
			pc.WriteTo(b, from)
		}
	})
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
	return pc.LocalAddr().String()
}

func fuzzSeeds() [][]byte {
	var seeds [][]byte
	add := func(name string, qtype uint16, edns uint16, do bool) {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		if edns > 0 {
			m.SetEdns0(edns, do)
		}
		b, _ := m.Pack()
		seeds = append(seeds, b)
	}
	add("wiki.corp.example.", dns.TypeA, 0, false)
	add("wiki.corp.example.", dns.TypeAAAA, 1232, true)
	add("intranet.", dns.TypeA, 0, false)
	add("nosuch.corp.example.", dns.TypeA, 512, false)
	add("big.corp.example.", dns.TypeTXT, 4096, false)
	add("www.public.example.", dns.TypeA, 0, false)
	add("corp.example.", dns.TypeANY, 0, false)
	add(".", dns.TypeNS, 0, false)
	const rd = 0x0100
	seeds = append(seeds,
		wireQ(1, rd, 1, 0, 0, 0, []byte{0xc0, 12, 0, 1, 0, 1}),
		wireQ(1, rd, 2, 0, 0, 0, question(wireName("a.corp.example"), 1, 1), question(wireName("b"), 1, 1)),
		wireQ(1, rd, 1, 0, 0, 1, question(wireName("a.corp.example"), 1, 1), opt(1232, 1, false)),
		wireQ(1, rd, 0, 0, 0, 0),
	)
	return seeds
}

// FuzzHandle feeds arbitrary messages to the transport-free entry point:
// no panic, and any answer is a well-formed response to the query within
// the transport's size limit.
func FuzzHandle(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s, false)
	}
	cfg := Config{
		Upstreams:    []string{fakeUpstream(f)},
		Search:       []string{"corp.example", "lab.example"},
		Timeout:      200 * time.Millisecond,
		QueryTimeout: 500 * time.Millisecond,
	}
	s, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, req []byte, tcp bool) {
		tr := UDP
		if tcp {
			tr = TCP
		}
		out := s.Handle(context.Background(), netip.AddrPort{}, tr, req)
		if st := s.Stats(); st.Panics != 0 {
			t.Fatalf("internal panic on %x", req)
		}
		if out == nil {
			return
		}
		if len(req) < headerLen || out[0] != req[0] || out[1] != req[1] || out[2]&flagQR == 0 {
			t.Fatalf("answer %x does not match query %x", out, req)
		}
		limit := 0xffff
		if tr == UDP {
			limit = maxUDPSize
		}
		if len(out) > limit {
			t.Fatalf("%d-byte answer over %v", len(out), tr)
		}
		if err := new(dns.Msg).Unpack(out); err != nil {
			t.Fatalf("answer does not parse: %v (%x)", err, out)
		}
	})
}
