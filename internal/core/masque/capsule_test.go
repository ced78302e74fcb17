package masque

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/quic-go/quic-go/quicvarint"
)

func mp(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ma(s string) netip.Addr   { return netip.MustParseAddr(s) }

// payloadOf strips a capsule's type and length.
func payloadOf(t testing.TB, b []byte, want uint64) []byte {
	t.Helper()
	typ, p, err := ReadCapsule(quicvarint.NewReader(bytes.NewReader(b)), func(uint64) bool { return true })
	if err != nil || typ != want {
		t.Fatalf("capsule %x: type %#x, err %v; want type %#x", b, typ, err, want)
	}
	return p
}

func TestAddressCapsules(t *testing.T) {
	as := []AssignedAddress{{0, mp("10.0.0.7/32")}, {3, mp("2001:db8::5/128")}, {9, mp("192.0.2.0/24")}, {0, mp("0.0.0.0/32")}}
	for _, tc := range []struct {
		name   string
		typ    uint64
		enc    func([]byte, []AssignedAddress) []byte
		parse  func([]byte) ([]AssignedAddress, error)
		values []AssignedAddress
	}{
		{"assign", CapsuleAddressAssign, AppendAddressAssign, ParseAddressAssign, as},
		{"assign none", CapsuleAddressAssign, AppendAddressAssign, ParseAddressAssign, nil},
		{"request", CapsuleAddressRequest, AppendAddressRequest, ParseAddressRequest, []AssignedAddress{{1, mp("0.0.0.0/32")}, {2, mp("::/128")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.parse(payloadOf(t, tc.enc(nil, tc.values), tc.typ))
			if err != nil || !reflect.DeepEqual(got, tc.values) {
				t.Fatalf("round trip: %v, %v; want %v", got, err, tc.values)
			}
		})
	}
	if !(AssignedAddress{Prefix: mp("0.0.0.0/32")}).Rejected() || !(AssignedAddress{Prefix: mp("::/128")}).Rejected() || (AssignedAddress{Prefix: mp("0.0.0.0/0")}).Rejected() {
		t.Error("Rejected: wrong for 0.0.0.0/32, ::/128 or 0.0.0.0/0")
	}

	bad := []struct {
		name    string
		request bool
		p       []byte
		want    string
	}{
		{"truncated ID", false, []byte{0x40}, "request ID"},
		{"no version", false, []byte{0}, "unexpected EOF"},
		{"version 5", false, []byte{0, 5, 1, 2, 3, 4, 32}, "IP version 5"},
		{"short IPv4", false, []byte{0, 4, 10, 0, 0}, "unexpected EOF"},
		{"short IPv6", false, append([]byte{0, 6}, make([]byte, 15)...), "unexpected EOF"},
		{"no prefix length", false, []byte{0, 4, 10, 0, 0, 1}, "prefix length"},
		{"prefix too long", false, []byte{0, 4, 10, 0, 0, 1, 33}, "prefix length 33"},
		{"host bits", false, []byte{0, 4, 10, 0, 0, 1, 24}, "bits set past"},
		{"request empty", true, nil, "no address"},
		{"request ID zero", true, []byte{0, 4, 10, 0, 0, 1, 32}, "request ID zero"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			parse := ParseAddressAssign
			if tc.request {
				parse = ParseAddressRequest
			}
			if _, err := parse(tc.p); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parse %x: err %v, want one containing %q", tc.p, err, tc.want)
			}
		})
	}
}

func TestRouteAdvertisement(t *testing.T) {
	r := func(s, e string, proto uint8) IPRoute { return IPRoute{ma(s), ma(e), proto} }
	good := [][]IPRoute{
		nil,
		{r("0.0.0.0", "255.255.255.255", 0)},
		{r("10.0.0.0", "10.0.0.255", 0), r("10.0.2.0", "10.0.2.255", 0), r("10.0.1.0", "10.0.1.255", 6), r("10.0.3.0", "10.0.3.0", 17), r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0)},
	}
	for _, rs := range good {
		got, err := ParseRouteAdvertisement(payloadOf(t, AppendRouteAdvertisement(nil, rs), CapsuleRouteAdvertisement))
		if err != nil || !reflect.DeepEqual(got, rs) {
			t.Errorf("round trip %v: %v, %v", rs, got, err)
		}
	}
	for _, tc := range []struct {
		name string
		rs   []IPRoute
		want string
	}{
		{"start after end", []IPRoute{r("10.0.0.9", "10.0.0.1", 0)}, "after end"},
		{"IPv6 before IPv4", []IPRoute{r("::", "::1", 0), r("10.0.0.0", "10.0.0.1", 0)}, "IPv4 range after an IPv6"},
		{"protocols decreasing", []IPRoute{r("10.0.0.0", "10.0.0.1", 17), r("10.0.1.0", "10.0.1.1", 6)}, "protocol 6 after 17"},
		{"overlap", []IPRoute{r("10.0.0.0", "10.0.0.9", 0), r("10.0.0.9", "10.0.0.20", 0)}, "overlaps or precedes"},
		{"unordered", []IPRoute{r("10.0.1.0", "10.0.1.9", 0), r("10.0.0.0", "10.0.0.9", 0)}, "overlaps or precedes"},
		{"protocol inside every-protocol", []IPRoute{r("10.0.0.0", "10.0.0.255", 0), r("10.0.0.5", "10.0.0.6", 6)}, "for every protocol"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := ValidateRoutes(tc.rs); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ValidateRoutes: %v, want %q", err, tc.want)
			}
			if _, err := ParseRouteAdvertisement(payloadOf(t, AppendRouteAdvertisement(nil, tc.rs), CapsuleRouteAdvertisement)); err == nil {
				t.Fatal("ParseRouteAdvertisement accepted it")
			}
		})
	}
	for _, p := range [][]byte{{7}, {4, 1, 2, 3, 4, 1, 2, 3}, {6, 1}} {
		if _, err := ParseRouteAdvertisement(p); err == nil {
			t.Errorf("ParseRouteAdvertisement(%x) accepted a malformed range", p)
		}
	}
}

func TestRoutePrefixes(t *testing.T) {
	for _, tc := range []struct {
		s, e string
		want string
	}{
		{"0.0.0.0", "255.255.255.255", "[0.0.0.0/0]"},
		{"10.0.0.0", "10.0.0.255", "[10.0.0.0/24]"},
		{"10.0.0.1", "10.0.0.1", "[10.0.0.1/32]"},
		{"10.0.0.1", "10.0.0.6", "[10.0.0.1/32 10.0.0.2/31 10.0.0.4/31 10.0.0.6/32]"},
		{"198.18.0.0", "198.18.199.255", "[198.18.0.0/17 198.18.128.0/18 198.18.192.0/21]"},
		{"::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "[::/0]"},
		{"2001:db8::", "2001:db8::1:0", "[2001:db8::/112 2001:db8::1:0/128]"},
	} {
		got := IPRoute{Start: ma(tc.s), End: ma(tc.e)}.Prefixes()
		if s := formatPrefixes(got); s != tc.want {
			t.Errorf("%s-%s: %s, want %s", tc.s, tc.e, s, tc.want)
		}
	}
}

func formatPrefixes(ps []netip.Prefix) string {
	var b strings.Builder
	b.WriteString("[")
	for i, p := range ps {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(p.String())
	}
	return b.String() + "]"
}

func TestDNSAssign(t *testing.T) {
	cfgs := [][]DNSConfig{
		nil,
		{{
			Nameservers:     []DNSNameserver{{Priority: 1, IPv4: []netip.Addr{ma("10.0.0.53"), ma("10.0.0.54")}, IPv6: []netip.Addr{ma("2001:db8::53")}}},
			InternalDomains: []string{"corp.example", ""},
			SearchDomains:   []string{"corp.example"},
		}},
		{
			{Nameservers: []DNSNameserver{{Priority: 2, AuthDomain: "dns.example", ServiceParams: []byte{0, 1, 0, 3, 2, 'h', '2'}}}},
			{Nameservers: []DNSNameserver{{Priority: 1, IPv4: []netip.Addr{ma("192.0.2.1")}}}},
		},
	}
	for _, cs := range cfgs {
		got, err := ParseDNSAssign(payloadOf(t, AppendDNSAssign(nil, cs), CapsuleDNSAssign))
		if err != nil || !reflect.DeepEqual(got, cs) {
			t.Errorf("round trip %+v: %+v, %v", cs, got, err)
		}
	}
	ns := DNSNameserver{Priority: 1, IPv4: []netip.Addr{ma("10.0.0.53")}}
	for _, tc := range []struct {
		name string
		cs   []DNSConfig
		want string
	}{
		{"no nameserver", []DNSConfig{{}}, "without a nameserver"},
		{"priority zero", []DNSConfig{{Nameservers: []DNSNameserver{{IPv4: ns.IPv4}}}}, "priority zero"},
		{"no address", []DNSConfig{{Nameservers: []DNSNameserver{{Priority: 1}}}}, "without an address"},
		{"mapped IPv6", []DNSConfig{{Nameservers: []DNSNameserver{{Priority: 1, IPv6: []netip.Addr{ma("::ffff:10.0.0.1")}}}}}, "IPv4-mapped"},
		{"root dot", []DNSConfig{{Nameservers: []DNSNameserver{ns}, SearchDomains: []string{"corp.example."}}}, "root dot"},
		{"empty search domain", []DNSConfig{{Nameservers: []DNSNameserver{ns}, SearchDomains: []string{""}}}, "empty search domain"},
		{"not ASCII", []DNSConfig{{Nameservers: []DNSNameserver{ns}, InternalDomains: []string{"bücher.example"}}}, "printable ASCII"},
		{"long domain", []DNSConfig{{Nameservers: []DNSNameserver{ns}, InternalDomains: []string{strings.Repeat("a", 256)}}}, "256 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseDNSAssign(payloadOf(t, AppendDNSAssign(nil, tc.cs), CapsuleDNSAssign))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
	// A count larger than the bytes left is refused before allocating.
	if _, err := ParseDNSAssign([]byte{0x80, 0xff, 0xff, 0xff}); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Errorf("huge nameserver count: %v", err)
	}
	full := payloadOf(t, AppendDNSAssign(nil, cfgs[1]), CapsuleDNSAssign)
	for i := 1; i < len(full); i++ {
		if _, err := ParseDNSAssign(full[:i]); err == nil {
			t.Errorf("truncated to %d of %d bytes: accepted", i, len(full))
		}
	}
}

func TestReadCapsule(t *testing.T) {
	all := func(uint64) bool { return true }
	none := func(uint64) bool { return false }
	var b []byte
	b = AppendCapsule(b, 0x4242, bytes.Repeat([]byte{7}, 100000)) // unknown and big: skipped
	b = AppendAddressAssign(b, []AssignedAddress{{0, mp("10.0.0.1/32")}})
	r := quicvarint.NewReader(bufio.NewReader(bytes.NewReader(b)))
	if typ, p, err := ReadCapsule(r, func(t uint64) bool { return t == CapsuleAddressAssign }); typ != 0x4242 || p != nil || err != nil {
		t.Fatalf("unknown capsule: %#x %x %v", typ, p, err)
	}
	if typ, p, err := ReadCapsule(r, all); typ != CapsuleAddressAssign || len(p) != 7 || err != nil {
		t.Fatalf("ADDRESS_ASSIGN: %#x %x %v", typ, p, err)
	}
	if _, _, err := ReadCapsule(r, all); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
	big := AppendCapsule(nil, CapsuleRouteAdvertisement, make([]byte, MaxCapsulePayload+1))
	if _, _, err := ReadCapsule(quicvarint.NewReader(bytes.NewReader(big)), all); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("oversized capsule: %v", err)
	}
	if _, _, err := ReadCapsule(quicvarint.NewReader(bytes.NewReader(big)), none); err != nil {
		t.Errorf("oversized capsule of an unwanted type: %v (should be skipped)", err)
	}
	for _, cut := range []int{1, 2, 5} {
		_, _, err := ReadCapsule(quicvarint.NewReader(bytes.NewReader(b[len(b)-9:][:cut])), all)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("capsule cut after %d bytes: %v, want io.ErrUnexpectedEOF", cut, err)
		}
	}
}
