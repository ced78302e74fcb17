package cstp

import (
	"encoding/hex"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// The CONNECT response (anyconnect-protocol.md §2.2, dtls.md §2): after
// "CONNECT /CSCOSSLC/tunnel", the gateway answers
//
//	HTTP/1.1 200 CONNECTED\r\n
//	X-CSTP-Version: 1\r\n
//	X-CSTP-Address: 192.0.2.10\r\n
//	...\r\n
//	\r\n
//
// and CSTP frames follow at once. Tunnel describes those headers; its
// AppendHeaders is the one encoder (the gateway's) and ParseTunnel the one
// parser (the Go client's).
//
// openconnect matches the header names case-sensitively (cstp.c compares
// with strcmp after the "X-CSTP-"/"X-DTLS-" prefix), so the encoder writes
// the exact spellings below, never through http.Header, whose
// canonicalisation would send "X-Dtls-App-Id".

// CONNECT response header names, spelt as openconnect matches them.
const (
	HdrVersion             = "X-CSTP-Version"
	HdrServerName          = "X-CSTP-Server-Name"
	HdrAddress             = "X-CSTP-Address"
	HdrNetmask             = "X-CSTP-Netmask"
	HdrAddressIP6          = "X-CSTP-Address-IP6"
	HdrDNS                 = "X-CSTP-DNS"
	HdrDNSIP6              = "X-CSTP-DNS-IP6" // IPv6 resolvers of a dual-stack reply (see Tunnel.Address6)
	HdrDefaultDomain       = "X-CSTP-Default-Domain"
	HdrSplitInclude        = "X-CSTP-Split-Include"
	HdrSplitIncludeIP6     = "X-CSTP-Split-Include-IP6" // IPv6 routes of a dual-stack reply (see Tunnel.Address6)
	HdrSplitExclude        = "X-CSTP-Split-Exclude"
	HdrSplitExcludeIP6     = "X-CSTP-Split-Exclude-IP6" // as above
	HdrTunnelAllDNS        = "X-CSTP-Tunnel-All-DNS"
	HdrSplitDNS            = "X-CSTP-Split-DNS"
	HdrKeepalive           = "X-CSTP-Keepalive"
	HdrDPD                 = "X-CSTP-DPD"
	HdrIdleTimeout         = "X-CSTP-Idle-Timeout"
	HdrSessionTimeout      = "X-CSTP-Session-Timeout"
	HdrDisconnectedTimeout = "X-CSTP-Disconnected-Timeout"
	HdrRekeyMethod         = "X-CSTP-Rekey-Method"
	HdrMTU                 = "X-CSTP-MTU"
	HdrBaseMTU             = "X-CSTP-Base-MTU"
	HdrProxyPACURL         = "X-CSTP-MSIE-Proxy-PAC-URL"
	HdrProxyServer         = "X-CSTP-MSIE-Proxy-Server"
	HdrProxyExceptions     = "X-CSTP-MSIE-Proxy-Exceptions"
	HdrBanner              = "X-CSTP-Banner"

	HdrDTLSPort          = "X-DTLS-Port"
	HdrDTLSDPD           = "X-DTLS-DPD"
	HdrDTLSKeepalive     = "X-DTLS-Keepalive"
	HdrDTLSMTU           = "X-DTLS-MTU"
	HdrDTLSAppID         = "X-DTLS-App-ID"
	HdrDTLSSessionID     = "X-DTLS-Session-ID"
	HdrDTLSCipherSuite   = "X-DTLS-CipherSuite"
	HdrDTLS12CipherSuite = "X-DTLS12-CipherSuite"
)

// StatusConnected is the status line of a successful CONNECT. openconnect
// only checks the "HTTP/1.1 200 " prefix; "CONNECTED" is ocserv's text.
const StatusConnected = "HTTP/1.1 200 CONNECTED"

// PSKNegotiate is the X-DTLS-CipherSuite value of PSK-NEGOTIATE mode
// (dtls.md §2, §3).
const PSKNegotiate = "PSK-NEGOTIATE"

// Limits checked by ParseTunnel and Validate, each with its reason.
const (
	// MinMTU is the smallest tunnel MTU accepted: 1280 is the IPv6
	// minimum (RFC 8200 §5) and openconnect refuses IPv6 below it. Same
	// value as tunnel.MinMTU.
	MinMTU = 1280
	// MaxMTU is the largest tunnel MTU: the packet plus its 8-byte frame
	// header must fit one TLS record (MaxRecordPayload). Same value as
	// tunnel.MaxMTU.
	MaxMTU = MaxRecordPayload
	// MinBaseMTU is the smallest link MTU a Base-MTU may state: 576, the
	// datagram size every IPv4 host must accept (RFC 791).
	MinBaseMTU = 576
	// MaxBaseMTU is the largest: 65535, the IPv4 total-length field's
	// limit (RFC 791). The gateway sends its tunnel MTU (16000) here.
	MaxBaseMTU = 65535
	// MaxSeconds bounds every timer header: openconnect keeps them in a C
	// int, and 2^31-1 seconds (68 years) also fits a time.Duration.
	MaxSeconds = math.MaxInt32
	// MaxAppIDLen is the longest X-DTLS-App-ID, in bytes: the App-ID
	// travels as the ClientHello session_id, at most 32 bytes (RFC 5246
	// §7.4.1.2; dtls.md §2).
	MaxAppIDLen = 32
	// SessionIDLen is the X-DTLS-Session-ID size, in bytes: openconnect
	// wants exactly 64 hex digits and fails the CONNECT otherwise
	// (dtls.md §2).
	SessionIDLen = 32
)

// Tunnel is the configuration a CONNECT response carries. Header order
// on the wire is the field order below (the gateway's connectResponse
// order: the DTLS block sits between X-CSTP-Base-MTU and the proxy
// headers).
//
// Durations travel as whole seconds (truncated; a negative one is written
// as 0). Zero values mean "not sent" unless noted, so a Tunnel parsed from
// a reply that lacked an optional header encodes without it.
type Tunnel struct {
	// ServerName is X-CSTP-Server-Name (the gateway sends "underpass").
	// Not sent when empty.
	ServerName string
	// Address is X-CSTP-Address, the client's IPv4 address. Required by
	// ParseTunnel (the Go client is IPv4-only).
	Address netip.Addr
	// Netmask is the prefix length of the address pool, sent as
	// X-CSTP-Netmask in dotted form (16 -> 255.255.0.0). 0: not sent (a /0
	// pool cannot exist, so 0 is free to mean "absent").
	Netmask int
	// Address6 is X-CSTP-Address-IP6, "addr/len": the client's IPv6
	// address and the prefix length of its network (host bits kept), as
	// openconnect passes it to its script (INTERNAL_IP6_NETMASK, which
	// vpnc-script assigns to the tun device). Invalid (zero): not sent.
	//
	// When set (a dual-stack reply), the IPv6 resolvers and routes at the
	// end of DNS, SplitInclude and SplitExclude (those after the last
	// IPv4 one) are sent in the -IP6 headers, as ocserv does; openconnect
	// 9.01 reads both spellings into the same lists and sorts routes by
	// family itself (CISCO_IPV6_SPLIT_INC for those with a ':'). An IPv6
	// entry before an IPv4 one stays in the plain header, so that
	// ParseTunnel, which cannot see the order between two header names,
	// returns every list as it was. Without Address6 every entry goes in
	// the plain header.
	Address6 netip.Prefix
	// DNS lists the resolvers, one X-CSTP-DNS header each, in order
	// (openconnect uses the first three). ParseTunnel also reads
	// X-CSTP-DNS-IP6 and appends those after the X-CSTP-DNS ones.
	DNS []netip.Addr
	// DefaultDomain is X-CSTP-Default-Domain: DNS search domains, one
	// header, space separated. Not sent when empty.
	DefaultDomain []string
	// SplitInclude and SplitExclude are the split routes, one
	// X-CSTP-Split-Include / X-CSTP-Split-Exclude header each, written by
	// FormatRoute. No include route means "everything through the VPN".
	// ParseTunnel also reads the -IP6 variants (appended after) and
	// returns the routes masked.
	SplitInclude, SplitExclude []netip.Prefix
	// TunnelAllDNS is X-CSTP-Tunnel-All-DNS: true (sent only when true):
	// every DNS query goes to the VPN's resolvers.
	TunnelAllDNS bool
	// SplitDNS lists the domains whose names the VPN's resolvers answer,
	// one X-CSTP-Split-DNS header each.
	SplitDNS []string
	// Keepalive is X-CSTP-Keepalive, DPD X-CSTP-DPD: seconds, always
	// sent (0 included, as the gateway always did). ParseTunnel returns 0
	// when absent; the client applies its defaults.
	Keepalive, DPD time.Duration
	// IdleTimeout is X-CSTP-Idle-Timeout, always sent: seconds, or "none"
	// for 0 (no idle timeout).
	IdleTimeout time.Duration
	// SessionTimeout is X-CSTP-Session-Timeout (time left before the
	// session must sign in again) and DisconnectedTimeout
	// X-CSTP-Disconnected-Timeout (how long the gateway keeps a session
	// whose connection dropped): seconds, always sent. ParseTunnel also
	// reads "none" (ocserv's word for no limit) as 0.
	SessionTimeout, DisconnectedTimeout time.Duration
	// X-CSTP-Rekey-Method: none is always sent after the timers: Go's TLS
	// cannot renegotiate (anyconnect-protocol.md §2.2).

	// MTU is X-CSTP-MTU, the tunnel MTU: required, in [MinMTU, MaxMTU],
	// always sent.
	MTU int
	// BaseMTU is X-CSTP-Base-MTU, the link MTU estimate the DTLS MTU is
	// sized from (dtls.md §8), in [MinBaseMTU, MaxBaseMTU]. 0: not sent.
	BaseMTU int
	// DTLS is the UDP channel offer. nil: no X-DTLS-* header at all, and
	// the client stays on CSTP.
	DTLS *DTLS
	// Proxy is the web proxy configuration (X-CSTP-MSIE-Proxy-*).
	Proxy Proxy
	// Banner is X-CSTP-Banner, shown after connecting. Not sent when empty.
	Banner string
}

// Proxy is the web proxy pushed to the client. openconnect 9.01 exports
// only the PAC URL to its script (CISCO_PROXY_PAC); Cisco clients read
// all three.
type Proxy struct {
	// PACURL is X-CSTP-MSIE-Proxy-PAC-URL. Not sent when empty.
	PACURL string
	// Server is X-CSTP-MSIE-Proxy-Server, "host:port". Not sent when empty.
	Server string
	// Exceptions are the hosts reached without the proxy, sent joined by
	// ';' in one X-CSTP-MSIE-Proxy-Exceptions header. ParseTunnel drops
	// empty entries and the spaces around each.
	Exceptions []string
}

// DTLS is the X-DTLS-* part of a CONNECT response (dtls.md §2). Exactly
// one of AppID and SessionID is set; that picks the mode:
//
//   - PSK-NEGOTIATE: AppID (1..32 bytes), CipherSuite = PSKNegotiate,
//     CipherSuite12 empty. The client derives the key from the CSTP TLS
//     session.
//   - legacy: SessionID (32 bytes) and exactly one of CipherSuite12 (an
//     OpenSSL DTLS 1.2 name, e.g. ECDHE-RSA-AES128-GCM-SHA256, sent as
//     X-DTLS12-CipherSuite) and CipherSuite (an openconnect name, e.g.
//     OC-DTLS1_2-AES128-GCM, sent as X-DTLS-CipherSuite). The client
//     resumes with its X-DTLS-Master-Secret.
//
// Wire order (the gateway's dtlsHeaders and acdtls.Params.Headers):
// X-DTLS-Port, X-DTLS-DPD, X-DTLS-Keepalive, X-DTLS-MTU, X-DTLS-App-ID or
// X-DTLS-Session-ID (upper-case hex), then the cipher suite header last,
// X-DTLS12-CipherSuite before X-DTLS-CipherSuite: the last cipher-suite
// header wins in openconnect, so even a DTLS that fails Validate never
// sends X-DTLS12-CipherSuite after PSK-NEGOTIATE. No rekey or
// Content-Encoding header is ever sent (dtls.md §2).
type DTLS struct {
	// Port is X-DTLS-Port, the UDP port on the CSTP peer's address:
	// required, 1..65535.
	Port int
	// DPD is X-DTLS-DPD and Keepalive X-DTLS-Keepalive: seconds, always
	// sent (0 included). ParseTunnel returns 0 when absent.
	DPD, Keepalive time.Duration
	// MTU is X-DTLS-MTU, the largest packet sent over DTLS, in [1,
	// MaxMTU]: openconnect sets the tunnel MTU to max(X-CSTP-MTU,
	// X-DTLS-MTU), so more than MaxMTU would outgrow a CSTP frame. 0: not
	// sent.
	MTU int
	// AppID is X-DTLS-App-ID (PSK mode), the ClientHello session_id.
	AppID []byte
	// SessionID is X-DTLS-Session-ID (legacy mode), SessionIDLen bytes.
	// It is secret-adjacent: with the master secret it resumes a session.
	SessionID []byte
	// CipherSuite is X-DTLS-CipherSuite: PSKNegotiate, or one legacy name.
	CipherSuite string
	// CipherSuite12 is X-DTLS12-CipherSuite: one legacy DTLS 1.2 name.
	CipherSuite12 string
}

// HeaderError is the error ParseTunnel and Validate return: it names the
// header and the value on the wire.
type HeaderError struct {
	Name   string // the header, spelt as openconnect sends it
	Value  string // the value read (or, from Validate, that would be sent); "" when missing
	Reason string // what is wrong
}

func (e *HeaderError) Error() string {
	return fmt.Sprintf("cstp: %s %q: %s", e.Name, e.Value, e.Reason)
}

func hdrErr(name, value, format string, args ...any) error {
	return &HeaderError{Name: name, Value: value, Reason: fmt.Sprintf(format, args...)}
}

// AppendResponse appends the whole CONNECT reply head: StatusConnected,
// the headers of AppendHeaders, and the blank line that ends them. CSTP
// frames may follow directly.
func (t *Tunnel) AppendResponse(b []byte) []byte {
	b = append(b, StatusConnected+"\r\n"...)
	b = t.AppendHeaders(b)
	return append(b, "\r\n"...)
}

// AppendHeaders appends t's headers to b, one "Name: value\r\n" line each,
// with the exact-case names and in the order Tunnel documents; X-CSTP-Version:
// 1 comes first. It does not validate (see Validate) but never writes a
// malformed line: invalid fields are left out, and a byte that cannot
// appear in a header value (a control character other than tab) is
// written as a space.
func (t *Tunnel) AppendHeaders(b []byte) []byte {
	h := func(k, v string) {
		b = append(b, k...)
		b = append(b, ": "...)
		for i := 0; i < len(v); i++ {
			if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
				b = append(b, ' ')
			} else {
				b = append(b, c)
			}
		}
		b = append(b, "\r\n"...)
	}
	h(HdrVersion, "1")
	if t.ServerName != "" {
		h(HdrServerName, t.ServerName)
	}
	if t.Address.IsValid() {
		h(HdrAddress, t.Address.String())
	}
	if t.Netmask > 0 && t.Netmask <= 32 {
		h(HdrNetmask, Netmask(t.Netmask))
	}
	ip6 := t.Address6.IsValid()
	if ip6 {
		h(HdrAddressIP6, t.Address6.String())
	}
	// name picks the plain or the -IP6 header for entry i of a list
	// whose IPv6 tail starts at tail.
	name := func(plain, v6 string, i, tail int) string {
		if ip6 && i >= tail {
			return v6
		}
		return plain
	}
	tail := v6Tail(len(t.DNS), func(i int) bool { return t.DNS[i].Is6() })
	for i, d := range t.DNS {
		if d.IsValid() {
			h(name(HdrDNS, HdrDNSIP6, i, tail), d.String())
		}
	}
	if len(t.DefaultDomain) > 0 {
		h(HdrDefaultDomain, strings.Join(t.DefaultDomain, " "))
	}
	for _, l := range []struct {
		plain, v6 string
		routes    []netip.Prefix
	}{{HdrSplitInclude, HdrSplitIncludeIP6, t.SplitInclude}, {HdrSplitExclude, HdrSplitExcludeIP6, t.SplitExclude}} {
		// An IPv4-mapped prefix is not an IPv6 route to a client
		// (Split-Include-IP6 would mislead it): it stays in the plain
		// header.
		tail := v6Tail(len(l.routes), func(i int) bool { return l.routes[i].Addr().Is6() && !l.routes[i].Addr().Is4In6() })
		for i, p := range l.routes {
			if p.IsValid() {
				h(name(l.plain, l.v6, i, tail), FormatRoute(p))
			}
		}
	}
	if t.TunnelAllDNS {
		h(HdrTunnelAllDNS, "true")
	}
	for _, d := range t.SplitDNS {
		h(HdrSplitDNS, d)
	}
	h(HdrKeepalive, seconds(t.Keepalive))
	h(HdrDPD, seconds(t.DPD))
	if s := seconds(t.IdleTimeout); s != "0" {
		h(HdrIdleTimeout, s)
	} else {
		h(HdrIdleTimeout, "none")
	}
	h(HdrSessionTimeout, seconds(t.SessionTimeout))
	h(HdrDisconnectedTimeout, seconds(t.DisconnectedTimeout))
	h(HdrRekeyMethod, "none")
	h(HdrMTU, strconv.Itoa(t.MTU))
	if t.BaseMTU > 0 {
		h(HdrBaseMTU, strconv.Itoa(t.BaseMTU))
	}
	if d := t.DTLS; d != nil {
		h(HdrDTLSPort, strconv.Itoa(d.Port))
		h(HdrDTLSDPD, seconds(d.DPD))
		h(HdrDTLSKeepalive, seconds(d.Keepalive))
		if d.MTU > 0 {
			h(HdrDTLSMTU, strconv.Itoa(d.MTU))
		}
		switch {
		case len(d.AppID) > 0:
			h(HdrDTLSAppID, upperHex(d.AppID))
		case len(d.SessionID) > 0:
			h(HdrDTLSSessionID, upperHex(d.SessionID))
		}
		if d.CipherSuite12 != "" {
			h(HdrDTLS12CipherSuite, d.CipherSuite12)
		}
		if d.CipherSuite != "" {
			h(HdrDTLSCipherSuite, d.CipherSuite) // last: it wins (dtls.md §2)
		}
	}
	if t.Proxy.PACURL != "" {
		h(HdrProxyPACURL, t.Proxy.PACURL)
	}
	if t.Proxy.Server != "" {
		h(HdrProxyServer, t.Proxy.Server)
	}
	if len(t.Proxy.Exceptions) > 0 {
		h(HdrProxyExceptions, strings.Join(t.Proxy.Exceptions, ";"))
	}
	if t.Banner != "" {
		h(HdrBanner, t.Banner)
	}
	return b
}

// seconds writes d as whole seconds, truncated, a negative d as 0.
func seconds(d time.Duration) string {
	return strconv.FormatInt(int64(max(d, 0)/time.Second), 10)
}

// v6Tail returns where the IPv6 tail of a list of n entries starts: the
// index after its last IPv4 entry (n when the last entry is IPv4 or the
// list is empty). is6 reports whether entry i is IPv6.
func v6Tail(n int, is6 func(i int) bool) int {
	i := n
	for i > 0 && is6(i-1) {
		i--
	}
	return i
}

// upperHex is hex in upper case, as openconnect writes its own secrets.
func upperHex(b []byte) string { return strings.ToUpper(hex.EncodeToString(b)) }

// ParseTunnel reads the configuration from the headers of a CONNECT reply
// (as http.ReadResponse returns them). It is strict about what the client
// relies on and returns a *HeaderError naming the header and the value:
//
//   - X-CSTP-Address is required and must be IPv4; X-CSTP-MTU is required
//     and in [MinMTU, MaxMTU];
//   - every header read below must appear at most once, except the
//     repeatable DNS, route and Split-DNS headers;
//   - numbers are plain decimal (no sign, no leading zero); timers are
//     whole seconds in [0, MaxSeconds] ("none" = 0 for the three
//     *-Timeout headers);
//   - X-CSTP-Netmask must be a contiguous dotted mask, not 0.0.0.0;
//     X-CSTP-Address-IP6 an IPv6 addr/len; every resolver an address
//     without zone; every route must pass ParseRoute;
//   - the DTLS part, present when X-DTLS-App-ID or X-DTLS-Session-ID is,
//     must be one consistent mode (see DTLS and Validate). Both
//     X-DTLS-CipherSuite and X-DTLS12-CipherSuite is an error: http.Header
//     does not keep their order, so which one openconnect would obey is
//     unknown. X-DTLS-* headers without App-ID or Session-ID are ignored,
//     as openconnect then stays on CSTP.
//
// Values are trimmed of surrounding spaces and tabs. Unknown headers,
// X-CSTP-Version and X-CSTP-Rekey-Method are ignored.
// Routes are returned masked. Absent optional headers leave zero values.
// The result passes Validate.
func ParseTunnel(h http.Header) (*Tunnel, error) {
	t := &Tunnel{}
	var err error
	// values returns the values of a header, trimmed of spaces and tabs:
	// net/textproto leaves a trailing space where an obsolete line folding
	// ended in white space, and the encoder would not send it back.
	values := func(name string) []string {
		var out []string
		for _, v := range h.Values(name) {
			out = append(out, strings.Trim(v, " \t"))
		}
		return out
	}
	one := func(name string) (string, bool) {
		vs := values(name)
		if len(vs) > 1 && err == nil {
			err = hdrErr(name, vs[1], "given %d times, want at most once", len(vs))
		}
		if len(vs) == 0 {
			return "", false
		}
		return vs[0], true
	}
	// num reads a plain decimal header into *dst; absent leaves it alone.
	num := func(dst *int, name string, lo, hi int) {
		v, ok := one(name)
		if !ok || err != nil {
			return
		}
		n, ok := decimal(v)
		switch {
		case !ok:
			err = hdrErr(name, v, "not a decimal number")
		case n < lo || n > hi:
			err = hdrErr(name, v, "out of range [%d, %d]", lo, hi)
		default:
			*dst = n
		}
	}
	secs := func(dst *time.Duration, name string, none bool) {
		v, ok := one(name)
		if !ok || err != nil {
			return
		}
		if none && v == "none" {
			return
		}
		n, ok := decimal(v)
		switch {
		case !ok:
			err = hdrErr(name, v, "not a whole number of seconds")
		case n > MaxSeconds:
			err = hdrErr(name, v, "more than %d seconds", MaxSeconds)
		default:
			*dst = time.Duration(n) * time.Second
		}
	}
	addrs := func(names ...string) []netip.Addr {
		var out []netip.Addr
		for _, name := range names {
			for _, v := range values(name) {
				a, perr := netip.ParseAddr(v)
				if (perr != nil || a.Zone() != "") && err == nil {
					err = hdrErr(name, v, "not an IP address")
				}
				out = append(out, a)
			}
		}
		return out
	}
	routes := func(names ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, name := range names {
			for _, v := range values(name) {
				p, perr := ParseRoute(v)
				if perr != nil && err == nil {
					err = hdrErr(name, v, "%s", perr.(*RouteError).Reason)
				}
				out = append(out, p.Masked())
			}
		}
		return out
	}

	t.ServerName, _ = one(HdrServerName)
	if v, _ := one(HdrAddress); err == nil {
		a, perr := netip.ParseAddr(v)
		switch {
		case v == "":
			err = hdrErr(HdrAddress, v, "missing")
		case perr != nil || !a.Is4():
			err = hdrErr(HdrAddress, v, "not an IPv4 address")
		}
		t.Address = a
	}
	if v, ok := one(HdrNetmask); ok && err == nil {
		m, perr := netip.ParseAddr(v)
		bits, contiguous := NetmaskBits(m)
		switch {
		case perr != nil || !m.Is4():
			err = hdrErr(HdrNetmask, v, "not a dotted IPv4 netmask")
		case !contiguous:
			err = hdrErr(HdrNetmask, v, "netmask is not contiguous")
		case bits == 0:
			err = hdrErr(HdrNetmask, v, "netmask of a /0 pool")
		}
		t.Netmask = bits
	}
	if v, ok := one(HdrAddressIP6); ok && err == nil {
		p, perr := netip.ParsePrefix(v)
		if perr != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
			err = hdrErr(HdrAddressIP6, v, "not an IPv6 address/prefix-length")
		}
		t.Address6 = p
	}
	t.DNS = addrs(HdrDNS, HdrDNSIP6)
	if v, ok := one(HdrDefaultDomain); ok && strings.TrimSpace(v) != "" {
		t.DefaultDomain = strings.Fields(v)
	}
	t.SplitInclude = routes(HdrSplitInclude, HdrSplitIncludeIP6)
	t.SplitExclude = routes(HdrSplitExclude, HdrSplitExcludeIP6)
	if v, ok := one(HdrTunnelAllDNS); ok {
		switch v {
		case "true":
			t.TunnelAllDNS = true
		case "false":
		default:
			if err == nil {
				err = hdrErr(HdrTunnelAllDNS, v, `want "true" or "false"`)
			}
		}
	}
	t.SplitDNS = values(HdrSplitDNS)
	secs(&t.Keepalive, HdrKeepalive, false)
	secs(&t.DPD, HdrDPD, false)
	secs(&t.IdleTimeout, HdrIdleTimeout, true)
	secs(&t.SessionTimeout, HdrSessionTimeout, true)
	secs(&t.DisconnectedTimeout, HdrDisconnectedTimeout, true)
	if _, ok := one(HdrMTU); !ok && err == nil {
		err = hdrErr(HdrMTU, "", "missing")
	}
	num(&t.MTU, HdrMTU, MinMTU, MaxMTU)
	num(&t.BaseMTU, HdrBaseMTU, MinBaseMTU, MaxBaseMTU)
	t.Proxy.PACURL, _ = one(HdrProxyPACURL)
	t.Proxy.Server, _ = one(HdrProxyServer)
	if v, ok := one(HdrProxyExceptions); ok {
		for e := range strings.SplitSeq(v, ";") {
			if e = strings.TrimSpace(e); e != "" {
				t.Proxy.Exceptions = append(t.Proxy.Exceptions, e)
			}
		}
	}
	t.Banner, _ = one(HdrBanner)

	appID, hasApp := one(HdrDTLSAppID)
	sessID, hasSess := one(HdrDTLSSessionID)
	if hasApp || hasSess {
		d := &DTLS{}
		t.DTLS = d
		if hasApp {
			var perr error
			if d.AppID, perr = hex.DecodeString(appID); (perr != nil || len(d.AppID) == 0) && err == nil {
				err = hdrErr(HdrDTLSAppID, appID, "not hex digits")
			}
		}
		if hasSess {
			var perr error
			if d.SessionID, perr = hex.DecodeString(sessID); perr != nil && err == nil {
				err = hdrErr(HdrDTLSSessionID, sessID, "not hex digits")
			}
		}
		if _, ok := one(HdrDTLSPort); !ok && err == nil {
			err = hdrErr(HdrDTLSPort, "", "missing")
		}
		num(&d.Port, HdrDTLSPort, 1, 65535) // a UDP port (RFC 768)
		secs(&d.DPD, HdrDTLSDPD, false)
		secs(&d.Keepalive, HdrDTLSKeepalive, false)
		num(&d.MTU, HdrDTLSMTU, 1, MaxMTU)
		d.CipherSuite, _ = one(HdrDTLSCipherSuite)
		d.CipherSuite12, _ = one(HdrDTLS12CipherSuite)
		if d.CipherSuite != "" && d.CipherSuite12 != "" && err == nil {
			err = hdrErr(HdrDTLS12CipherSuite, d.CipherSuite12,
				"sent with %s %q: which one openconnect obeys depends on their order, which is lost", HdrDTLSCipherSuite, d.CipherSuite)
		}
	}
	if err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return t, nil
}

// Validate checks t against the rules ParseTunnel enforces, so a gateway
// can test its Tunnel before sending it. It returns the first problem, a
// *HeaderError naming the header and the value AppendHeaders would write.
func (t *Tunnel) Validate() error {
	switch {
	case !t.Address.Is4():
		return hdrErr(HdrAddress, addrString(t.Address), "not an IPv4 address")
	case t.Netmask < 0 || t.Netmask > 32:
		return hdrErr(HdrNetmask, strconv.Itoa(t.Netmask), "prefix length out of range [0, 32]")
	case t.Address6.IsValid() && (!t.Address6.Addr().Is6() || t.Address6.Addr().Is4In6()):
		return hdrErr(HdrAddressIP6, t.Address6.String(), "not an IPv6 address/prefix-length")
	case t.MTU < MinMTU || t.MTU > MaxMTU:
		return hdrErr(HdrMTU, strconv.Itoa(t.MTU), "out of range [%d, %d]", MinMTU, MaxMTU)
	case t.BaseMTU != 0 && (t.BaseMTU < MinBaseMTU || t.BaseMTU > MaxBaseMTU):
		return hdrErr(HdrBaseMTU, strconv.Itoa(t.BaseMTU), "out of range [%d, %d]", MinBaseMTU, MaxBaseMTU)
	}
	for _, d := range t.DNS {
		if !d.IsValid() || d.Zone() != "" {
			return hdrErr(HdrDNS, addrString(d), "not an IP address")
		}
	}
	for _, r := range []struct {
		name string
		ps   []netip.Prefix
	}{{HdrSplitInclude, t.SplitInclude}, {HdrSplitExclude, t.SplitExclude}} {
		for _, p := range r.ps {
			if !p.IsValid() || p.Addr().Zone() != "" {
				return hdrErr(r.name, p.String(), "not a valid prefix")
			}
		}
	}
	for _, s := range []struct {
		name string
		d    time.Duration
	}{
		{HdrKeepalive, t.Keepalive}, {HdrDPD, t.DPD}, {HdrIdleTimeout, t.IdleTimeout},
		{HdrSessionTimeout, t.SessionTimeout}, {HdrDisconnectedTimeout, t.DisconnectedTimeout},
	} {
		if err := checkSeconds(s.name, s.d); err != nil {
			return err
		}
	}
	if t.DTLS != nil {
		return t.DTLS.validate()
	}
	return nil
}

func (d *DTLS) validate() error {
	switch {
	case len(d.AppID) > 0 && len(d.SessionID) > 0:
		return hdrErr(HdrDTLSSessionID, upperHex(d.SessionID), "sent with %s: pick PSK or legacy mode", HdrDTLSAppID)
	case len(d.AppID) > MaxAppIDLen:
		return hdrErr(HdrDTLSAppID, upperHex(d.AppID), "%d bytes, at most %d", len(d.AppID), MaxAppIDLen)
	case len(d.AppID) > 0 && d.CipherSuite != PSKNegotiate:
		return hdrErr(HdrDTLSCipherSuite, d.CipherSuite, "want %s with %s", PSKNegotiate, HdrDTLSAppID)
	case len(d.AppID) > 0 && d.CipherSuite12 != "":
		return hdrErr(HdrDTLS12CipherSuite, d.CipherSuite12, "never with %s: it would switch the client to legacy mode", PSKNegotiate)
	case len(d.AppID) == 0 && len(d.SessionID) != SessionIDLen:
		return hdrErr(HdrDTLSSessionID, upperHex(d.SessionID), "want exactly %d hex digits", 2*SessionIDLen)
	case len(d.AppID) == 0 && (d.CipherSuite == "") == (d.CipherSuite12 == ""):
		return hdrErr(HdrDTLSCipherSuite, d.CipherSuite, "legacy mode needs exactly one of %s and %s", HdrDTLSCipherSuite, HdrDTLS12CipherSuite)
	case len(d.AppID) == 0 && d.CipherSuite == PSKNegotiate:
		return hdrErr(HdrDTLSCipherSuite, d.CipherSuite, "needs %s", HdrDTLSAppID)
	case d.Port < 1 || d.Port > 65535:
		return hdrErr(HdrDTLSPort, strconv.Itoa(d.Port), "not a UDP port")
	case d.MTU < 0 || d.MTU > MaxMTU:
		return hdrErr(HdrDTLSMTU, strconv.Itoa(d.MTU), "out of range [1, %d]", MaxMTU)
	}
	for _, s := range []struct{ name, v string }{{HdrDTLSCipherSuite, d.CipherSuite}, {HdrDTLS12CipherSuite, d.CipherSuite12}} {
		if strings.ContainsAny(s.v, ": \t") {
			return hdrErr(s.name, s.v, "want one cipher suite name")
		}
	}
	if err := checkSeconds(HdrDTLSDPD, d.DPD); err != nil {
		return err
	}
	return checkSeconds(HdrDTLSKeepalive, d.Keepalive)
}

// checkSeconds accepts what a timer header can carry. A fraction of a
// second is fine (AppendHeaders truncates it); a negative duration is a
// bug in the caller even though AppendHeaders would write 0.
func checkSeconds(name string, d time.Duration) error {
	if d < 0 || d >= (MaxSeconds+1)*time.Second {
		return hdrErr(name, d.String(), "want seconds in [0, %d]", MaxSeconds)
	}
	return nil
}

// addrString is a.String() with "" for the zero Addr.
func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
