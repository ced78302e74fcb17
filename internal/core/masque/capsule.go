package masque

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"

	"github.com/quic-go/quic-go/quicvarint"
)

// Capsule types (RFC 9297 section 3.2 registry).
const (
	// CapsuleDatagram is DATAGRAM (RFC 9297 section 3.5): a datagram sent
	// on the stream; Underpass never sends it and drops it on receipt.
	CapsuleDatagram uint64 = 0x00
	// CapsuleAddressAssign is ADDRESS_ASSIGN (RFC 9484 section 4.7.1).
	CapsuleAddressAssign uint64 = 0x01
	// CapsuleAddressRequest is ADDRESS_REQUEST (RFC 9484 section 4.7.2).
	CapsuleAddressRequest uint64 = 0x02
	// CapsuleRouteAdvertisement is ROUTE_ADVERTISEMENT (RFC 9484 section 4.7.3).
	CapsuleRouteAdvertisement uint64 = 0x03
	// CapsuleDNSAssign is DNS_ASSIGN of draft-ietf-masque-connect-ip-dns-06
	// section 4.1, the type connect-ip-go v0.7.0 sends and reads.
	CapsuleDNSAssign uint64 = 0x1ace79ec
)

// MaxCapsulePayload bounds the payload of a capsule we buffer to parse:
// 64 KiB holds 1,927 IPv6 routes or 5,957 IPv4 ones in one
// ROUTE_ADVERTISEMENT, far beyond a policy's few hundred. A capsule of a
// type we do not parse is skipped whatever its length (RFC 9297 3.2).
const MaxCapsulePayload = 64 << 10

// AppendCapsule appends a capsule of type typ with payload p (RFC 9297
// section 3.2: type and length as QUIC variable-length integers).
func AppendCapsule(b []byte, typ uint64, p []byte) []byte {
	b = quicvarint.Append(b, typ)
	b = quicvarint.Append(b, uint64(len(p)))
	return append(b, p...)
}

// ReadCapsule reads one capsule from r. The payload of a type in want is
// returned (up to MaxCapsulePayload bytes, else an error); any other
// type's payload is discarded and returned as nil. io.EOF means r ended
// cleanly between capsules; io.ErrUnexpectedEOF, inside one.
func ReadCapsule(r quicvarint.Reader, want func(uint64) bool) (typ uint64, payload []byte, err error) {
	typ, err = quicvarint.Read(r)
	if err != nil {
		return 0, nil, err // io.EOF at a capsule boundary
	}
	n, err := quicvarint.Read(r)
	if err != nil {
		return typ, nil, noEOF(err)
	}
	if !want(typ) {
		if _, err := io.CopyN(io.Discard, r, int64(min(n, 1<<62))); err != nil {
			return typ, nil, noEOF(err)
		}
		return typ, nil, nil
	}
	if n > MaxCapsulePayload {
		return typ, nil, fmt.Errorf("masque: capsule type %#x of %d bytes exceeds the %d-byte limit", typ, n, MaxCapsulePayload)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return typ, nil, noEOF(err)
	}
	return typ, payload, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// AssignedAddress is one entry of ADDRESS_ASSIGN or ADDRESS_REQUEST
// (RFC 9484 section 4.7.1): a request ID (zero for an unsolicited
// assignment) and a prefix whose host bits are zero.
type AssignedAddress struct {
	RequestID uint64
	Prefix    netip.Prefix
}

// Rejected reports whether a is a refusal of a request: 0.0.0.0/32 or
// ::/128 (RFC 9484 section 4.7.1).
func (a AssignedAddress) Rejected() bool {
	return a.Prefix.Bits() == a.Prefix.Addr().BitLen() && a.Prefix.Addr().IsUnspecified()
}

// AppendAddressAssign appends an ADDRESS_ASSIGN capsule carrying as.
// Addresses are written in their own family (an IPv4-mapped IPv6 address
// as IPv6).
func AppendAddressAssign(b []byte, as []AssignedAddress) []byte {
	return AppendCapsule(b, CapsuleAddressAssign, appendAddresses(nil, as))
}

// AppendAddressRequest appends an ADDRESS_REQUEST capsule carrying rs;
// each request ID must be non-zero (RFC 9484 section 4.7.2).
func AppendAddressRequest(b []byte, rs []AssignedAddress) []byte {
	return AppendCapsule(b, CapsuleAddressRequest, appendAddresses(nil, rs))
}

func appendAddresses(b []byte, as []AssignedAddress) []byte {
	for _, a := range as {
		b = quicvarint.Append(b, a.RequestID)
		b = appendVersionedAddr(b, a.Prefix.Addr())
		b = append(b, byte(a.Prefix.Bits()))
	}
	return b
}

func appendVersionedAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		return append(append(b, 4), a.AsSlice()...)
	}
	return append(append(b, 6), a.AsSlice()...)
}

// ParseAddressAssign parses the payload of an ADDRESS_ASSIGN capsule. An
// empty payload is valid: the peer withdraws every address.
func ParseAddressAssign(p []byte) ([]AssignedAddress, error) {
	return parseAddresses(p, "ADDRESS_ASSIGN", false)
}

// ParseAddressRequest parses the payload of an ADDRESS_REQUEST capsule:
// at least one entry, each with a non-zero request ID (RFC 9484 4.7.2).
func ParseAddressRequest(p []byte) ([]AssignedAddress, error) {
	if len(p) == 0 {
		return nil, errors.New("masque: ADDRESS_REQUEST capsule carries no address")
	}
	return parseAddresses(p, "ADDRESS_REQUEST", true)
}

func parseAddresses(p []byte, what string, request bool) ([]AssignedAddress, error) {
	var out []AssignedAddress
	for len(p) > 0 {
		id, n, err := quicvarint.Parse(p)
		if err != nil {
			return nil, fmt.Errorf("masque: %s request ID: %w", what, err)
		}
		if request && id == 0 {
			return nil, fmt.Errorf("masque: %s with request ID zero (RFC 9484 4.7.2)", what)
		}
		p = p[n:]
		a, rest, err := parseVersionedAddr(p)
		if err != nil {
			return nil, fmt.Errorf("masque: %s: %w", what, err)
		}
		if len(rest) < 1 {
			return nil, fmt.Errorf("masque: %s: prefix length: %w", what, io.ErrUnexpectedEOF)
		}
		bits := int(rest[0])
		p = rest[1:]
		if bits > a.BitLen() {
			return nil, fmt.Errorf("masque: %s: prefix length %d longer than the %d-bit address %s", what, bits, a.BitLen(), a)
		}
		pf := netip.PrefixFrom(a, bits)
		if pf.Masked() != pf {
			return nil, fmt.Errorf("masque: %s: %s has bits set past its prefix length (RFC 9484 4.7.1)", what, pf)
		}
		out = append(out, AssignedAddress{RequestID: id, Prefix: pf})
	}
	return out, nil
}

// parseVersionedAddr reads an IP Version byte (4 or 6) and the address.
func parseVersionedAddr(p []byte) (netip.Addr, []byte, error) {
	if len(p) < 1 {
		return netip.Addr{}, nil, io.ErrUnexpectedEOF
	}
	switch p[0] {
	case 4:
		if len(p) < 5 {
			return netip.Addr{}, nil, io.ErrUnexpectedEOF
		}
		return netip.AddrFrom4([4]byte(p[1:5])), p[5:], nil
	case 6:
		if len(p) < 17 {
			return netip.Addr{}, nil, io.ErrUnexpectedEOF
		}
		return netip.AddrFrom16([16]byte(p[1:17])), p[17:], nil
	}
	return netip.Addr{}, nil, fmt.Errorf("IP version %d (want 4 or 6)", p[0])
}

// IPRoute is one IP Address Range of ROUTE_ADVERTISEMENT (RFC 9484
// section 4.7.3): Start to End inclusive, one family, for IP protocol
// Protocol (0: every protocol).
type IPRoute struct {
	Start, End netip.Addr
	Protocol   uint8
}

// AppendRouteAdvertisement appends a ROUTE_ADVERTISEMENT capsule carrying
// rs, which must follow ValidateRoutes' order.
func AppendRouteAdvertisement(b []byte, rs []IPRoute) []byte {
	var p []byte
	for _, r := range rs {
		p = appendVersionedAddr(p, r.Start)
		p = append(p, r.End.AsSlice()...)
		p = append(p, r.Protocol)
	}
	return AppendCapsule(b, CapsuleRouteAdvertisement, p)
}

// ParseRouteAdvertisement parses the payload of a ROUTE_ADVERTISEMENT
// capsule and checks it with ValidateRoutes. An empty payload is valid:
// no routes.
func ParseRouteAdvertisement(p []byte) ([]IPRoute, error) {
	var out []IPRoute
	for len(p) > 0 {
		start, rest, err := parseVersionedAddr(p)
		if err != nil {
			return nil, fmt.Errorf("masque: ROUTE_ADVERTISEMENT: %w", err)
		}
		l := start.BitLen() / 8
		if len(rest) < l+1 {
			return nil, fmt.Errorf("masque: ROUTE_ADVERTISEMENT: %w", io.ErrUnexpectedEOF)
		}
		var end netip.Addr
		if l == 4 {
			end = netip.AddrFrom4([4]byte(rest[:4]))
		} else {
			end = netip.AddrFrom16([16]byte(rest[:16]))
		}
		out = append(out, IPRoute{Start: start, End: end, Protocol: rest[l]})
		p = rest[l+1:]
	}
	if err := ValidateRoutes(out); err != nil {
		return nil, err
	}
	return out, nil
}

// ValidateRoutes checks the rules of RFC 9484 section 4.7.3: each range
// in one family with Start <= End; IPv4 ranges before IPv6 ones; within a
// family, protocols in increasing order; within a family and protocol,
// ranges in increasing order and disjoint; and no range for a single
// protocol overlapping one of the same family for every protocol.
func ValidateRoutes(rs []IPRoute) error {
	for i, r := range rs {
		if !r.Start.IsValid() || !r.End.IsValid() || r.Start.Is4() != r.End.Is4() || r.Start.Zone() != "" || r.End.Zone() != "" {
			return fmt.Errorf("masque: route %d: %v-%v is not a range of one address family", i, r.Start, r.End)
		}
		if r.Start.Compare(r.End) > 0 {
			return fmt.Errorf("masque: route %d: start %s after end %s", i, r.Start, r.End)
		}
		if i == 0 {
			continue
		}
		a := rs[i-1]
		switch {
		case a.Start.BitLen() > r.Start.BitLen():
			return fmt.Errorf("masque: route %d: an IPv4 range after an IPv6 one (RFC 9484 4.7.3)", i)
		case a.Start.BitLen() < r.Start.BitLen():
		case a.Protocol > r.Protocol:
			return fmt.Errorf("masque: route %d: protocol %d after %d (RFC 9484 4.7.3)", i, r.Protocol, a.Protocol)
		case a.Protocol == r.Protocol && a.End.Compare(r.Start) >= 0:
			return fmt.Errorf("masque: route %d: %s-%s overlaps or precedes %s-%s (RFC 9484 4.7.3)", i, r.Start, r.End, a.Start, a.End)
		}
	}
	// A protocol-specific range must not overlap an every-protocol range
	// of its family: the every-protocol ranges (protocol 0) come first in
	// each family, sorted and disjoint, so a sweep suffices.
	var all []IPRoute
	j := 0
	for i, r := range rs {
		if i > 0 && rs[i-1].Start.BitLen() != r.Start.BitLen() {
			all, j = nil, 0
		}
		if r.Protocol == 0 {
			all = append(all, r)
			continue
		}
		if i > 0 && rs[i-1].Protocol != r.Protocol {
			j = 0
		}
		for j < len(all) && all[j].End.Compare(r.Start) < 0 {
			j++
		}
		if j < len(all) && all[j].Start.Compare(r.End) <= 0 {
			return fmt.Errorf("masque: route %d: %s-%s for protocol %d overlaps %s-%s for every protocol (RFC 9484 4.7.3)", i, r.Start, r.End, r.Protocol, all[j].Start, all[j].End)
		}
	}
	return nil
}

// Prefixes returns the fewest prefixes that cover exactly r's range.
func (r IPRoute) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	s, e := r.Start, r.End
	bits := s.BitLen()
	for s.IsValid() && s.Compare(e) <= 0 {
		// The shortest prefix starting at s that ends at or before e.
		l := bits
		for l > 0 {
			p := netip.PrefixFrom(s, l-1)
			if p.Masked().Addr() != s || lastAddr(p).Compare(e) > 0 {
				break
			}
			l--
		}
		p := netip.PrefixFrom(s, l)
		out = append(out, p)
		last := lastAddr(p)
		if last == e {
			break
		}
		s = last.Next()
	}
	return out
}

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// DNSNameserver is one nameserver of a DNS configuration
// (draft-ietf-masque-connect-ip-dns-06 section 4.1).
type DNSNameserver struct {
	// Priority is the SvcPriority: 1 is the most preferred; 0 is invalid.
	Priority uint16
	IPv4     []netip.Addr
	IPv6     []netip.Addr
	// AuthDomain is the name to authenticate an encrypted resolver by;
	// empty for plain DNS.
	AuthDomain string
	// ServiceParams is the SvcParams wire form (RFC 9460 section 2.2),
	// carried as received.
	ServiceParams []byte
}

// DNSConfig is one DNS Configuration of a DNS_ASSIGN capsule.
type DNSConfig struct {
	Nameservers []DNSNameserver
	// InternalDomains are the names to resolve through the tunnel,
	// without the trailing dot; "" is the root (every name).
	InternalDomains []string
	// SearchDomains are the search list, without the trailing dot.
	SearchDomains []string
}

// Limits on a DNS_ASSIGN's lists, from the wire format's own bounds.
const (
	maxDomainLen = 255       // RFC 1035 2.3.4
	maxSvcParams = 1<<16 - 1 // an RDATA length is 16 bits (RFC 1035 4.1.3)
)

// AppendDNSAssign appends a DNS_ASSIGN capsule carrying cs (an empty cs:
// "no DNS configuration", which lets a client stop waiting for one).
func AppendDNSAssign(b []byte, cs []DNSConfig) []byte {
	var p []byte
	for _, c := range cs {
		p = quicvarint.Append(p, uint64(len(c.Nameservers)))
		for _, ns := range c.Nameservers {
			p = binary.BigEndian.AppendUint16(p, ns.Priority)
			p = quicvarint.Append(p, uint64(len(ns.IPv4)))
			for _, a := range ns.IPv4 {
				p = append(p, a.AsSlice()...)
			}
			p = quicvarint.Append(p, uint64(len(ns.IPv6)))
			for _, a := range ns.IPv6 {
				p = append(p, a.AsSlice()...)
			}
			p = appendString(p, ns.AuthDomain)
			p = quicvarint.Append(p, uint64(len(ns.ServiceParams)))
			p = append(p, ns.ServiceParams...)
		}
		p = appendStrings(p, c.InternalDomains)
		p = appendStrings(p, c.SearchDomains)
	}
	return AppendCapsule(b, CapsuleDNSAssign, p)
}

func appendString(b []byte, s string) []byte {
	return append(quicvarint.Append(b, uint64(len(s))), s...)
}

func appendStrings(b []byte, ss []string) []byte {
	b = quicvarint.Append(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

// ParseDNSAssign parses the payload of a DNS_ASSIGN capsule. Each
// configuration needs a nameserver; each nameserver a non-zero priority
// and, when it has no service parameters, an address; domain names are at
// most 255 bytes of printable ASCII.
func ParseDNSAssign(p []byte) ([]DNSConfig, error) {
	d := decoder{p: p}
	var out []DNSConfig
	for len(d.p) > 0 && d.err == nil {
		var c DNSConfig
		n := d.count(1 + 2 + 1 + 1 + 1 + 1) // the smallest nameserver
		if n == 0 && d.err == nil {
			return nil, errors.New("masque: DNS_ASSIGN: a configuration without a nameserver")
		}
		for range n {
			ns := DNSNameserver{Priority: d.uint16()}
			if ns.Priority == 0 && d.err == nil {
				return nil, errors.New("masque: DNS_ASSIGN: nameserver priority zero")
			}
			for range d.count(4) {
				ns.IPv4 = append(ns.IPv4, netip.AddrFrom4([4]byte(d.bytes(4))))
			}
			for range d.count(16) {
				a := netip.AddrFrom16([16]byte(d.bytes(16)))
				if a.Is4In6() {
					d.fail(fmt.Errorf("IPv4-mapped nameserver %s in the IPv6 list", a))
				}
				ns.IPv6 = append(ns.IPv6, a)
			}
			ns.AuthDomain = d.domain()
			sp := d.count(1)
			if sp > maxSvcParams {
				d.fail(fmt.Errorf("service parameters of %d bytes (maximum %d)", sp, maxSvcParams))
			}
			if sp > 0 {
				ns.ServiceParams = append([]byte(nil), d.bytes(int(sp))...)
			}
			if d.err == nil && sp == 0 && len(ns.IPv4)+len(ns.IPv6) == 0 {
				d.fail(errors.New("a nameserver without an address"))
			}
			c.Nameservers = append(c.Nameservers, ns)
		}
		for range d.count(1) {
			c.InternalDomains = append(c.InternalDomains, d.domain())
		}
		for range d.count(1) {
			s := d.domain()
			if s == "" && d.err == nil {
				d.fail(errors.New("an empty search domain"))
			}
			c.SearchDomains = append(c.SearchDomains, s)
		}
		if d.err == nil {
			out = append(out, c)
		}
	}
	if d.err != nil {
		return nil, fmt.Errorf("masque: DNS_ASSIGN: %w", d.err)
	}
	return out, nil
}

// decoder reads a byte slice and keeps the first error; reads after an
// error return zero values.
type decoder struct {
	p   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.p = nil
}

func (d *decoder) varint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n, err := quicvarint.Parse(d.p)
	if err != nil {
		d.fail(io.ErrUnexpectedEOF)
		return 0
	}
	d.p = d.p[n:]
	return v
}

// count reads a count of items of at least min bytes each, refusing one
// the remaining bytes cannot hold (so a hostile count allocates nothing).
func (d *decoder) count(min int) uint64 {
	n := d.varint()
	if n > uint64(len(d.p)/min) {
		d.fail(fmt.Errorf("count %d exceeds the %d bytes left", n, len(d.p)))
		return 0
	}
	return n
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil || len(d.p) < n {
		d.fail(io.ErrUnexpectedEOF)
		return make([]byte, n)
	}
	b := d.p[:n]
	d.p = d.p[n:]
	return b
}

func (d *decoder) uint16() uint16 { return binary.BigEndian.Uint16(d.bytes(2)) }

func (d *decoder) domain() string {
	n := d.varint()
	if n > maxDomainLen {
		d.fail(fmt.Errorf("domain name of %d bytes (maximum %d)", n, maxDomainLen))
		return ""
	}
	b := d.bytes(int(n))
	if d.err != nil {
		return ""
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f {
			d.fail(fmt.Errorf("domain name %q is not printable ASCII (IDNA A-labels)", b))
			return ""
		}
	}
	if n > 0 && b[n-1] == '.' {
		d.fail(fmt.Errorf("domain name %q ends with the root dot", b))
		return ""
	}
	return string(b)
}
