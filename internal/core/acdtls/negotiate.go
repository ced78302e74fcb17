package acdtls

import (
	"crypto/rand"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/pion/dtls/v3"
	"github.com/underpass/underpass/internal/core/cstp"
)

// Mode is the gateway's DTLS policy, the config setting
// `dtls: auto|psk|legacy|off`.
type Mode int

// Modes. The zero value is ModeAuto.
const (
	// ModeAuto offers PSK-NEGOTIATE when the client asks for it and the
	// CSTP connection can export keys, else legacy resumption when the
	// client offers a usable suite and master secret, else nothing.
	ModeAuto Mode = iota
	// ModePSK offers PSK-NEGOTIATE only.
	ModePSK
	// ModeLegacy offers legacy resumption only, even to clients that could
	// do PSK-NEGOTIATE.
	ModeLegacy
	// ModeOff never offers DTLS: the client stays on CSTP.
	ModeOff
)

var modeNames = [...]string{ModeAuto: "auto", ModePSK: "psk", ModeLegacy: "legacy", ModeOff: "off"}

func (m Mode) String() string {
	if m >= 0 && int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode parses a config value: "auto", "psk", "legacy" or "off",
// ignoring case and surrounding spaces; "" is ModeAuto, the default. Any
// other value is an error naming the accepted ones.
func ParseMode(s string) (Mode, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return ModeAuto, nil
	}
	for m, name := range modeNames {
		if s == name {
			return Mode(m), nil
		}
	}
	return 0, fmt.Errorf("acdtls: unknown dtls mode %q (want auto, psk, legacy or off)", s)
}

// CONNECT header names (dtls.md §1, §2), as internal/core/cstp spells them
// (openconnect matches response header names case-sensitively).
const (
	HeaderMasterSecret      = cstp.HdrMasterSecret
	HeaderCipherSuite       = cstp.HdrDTLSCipherSuite
	HeaderDTLS12CipherSuite = cstp.HdrDTLS12CipherSuite
)

// PSKNegotiate is the X-DTLS-CipherSuite name of PSK-NEGOTIATE mode.
const PSKNegotiate = "PSK-NEGOTIATE"

// MasterSecretLen is the size of the TLS 1.2 master secret a legacy client
// sends in X-DTLS-Master-Secret (RFC 5246 §8.1), as 96 hex digits.
const MasterSecretLen = 48

// AppIDLen is the size of the App-ID this package hands out: the largest
// session_id a ClientHello can carry (1..32 allowed, dtls.md §2), so a
// random one cannot collide in practice.
const AppIDLen = 32

// PSKLen is the PSK size openconnect derives from the exporter (dtls.md §3,
// PSK_KEY_SIZE in openconnect).
const PSKLen = 32

// PSKExporterLabel is the RFC 5705 exporter label of the PSK: the gateway
// computes the key as
// tls.ConnectionState.ExportKeyingMaterial(PSKExporterLabel, nil, PSKLen).
const PSKExporterLabel = "EXPORTER-openconnect-psk"

// Offer is what the client asked for in its CONNECT request.
type Offer struct {
	// MasterSecret is X-DTLS-Master-Secret decoded: exactly 48 bytes, or
	// nil when the header is missing or not 96 hex digits (then legacy
	// mode is impossible). It is a secret: never log it.
	MasterSecret []byte
	// CipherSuites is X-DTLS-CipherSuite split at ':' (openconnect:
	// "PSK-NEGOTIATE:OC-DTLS1_2-AES256-GCM:...", or the --dtls-ciphers
	// list; Cisco: DTLS 0.9 names such as "AES128-SHA").
	CipherSuites []string
	// DTLS12CipherSuites is X-DTLS12-CipherSuite split at ':' (OpenSSL
	// DTLS 1.2 names such as "ECDHE-RSA-AES128-GCM-SHA256").
	DTLS12CipherSuites []string
}

// PSKNegotiate reports whether the client offered PSK-NEGOTIATE.
func (o Offer) PSKNegotiate() bool { return slices.Contains(o.CipherSuites, PSKNegotiate) }

// ParseOffer reads the DTLS headers of a CONNECT request (dtls.md §1)
// through cstp.ParseRequest, the one request parser. Missing or malformed
// headers leave the matching field empty; it never fails. Names are
// compared case-sensitively later on, as the clients send them in upper
// case.
func ParseOffer(h http.Header) Offer {
	r := cstp.ParseRequest(h)
	return Offer{MasterSecret: r.MasterSecret, CipherSuites: r.CipherSuites, DTLS12CipherSuites: r.CipherSuites12}
}

// Suite is the cipher suite decision sent in the CONNECT response.
type Suite struct {
	// ID is the pion cipher suite of a legacy session. In PSK mode it is 0:
	// the suite is picked during the DTLS handshake (Params.ServerOptions).
	ID dtls.CipherSuiteID
	// Header is the response header carrying Name: HeaderCipherSuite or
	// HeaderDTLS12CipherSuite. It also tells the client how to read Name
	// (dtls.md §2: the last cipher-suite header wins).
	Header string
	// Name is the header value: "PSK-NEGOTIATE", an OpenSSL DTLS 1.2 name
	// taken from X-DTLS12-CipherSuite, or an "OC-DTLS1_2-*" name taken from
	// X-DTLS-CipherSuite.
	Name string
}

// legacySuite is one suite legacy mode can resume.
type legacySuite struct {
	name   string // as the client offers it
	header string // where the client offers it, and where the answer goes
	id     dtls.CipherSuiteID
}

// Legacy choices in order of preference (dtls.md §4). All are DTLS 1.2 with
// AES-GCM; since the handshake is abbreviated, the key exchange named by the
// suite never runs and only the record protection and PRF hash matter.
// AES-128 comes first: as strong as needed and cheaper per record.
var (
	dtls12Suites = []legacySuite{
		{"ECDHE-RSA-AES128-GCM-SHA256", HeaderDTLS12CipherSuite, dtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
		{"ECDHE-RSA-AES256-GCM-SHA384", HeaderDTLS12CipherSuite, dtls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384},
		{"AES128-GCM-SHA256", HeaderDTLS12CipherSuite, suiteRSAWithAES128GCMSHA256},
		{"AES256-GCM-SHA384", HeaderDTLS12CipherSuite, suiteRSAWithAES256GCMSHA384},
	}
	// openconnect's names in X-DTLS-CipherSuite for the same legacy
	// resumption with TLS_RSA_WITH_AES_*_GCM (what ocserv serves for them).
	ocSuites = []legacySuite{
		{"OC-DTLS1_2-AES128-GCM", HeaderCipherSuite, suiteRSAWithAES128GCMSHA256},
		{"OC-DTLS1_2-AES256-GCM", HeaderCipherSuite, suiteRSAWithAES256GCMSHA384},
	}
)

// Params is the server's DTLS decision for one CSTP connection. The zero
// value means "no DTLS".
type Params struct {
	// PSK is true in PSK-NEGOTIATE mode, false in legacy mode.
	PSK bool
	// AppID (PSK mode) is the random App-ID the client will put in its
	// ClientHello session_id; AppIDLen bytes.
	AppID []byte
	// SessionID (legacy mode) is the server-chosen random session id the
	// client resumes; the ClientHello carries it as session_id.
	SessionID [32]byte
	// MasterSecret (legacy mode) is the client's 48-byte master secret,
	// shared with Offer.MasterSecret. Secret: never log it.
	MasterSecret []byte
	// Suite is the cipher suite answer.
	Suite Suite
}

// Negotiate decides whether and how to offer DTLS to a client that sent
// offer o, under policy mode (dtls.md §3, §4). ok is false when DTLS must
// not be offered: mode is ModeOff (or unknown), or nothing the client
// offered is usable; the caller then sends no X-DTLS-* header at all and the
// client stays on CSTP.
//
// canExport says whether the CSTP connection can feed the PSK exporter
// safely; the caller computes it: true for TLS 1.3
// (ConnectionState().Version == tls.VersionTLS13), and for TLS 1.2 only if
// ConnectionState().ExportKeyingMaterial(PSKExporterLabel, nil, PSKLen)
// returns no error (Go refuses it without Extended Master Secret, and
// openconnect 9.01 never offers EMS).
//
// PSK mode needs "PSK-NEGOTIATE" in X-DTLS-CipherSuite and canExport.
// Legacy mode needs a valid 48-byte master secret and one of, in order:
// ECDHE-RSA-AES128-GCM-SHA256, ECDHE-RSA-AES256-GCM-SHA384,
// AES128-GCM-SHA256, AES256-GCM-SHA384 in X-DTLS12-CipherSuite, else
// OC-DTLS1_2-AES128-GCM, OC-DTLS1_2-AES256-GCM in X-DTLS-CipherSuite. DTLS 0.9
// names (AES128-SHA, DHE-RSA-*, ...) are never chosen: no Go library speaks
// that protocol. Random ids come from crypto/rand.
func Negotiate(mode Mode, o Offer, canExport bool) (Params, bool) {
	if (mode == ModeAuto || mode == ModePSK) && canExport && o.PSKNegotiate() {
		p := Params{
			PSK:   true,
			AppID: make([]byte, AppIDLen),
			Suite: Suite{Header: HeaderCipherSuite, Name: PSKNegotiate},
		}
		rand.Read(p.AppID) // never fails (crypto/rand, Go >= 1.24)
		return p, true
	}
	if mode != ModeAuto && mode != ModeLegacy {
		return Params{}, false
	}
	if len(o.MasterSecret) != MasterSecretLen {
		return Params{}, false
	}
	s, ok := pickLegacy(dtls12Suites, o.DTLS12CipherSuites)
	if !ok {
		s, ok = pickLegacy(ocSuites, o.CipherSuites)
	}
	if !ok {
		return Params{}, false
	}
	p := Params{
		MasterSecret: o.MasterSecret,
		Suite:        Suite{ID: s.id, Header: s.header, Name: s.name},
	}
	rand.Read(p.SessionID[:]) // never fails (crypto/rand, Go >= 1.24)
	return p, true
}

func pickLegacy(prefs []legacySuite, offered []string) (legacySuite, bool) {
	for _, s := range prefs {
		if slices.Contains(offered, s.name) {
			return s, true
		}
	}
	return legacySuite{}, false
}

// Response returns the mode part of the CONNECT response's X-DTLS-*
// headers (dtls.md §2), for cstp.Tunnel.DTLS: PSK mode sets AppID and
// CipherSuite PSK-NEGOTIATE; legacy mode sets SessionID and the chosen
// name in CipherSuite12 (an X-DTLS12 name) or CipherSuite (an OC-DTLS1_2
// name), so the one cipher-suite header sent is the one the client reads.
// The caller sets Port, DPD, Keepalive and MTU (see MTU). nil for the zero
// Params.
func (p Params) Response() *cstp.DTLS {
	switch {
	case p.PSK:
		return &cstp.DTLS{AppID: p.AppID, CipherSuite: PSKNegotiate}
	case p.Suite.Name == "":
		return nil
	case p.Suite.Header == HeaderDTLS12CipherSuite:
		return &cstp.DTLS{SessionID: p.SessionID[:], CipherSuite12: p.Suite.Name}
	default:
		return &cstp.DTLS{SessionID: p.SessionID[:], CipherSuite: p.Suite.Name}
	}
}

// Per-datagram overheads of the DTLS data path, in bytes (dtls.md §8).
const (
	DefaultBaseMTU  = 1500 // Ethernet: the link MTU estimate when the client sends none
	MinIPv6MTU      = 1280 // RFC 8200 §5: openconnect needs at least this with IPv6 inside
	ipv4HeaderLen   = 20   // outer IPv4 header, no options
	ipv6HeaderLen   = 40   // outer IPv6 header, no extension headers
	udpHeaderLen    = 8
	gcmOverhead     = 8 + 16 // AES-GCM and AES-CCM in TLS 1.2: 8-byte explicit nonce + 16-byte tag (RFC 5288, RFC 6655)
	chachaOverhead  = 16     // ChaCha20-Poly1305: 16-byte tag, implicit nonce (RFC 7905)
	framingOverhead = 1      // the AnyConnect type byte (dtls.md §6)
)

// MTU returns the tunnel MTU that fits one DTLS record in one UDP datagram
// (dtls.md §8), the value of X-DTLS-MTU:
//
//	base                 the link MTU estimate (X-CSTP-Base-MTU); <= 0 means 1500
//	- 20 or 40           outer IPv4 or IPv6 header (outerV6: the client reached the gateway over IPv6)
//	- 8                  UDP header
//	- 13                 DTLS record header
//	- 24 or 16           AEAD: AES-GCM/CCM explicit nonce 8 + tag 16; ChaCha20-Poly1305 tag 16
//	- 1                  AnyConnect type byte
//
// so 1500 gives 1434 over IPv4 with AES-GCM. In PSK mode the suite is only
// picked in the DTLS handshake, so the largest overhead of the suites
// ServerOptions may pick (24) is used. With tunnelV6 (an IPv6 address is
// assigned inside the tunnel) the result is at least 1280: openconnect
// falls back to 1280 anyway, and larger packets go over CSTP.
func MTU(base int, outerV6, tunnelV6 bool, p Params) int {
	if base <= 0 {
		base = DefaultBaseMTU
	}
	ip := ipv4HeaderLen
	if outerV6 {
		ip = ipv6HeaderLen
	}
	mtu := base - ip - udpHeaderLen - recordHeaderLen - aeadOverhead(p) - framingOverhead
	if tunnelV6 && mtu < MinIPv6MTU {
		mtu = MinIPv6MTU
	}
	return mtu
}

// aeadOverhead is the per-record expansion of the session's suite.
func aeadOverhead(p Params) int {
	switch p.Suite.ID {
	case dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256, dtls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:
		return chachaOverhead
	}
	// Every legacy suite is AES-GCM; PSK mode (ID 0) may pick AES-GCM or
	// AES-CCM: take the larger.
	return gcmOverhead
}
