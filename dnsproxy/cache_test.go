package dnsproxy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// testEntry packs an A answer for name and makes a cache entry of it.
func testEntry(t testing.TB, name string, pad int, now, life int64) *entry {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Response = true
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: []byte{10, 0, 0, 1}}}
	if pad > 0 {
		var txt []string
		for ; pad > 0; pad -= 255 { // 255: longest TXT string
			txt = append(txt, strings.Repeat("x", min(pad, 255)))
		}
		m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300}, Txt: txt})
	}
	m.Id = 0
	wire, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	key, ok := makeKey(nil, name, dns.TypeA, false, false)
	if !ok {
		t.Fatal("makeKey")
	}
	e, err := newEntry(string(key), wire, m.Rcode, now, life)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestCacheBounds: the cache never exceeds its entry and byte bounds.
func TestCacheBounds(t *testing.T) {
	tests := []struct {
		name           string
		entries, bytes int
		pad            int
	}{
		{"entry bound", 64, 1 << 30, 0},
		{"byte bound", 1 << 20, 64 << 10, 200},
		{"oversized entries are not stored", 1 << 20, 16 << 10, 2000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCache(tc.entries, tc.bytes)
			for i := range 5000 {
				c.put(testEntry(t, fmt.Sprintf("h%d.corp.example.", i), tc.pad, 0, int64(time.Hour)))
			}
			n, b := c.size()
			if n > tc.entries || b > tc.bytes {
				t.Errorf("%d entries %d bytes, bounds %d and %d", n, b, tc.entries, tc.bytes)
			}
			if n == 0 && tc.pad < 2000 {
				t.Error("cache empty")
			}
		})
	}
}

// TestCacheLRUAndExpiry: recently used entries survive eviction; expired
// ones are not served.
func TestCacheLRUAndExpiry(t *testing.T) {
	c := newCache(cacheShards, 1<<30) // one entry per shard
	a := testEntry(t, "a.corp.example.", 0, 0, 10)
	c.put(a)
	if c.get([]byte(a.key), 5) != a {
		t.Fatal("fresh entry not served")
	}
	if c.get([]byte(a.key), 10) != nil {
		t.Fatal("expired entry served")
	}
	if n, b := c.size(); n != 0 || b != 0 {
		t.Errorf("expired entry kept: %d entries %d bytes", n, b)
	}
}

// TestRenderTTLs: a rendered entry has its TTLs reduced by whole seconds
// spent in the cache, the client's ID and question spelling, and an OPT
// record only when asked.
func TestRenderTTLs(t *testing.T) {
	e := testEntry(t, "wiki.corp.example.", 10, 0, int64(time.Hour))
	out := e.render(nil, 0xbeef, true, false, wireName("WIKI.corp.EXAMPLE"), true, true, int64(2500*time.Millisecond))
	m := new(dns.Msg)
	if err := m.Unpack(out); err != nil {
		t.Fatal(err)
	}
	if m.Id != 0xbeef || !m.RecursionDesired || m.Question[0].Name != "WIKI.corp.EXAMPLE." {
		t.Errorf("header/question: %v", m)
	}
	for _, rr := range m.Answer {
		if rr.Header().Ttl != 298 {
			t.Errorf("TTL %d, want 298", rr.Header().Ttl)
		}
	}
	if o := m.IsEdns0(); o == nil || !o.Do() || o.UDPSize() != maxUDPSize {
		t.Errorf("OPT %v", o)
	}
}

// TestValidateWire: the strict structure check accepts real messages.
func TestValidateWire(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("www.corp.example.", dns.TypeA)
	m.Answer = []dns.RR{
		&dns.CNAME{Hdr: dns.RR_Header{Name: "www.corp.example.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 1}, Target: "web.corp.example."},
		&dns.A{Hdr: dns.RR_Header{Name: "web.corp.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: []byte{1, 2, 3, 4}},
	}
	m.SetEdns0(1232, true)
	m.Compress = true
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if err := validateWire(b); err != nil {
		t.Errorf("compressed message rejected: %v", err)
	}
	if err := validateWire(append(b, 0)); err == nil {
		t.Error("trailing byte accepted")
	}
}
