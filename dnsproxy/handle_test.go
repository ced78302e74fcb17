package dnsproxy

import (
	"context"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// wireQ builds a raw message: header fields then body bytes.
func wireQ(id uint16, flags uint16, qd, an, ns, ar uint16, body ...[]byte) []byte {
	b := make([]byte, headerLen)
	binary.BigEndian.PutUint16(b[0:], id)
	binary.BigEndian.PutUint16(b[2:], flags)
	binary.BigEndian.PutUint16(b[4:], qd)
	binary.BigEndian.PutUint16(b[6:], an)
	binary.BigEndian.PutUint16(b[8:], ns)
	binary.BigEndian.PutUint16(b[10:], ar)
	for _, x := range body {
		b = append(b, x...)
	}
	return b
}

// question returns a wire question for name (given as wire labels).
func question(name []byte, qtype, qclass uint16) []byte {
	return append(append([]byte(nil), name...), byte(qtype>>8), byte(qtype), byte(qclass>>8), byte(qclass))
}

func wireName(s string) []byte {
	b := make([]byte, 256)
	n, err := dns.PackDomainName(dns.Fqdn(s), b, 0, nil, false)
	if err != nil {
		panic(err)
	}
	return b[:n]
}

// opt returns a wire OPT record.
func opt(size uint16, version uint8, do bool) []byte {
	flags := uint16(0)
	if do {
		flags = ednsDO
	}
	return []byte{0, 0, typeOPT, byte(size >> 8), byte(size), 0, version, byte(flags >> 8), byte(flags), 0, 0}
}

// TestMalformed: bad input gets FORMERR (or another precise rcode) or is
// dropped; never a crash (R-N3). No upstream is reachable: nothing here
// may need one.
func TestMalformed(t *testing.T) {
	cfg := corpConfig(closedPort(t))
	cfg.Timeout, cfg.QueryTimeout = 200*time.Millisecond, 500*time.Millisecond
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	const rd = 0x0100
	a := question(wireName("wiki.corp.example"), dns.TypeA, dns.ClassINET)
	long := []byte{}
	for range 5 {
		long = append(long, 63)
		long = append(long, strings.Repeat("x", 63)...)
	}
	long = append(long, 0) // 5*64+1 = 321 bytes > 255
	drop := -2             // sentinel: no answer at all
	tests := []struct {
		name  string
		req   []byte
		rcode int
	}{
		{"empty", nil, drop},
		{"short header", []byte{1, 2, 3, 4, 5}, drop},
		{"a response", wireQ(1, 0x8000, 1, 0, 0, 0, a), drop},
		{"question count without question", wireQ(1, rd, 1, 0, 0, 0), dns.RcodeFormatError},
		{"truncated question", wireQ(1, rd, 1, 0, 0, 0, a[:len(a)-2]), dns.RcodeFormatError},
		{"zero questions", wireQ(1, rd, 0, 0, 0, 0), dns.RcodeFormatError},
		{"two questions", wireQ(1, rd, 2, 0, 0, 0, a, a), dns.RcodeFormatError},
		{"65535 questions claimed", wireQ(1, rd, 0xffff, 0, 0, 0, a), dns.RcodeFormatError},
		{"65535 records claimed", wireQ(1, rd, 1, 0xffff, 0xffff, 0xffff, a), dns.RcodeFormatError},
		{"pointer to itself", wireQ(1, rd, 1, 0, 0, 0, []byte{0xc0, 12, 0, 1, 0, 1}), dns.RcodeFormatError},
		{"pointer loop of two", wireQ(1, rd, 1, 0, 0, 0, []byte{1, 'a', 0xc0, 12, 0, 1, 0, 1}), dns.RcodeFormatError},
		{"forward pointer", wireQ(1, rd, 1, 0, 0, 0, []byte{0xc0, 20, 0, 1, 0, 1, 0, 0, 1, 'a', 0}), dns.RcodeFormatError},
		{"pointer into header", wireQ(1, rd, 1, 0, 0, 0, []byte{0xc0, 0, 0, 1, 0, 1}), dns.RcodeFormatError},
		{"oversized name", wireQ(1, rd, 1, 0, 0, 0, question(long, dns.TypeA, dns.ClassINET)), dns.RcodeFormatError},
		{"reserved label type", wireQ(1, rd, 1, 0, 0, 0, []byte{0x40, 'a', 0, 0, 1, 0, 1}), dns.RcodeFormatError},
		{"label past the end", wireQ(1, rd, 1, 0, 0, 0, []byte{60, 'a', 'b'}), dns.RcodeFormatError},
		{"opcode NOTIFY", wireQ(1, 4<<11, 1, 0, 0, 0, a), dns.RcodeNotImplemented},
		{"opcode UPDATE", wireQ(1, 5<<11, 1, 0, 0, 0, a), dns.RcodeNotImplemented},
		{"EDNS version 1", wireQ(1, rd, 1, 0, 0, 1, a, opt(1232, 1, false)), dns.RcodeBadVers},
		{"two OPT records", wireQ(1, rd, 1, 0, 0, 2, a, opt(1232, 0, false), opt(1232, 0, false)), dns.RcodeFormatError},
		{"qtype OPT", wireQ(1, rd, 1, 0, 0, 0, question(wireName("x.corp.example"), dns.TypeOPT, dns.ClassINET)), dns.RcodeFormatError},
		{"qtype 0", wireQ(1, rd, 1, 0, 0, 0, question(wireName("x.corp.example"), 0, dns.ClassINET)), dns.RcodeFormatError},
		{"AXFR", wireQ(1, rd, 1, 0, 0, 0, question(wireName("corp.example"), dns.TypeAXFR, dns.ClassINET)), dns.RcodeRefused},
		{"class CHAOS", wireQ(1, rd, 1, 0, 0, 0, question(wireName("version.bind"), dns.TypeTXT, dns.ClassCHAOS)), dns.RcodeRefused},
		{"ANY without upstream", wireQ(1, rd, 1, 0, 0, 0, question(wireName("wiki.corp.example"), dns.TypeANY, dns.ClassINET)), dns.RcodeSuccess},
		{"root name refused", wireQ(1, rd, 1, 0, 0, 0, question([]byte{0}, dns.TypeNS, dns.ClassINET)), dns.RcodeRefused},
		{"upstream unreachable", wireQ(1, rd, 1, 0, 0, 0, a), dns.RcodeServerFailure},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, tr := range []Transport{UDP, TCP} {
				out := s.Handle(context.Background(), netip.AddrPort{}, tr, tc.req)
				if tc.rcode == drop {
					if out != nil {
						t.Fatalf("%v: answered %x, want drop", tr, out)
					}
					continue
				}
				if len(out) < headerLen {
					t.Fatalf("%v: answer %x", tr, out)
				}
				if out[0] != tc.req[0] || out[1] != tc.req[1] || out[2]&flagQR == 0 {
					t.Errorf("%v: header %x does not answer %x", tr, out[:4], tc.req[:4])
				}
				r := new(dns.Msg)
				if err := r.Unpack(out); err != nil {
					t.Fatalf("%v: answer does not parse: %v", tr, err)
				}
				if r.Rcode != tc.rcode {
					t.Errorf("%v: rcode %s, want %s", tr, dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
				}
				if len(out) > 512 && tr == UDP {
					t.Errorf("udp answer of %d bytes", len(out))
				}
			}
		})
	}
	if st := s.Stats(); st.Panics != 0 {
		t.Errorf("%d panics", st.Panics)
	}
}
