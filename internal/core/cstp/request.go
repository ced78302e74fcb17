package cstp

import (
	"encoding/hex"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// CONNECT request header names (anyconnect-protocol.md §2.1, dtls.md §1).
// Requests go through net/http on both sides, so case does not matter here.
const (
	HdrHostname    = "X-CSTP-Hostname"
	HdrAddressType = "X-CSTP-Address-Type"
	// HdrFullIPv6 is X-CSTP-Full-IPv6-Capability: "true" from a client that
	// can run IPv6 inside the tunnel (openconnect sends it always).
	HdrFullIPv6     = "X-CSTP-Full-IPv6-Capability"
	HdrMasterSecret = "X-DTLS-Master-Secret"
	// X-CSTP-Version, X-CSTP-MTU, X-CSTP-Base-MTU, X-CSTP-Address,
	// X-DTLS-CipherSuite and X-DTLS12-CipherSuite share the response's
	// names (HdrVersion, HdrMTU, ...).
)

// MasterSecretLen is the size of the TLS 1.2 master secret a client sends
// in X-DTLS-Master-Secret for legacy DTLS (RFC 5246 §8.1), as 96 hex
// digits.
const MasterSecretLen = 48

// Request is what a client asks for in its CONNECT request, as far as the
// gateway cares. Zero values mean "not sent".
type Request struct {
	// Hostname is X-CSTP-Hostname, the client's host name.
	Hostname string
	// MTU is X-CSTP-MTU, the tunnel MTU the client wants, and BaseMTU
	// X-CSTP-Base-MTU, its link MTU estimate. ParseRequest keeps each
	// only if in [MinBaseMTU, MaxBaseMTU]: the gateway then clamps to its
	// own limits.
	MTU, BaseMTU int
	// IPv4 and IPv6 come from X-CSTP-Address-Type ("IPv6,IPv4" from
	// openconnect): the address families the client can use. Both false:
	// not stated.
	IPv4, IPv6 bool
	// FullIPv6 is X-CSTP-Full-IPv6-Capability: true (case-insensitive).
	FullIPv6 bool
	// Address is X-CSTP-Address: on reconnect, the address the client had
	// and asks to keep (openconnect aborts if it changes).
	Address netip.Addr
	// MasterSecret is X-DTLS-Master-Secret decoded: exactly
	// MasterSecretLen bytes. A secret: never log it.
	MasterSecret []byte
	// CipherSuites is X-DTLS-CipherSuite split at ':' ("PSK-NEGOTIATE:
	// OC-DTLS1_2-AES256-GCM:..."), CipherSuites12 X-DTLS12-CipherSuite
	// (OpenSSL DTLS 1.2 names), in the client's order of preference.
	CipherSuites, CipherSuites12 []string
}

// ParseRequest reads a CONNECT request's headers. It is lenient and never
// fails: a missing header, or a malformed value (an MTU outside
// [MinBaseMTU, MaxBaseMTU] or not plain decimal, an address that does not
// parse or has a zone, a master secret that is not 96 hex digits), leaves
// its field zero; unknown address types and empty cipher names are
// skipped; of a repeated header the first is used; values are trimmed of
// surrounding white space.
func ParseRequest(h http.Header) Request {
	var r Request
	get := func(name string) string { return strings.TrimSpace(h.Get(name)) }
	r.Hostname = get(HdrHostname)
	mtu := func(name string) int {
		if n, ok := decimal(get(name)); ok && n >= MinBaseMTU && n <= MaxBaseMTU {
			return n
		}
		return 0
	}
	r.MTU = mtu(HdrMTU)
	r.BaseMTU = mtu(HdrBaseMTU)
	for t := range strings.SplitSeq(get(HdrAddressType), ",") {
		switch strings.TrimSpace(t) {
		case "IPv4":
			r.IPv4 = true
		case "IPv6":
			r.IPv6 = true
		}
	}
	r.FullIPv6 = strings.EqualFold(get(HdrFullIPv6), "true")
	if a, err := netip.ParseAddr(get(HdrAddress)); err == nil && a.Zone() == "" {
		r.Address = a
	}
	if s := get(HdrMasterSecret); len(s) == 2*MasterSecretLen {
		if b, err := hex.DecodeString(s); err == nil {
			r.MasterSecret = b
		}
	}
	r.CipherSuites = splitList(get(HdrDTLSCipherSuite))
	r.CipherSuites12 = splitList(get(HdrDTLS12CipherSuite))
	return r
}

// SetHeaders sets r's headers on h (a client's request), X-CSTP-Version: 1
// always, every other one only when its field is set. The Go client
// today sends Version, MTU and Address-Type: IPv4.
func (r *Request) SetHeaders(h http.Header) {
	h.Set(HdrVersion, "1")
	if r.Hostname != "" {
		h.Set(HdrHostname, r.Hostname)
	}
	if r.MTU > 0 {
		h.Set(HdrMTU, strconv.Itoa(r.MTU))
	}
	if r.BaseMTU > 0 {
		h.Set(HdrBaseMTU, strconv.Itoa(r.BaseMTU))
	}
	switch {
	case r.IPv4 && r.IPv6:
		h.Set(HdrAddressType, "IPv6,IPv4") // openconnect's order
	case r.IPv4:
		h.Set(HdrAddressType, "IPv4")
	case r.IPv6:
		h.Set(HdrAddressType, "IPv6")
	}
	if r.FullIPv6 {
		h.Set(HdrFullIPv6, "true")
	}
	if r.Address.IsValid() {
		h.Set(HdrAddress, r.Address.String())
	}
	if len(r.MasterSecret) > 0 {
		h.Set(HdrMasterSecret, upperHex(r.MasterSecret))
	}
	if len(r.CipherSuites) > 0 {
		h.Set(HdrDTLSCipherSuite, strings.Join(r.CipherSuites, ":"))
	}
	if len(r.CipherSuites12) > 0 {
		h.Set(HdrDTLS12CipherSuite, strings.Join(r.CipherSuites12, ":"))
	}
}

// WantsIPv6 reports whether the client asks for an IPv6 address inside
// the tunnel: IPv6 among its address types, or full IPv6 capability.
// openconnect 9.01 sends both (anyconnect-protocol.md §2.1).
func (r *Request) WantsIPv6() bool { return r.IPv6 || r.FullIPv6 }

// splitList splits a ':'-separated cipher list, dropping spaces and empty
// names; nil when nothing is left.
func splitList(s string) []string {
	var out []string
	for name := range strings.SplitSeq(s, ":") {
		if name = strings.TrimSpace(name); name != "" {
			out = append(out, name)
		}
	}
	return out
}
