package masque

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"reflect"
	"testing"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/net/http/httpguts"
)

// Every parser of bytes from the network has a fuzz target: it must not
// panic, and what it accepts must survive an encode/parse round trip.

// fuzzRoundTrip fuzzes parse with seed's payload: whatever it accepts must
// encode (with enc) to a capsule of type typ that parses back the same.
func fuzzRoundTrip[T any](f *testing.F, typ uint64, seed T, enc func([]byte, T) []byte, parse func([]byte) (T, error)) {
	f.Add(payloadOf(f, enc(nil, seed), typ))
	f.Fuzz(func(t *testing.T, p []byte) {
		v, err := parse(p)
		if err != nil {
			return
		}
		again, err := parse(payloadOf(t, enc(nil, v), typ))
		if err != nil || !reflect.DeepEqual(again, v) {
			t.Fatalf("round trip of %+v: %+v, %v", v, again, err)
		}
	})
}

func FuzzParseAddressAssign(f *testing.F) {
	fuzzRoundTrip(f, CapsuleAddressAssign, []AssignedAddress{{0, mp("10.0.0.7/32")}, {5, mp("2001:db8::/64")}}, AppendAddressAssign, ParseAddressAssign)
}

func FuzzParseAddressRequest(f *testing.F) {
	fuzzRoundTrip(f, CapsuleAddressRequest, []AssignedAddress{{1, mp("0.0.0.0/32")}}, AppendAddressRequest, ParseAddressRequest)
}

func FuzzParseRouteAdvertisement(f *testing.F) {
	seed := []IPRoute{{ma("10.0.0.0"), ma("10.0.0.255"), 0}, {ma("::"), ma("::ff"), 6}}
	fuzzRoundTrip(f, CapsuleRouteAdvertisement, seed, AppendRouteAdvertisement, func(p []byte) ([]IPRoute, error) {
		rs, err := ParseRouteAdvertisement(p)
		for _, r := range rs {
			if ps := r.Prefixes(); len(ps) == 0 || ps[0].Addr() != r.Start || lastAddr(ps[len(ps)-1]) != r.End {
				panic(fmt.Sprintf("Prefixes of %v: %v", r, ps))
			}
		}
		return rs, err
	})
}

func FuzzParseDNSAssign(f *testing.F) {
	fuzzRoundTrip(f, CapsuleDNSAssign, []DNSConfig{{
		Nameservers:     []DNSNameserver{{Priority: 1, IPv4: []netip.Addr{ma("10.0.0.53")}, IPv6: []netip.Addr{ma("2001:db8::53")}, AuthDomain: "dns.example", ServiceParams: []byte{0, 1, 0, 0}}},
		InternalDomains: []string{"", "corp.example"},
		SearchDomains:   []string{"corp.example"},
	}}, AppendDNSAssign, ParseDNSAssign)
}

// FuzzCapsuleRoundTrip builds capsules from fuzzed values (not bytes), so
// the encoders meet inputs the parsers would never hand them, and checks
// that what encodes parses back to the same values or is refused.
func FuzzCapsuleRoundTrip(f *testing.F) {
	f.Add([]byte{10, 0, 0, 1}, uint8(32), uint64(0), uint8(6), "corp.example")
	f.Add([]byte{0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5}, uint8(64), uint64(1<<40), uint8(0), "")
	f.Fuzz(func(t *testing.T, ab []byte, bits uint8, id uint64, proto uint8, domain string) {
		a, ok := netip.AddrFromSlice(ab)
		if !ok || int(bits) > a.BitLen() || id >= 1<<62 {
			return
		}
		pf := netip.PrefixFrom(a, int(bits)).Masked()
		as := []AssignedAddress{{RequestID: id, Prefix: pf}}
		if got, err := ParseAddressAssign(payloadOf(t, AppendAddressAssign(nil, as), CapsuleAddressAssign)); err != nil || !reflect.DeepEqual(got, as) {
			t.Fatalf("ADDRESS_ASSIGN %v: %v, %v", as, got, err)
		}
		rs := []IPRoute{{Start: pf.Addr(), End: lastAddr(pf), Protocol: proto}}
		if got, err := ParseRouteAdvertisement(payloadOf(t, AppendRouteAdvertisement(nil, rs), CapsuleRouteAdvertisement)); err != nil || !reflect.DeepEqual(got, rs) {
			t.Fatalf("ROUTE_ADVERTISEMENT %v: %v, %v", rs, got, err)
		}
		if ps := rs[0].Prefixes(); len(ps) != 1 || ps[0] != pf {
			t.Fatalf("Prefixes of %v: %v, want [%v]", rs[0], ps, pf)
		}
		ns := DNSNameserver{Priority: 1}
		if a.Is4() {
			ns.IPv4 = []netip.Addr{a}
		} else if !a.Is4In6() {
			ns.IPv6 = []netip.Addr{a}
		} else {
			return
		}
		cs := []DNSConfig{{Nameservers: []DNSNameserver{ns}, InternalDomains: []string{domain}}}
		got, err := ParseDNSAssign(payloadOf(t, AppendDNSAssign(nil, cs), CapsuleDNSAssign))
		if err == nil && !reflect.DeepEqual(got, cs) {
			t.Fatalf("DNS_ASSIGN %+v: %+v", cs, got)
		}
	})
}

func FuzzReadCapsule(f *testing.F) {
	f.Add(AppendAddressAssign(AppendCapsule(nil, 0x77, []byte("skip")), []AssignedAddress{{0, mp("10.0.0.1/32")}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := quicvarint.NewReader(bufio.NewReader(bytes.NewReader(b)))
		for range 64 {
			typ, p, err := ReadCapsule(r, func(t uint64) bool { return t < 4 })
			if err != nil {
				return
			}
			if typ < 4 && len(p) > MaxCapsulePayload {
				t.Fatalf("a %d-byte payload passed the limit", len(p))
			}
		}
	})
}

func FuzzParseSettings(f *testing.F) {
	f.Add(appendSettings(nil, true)[2:])
	f.Add([]byte{0x33, 1, 0x33, 1})
	f.Fuzz(func(t *testing.T, p []byte) {
		_, _ = ParseSettings(p)
	})
}

func FuzzParseFieldSection(f *testing.F) {
	fr := appendHeadersFrame(nil, requestFields("gw.example:443", "/.well-known/masque/ip/", nil))
	f.Add(fr[2:])
	f.Add(encodeSection(qpack.HeaderField{Name: ":method", Value: "CONNECT"}, qpack.HeaderField{Name: "user-agent", Value: "a\r\nb"}))
	f.Add(encodeSection(qpack.HeaderField{Name: "bad name", Value: "v"}))
	f.Add([]byte{0x02, 0x00, 0x80})
	f.Fuzz(func(t *testing.T, p []byte) {
		fs, err := parseFieldSection(p, ":method", ":protocol", ":scheme", ":authority", ":path", ":status")
		if err != nil {
			return
		}
		size := 0
		for k, v := range fs.pseudo {
			if !httpguts.ValidHeaderFieldValue(v) {
				t.Fatalf("pseudo-header %s: invalid value %q passed", k, v)
			}
			size += len(k) + len(v) + 32
		}
		for k, vs := range fs.header {
			if k == "" || !httpguts.ValidHeaderFieldName(k) {
				t.Fatalf("invalid field name %q passed", k)
			}
			for _, v := range vs {
				if !httpguts.ValidHeaderFieldValue(v) {
					t.Fatalf("field %s: invalid value %q passed", k, v)
				}
				size += len(k) + len(v) + 32
			}
		}
		if size > maxFieldSection {
			t.Fatalf("a field section of %d bytes (RFC 9114 4.2.2) passed", size)
		}
	})
}

func FuzzReadResponse(f *testing.F) {
	f.Add(appendFrame(appendHeadersFrame(nil, nil), 0x21, []byte("grease")))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = readResponse(bufio.NewReader(bytes.NewReader(b)))
	})
}

func FuzzBodyReader(f *testing.F) {
	f.Add(appendFrame(appendFrame(nil, frameData, AppendAddressAssign(nil, nil)), 0x21, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		br := &bodyReader{r: bufio.NewReader(bytes.NewReader(b))}
		for range 64 {
			if _, _, err := ReadCapsule(br, func(uint64) bool { return true }); err != nil {
				return
			}
		}
	})
}

func FuzzIPPayload(f *testing.F) {
	f.Add([]byte{0, 0x45})
	f.Add([]byte{0x40, 0, 0x45})
	f.Add([]byte{0x40})
	f.Add([]byte{1, 0x45})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := ipPayload(b)
		id, n, err := quicvarint.Parse(b)
		if want := err == nil && id == 0; ok != want {
			t.Fatalf("% x: ok %v, but the context ID parses as %d, %v", b, ok, id, err)
		}
		if ok && !bytes.Equal(p, b[n:]) {
			t.Fatalf("% x: packet % x, want % x", b, p, b[n:])
		}
	})
}
