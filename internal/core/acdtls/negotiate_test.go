package acdtls

import (
	"bytes"
	"encoding/hex"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/pion/dtls/v3"
	"github.com/underpass/underpass/internal/core/cstp"
)

// Offers as the real clients send them (dtls.md §1).
const (
	ocSecret       = "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"
	ocCipherSuites = "PSK-NEGOTIATE:OC-DTLS1_2-AES256-GCM:OC2-DTLS1_2-CHACHA20-POLY1305:OC-DTLS1_2-AES128-GCM:DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA"
	ocDTLS12Suites = "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-GCM-SHA256:ECDHE-RSA-AES256-SHA:AES256-SHA"
)

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestParseMode(t *testing.T) {
	tests := []struct {
		in   string
		want Mode
		err  bool
	}{
		{"", ModeAuto, false},
		{"auto", ModeAuto, false},
		{"psk", ModePSK, false},
		{" Legacy ", ModeLegacy, false},
		{"OFF", ModeOff, false},
		{"on", 0, true},
		{"dtls", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseMode(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v, err %v", tt.in, got, err, tt.want, tt.err)
		}
		if err == nil {
			if back, _ := ParseMode(got.String()); back != got {
				t.Errorf("%v does not round-trip", got)
			}
		}
	}
	if s := Mode(9).String(); s != "Mode(9)" {
		t.Errorf("Mode(9).String() = %q", s)
	}
}

func TestParseOffer(t *testing.T) {
	secret, _ := hex.DecodeString(ocSecret)
	tests := []struct {
		name   string
		h      http.Header
		secret []byte
		cs     []string
		cs12   []string
		psk    bool
	}{
		{"openconnect default", hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS-CipherSuite", ocCipherSuites, "X-DTLS12-CipherSuite", ocDTLS12Suites),
			secret, strings.Split(ocCipherSuites, ":"), strings.Split(ocDTLS12Suites, ":"), true},
		{"lower-case hex and spaces", hdr("X-DTLS-Master-Secret", " "+strings.ToLower(ocSecret)+" ", "X-DTLS-CipherSuite", " A : :B "),
			secret, []string{"A", "B"}, nil, false},
		{"no headers", http.Header{}, nil, nil, nil, false},
		{"short secret", hdr("X-DTLS-Master-Secret", ocSecret[:94]), nil, nil, nil, false},
		{"odd-length secret", hdr("X-DTLS-Master-Secret", ocSecret[:95]), nil, nil, nil, false},
		{"long secret", hdr("X-DTLS-Master-Secret", ocSecret+"00"), nil, nil, nil, false},
		{"non-hex secret", hdr("X-DTLS-Master-Secret", "G"+ocSecret[1:]), nil, nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ParseOffer(tt.h)
			if !bytes.Equal(o.MasterSecret, tt.secret) || !equalStrings(o.CipherSuites, tt.cs) ||
				!equalStrings(o.DTLS12CipherSuites, tt.cs12) || o.PSKNegotiate() != tt.psk {
				t.Fatalf("got %+v (psk %v)", o, o.PSKNegotiate())
			}
		})
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestNegotiate(t *testing.T) {
	const (
		psk    = "psk"
		none   = ""
		legacy = "legacy"
	)
	ocDefault := hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS-CipherSuite", ocCipherSuites, "X-DTLS12-CipherSuite", ocDTLS12Suites)
	tests := []struct {
		name      string
		mode      Mode
		h         http.Header
		canExport bool
		want      string             // psk, legacy or none
		id        dtls.CipherSuiteID // legacy
		header    string             // cipher-suite header name
		value     string             // cipher-suite header value
	}{
		{"openconnect default on TLS 1.3", ModeAuto, ocDefault, true, psk, 0, HeaderCipherSuite, PSKNegotiate},
		{"openconnect default on TLS 1.2 without EMS", ModeAuto, ocDefault, false, legacy,
			dtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, HeaderDTLS12CipherSuite, "ECDHE-RSA-AES128-GCM-SHA256"},
		{"--dtls-ciphers OC-DTLS1_2-AES128-GCM", ModeAuto,
			hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS-CipherSuite", "OC-DTLS1_2-AES128-GCM"), true, legacy,
			suiteRSAWithAES128GCMSHA256, HeaderCipherSuite, "OC-DTLS1_2-AES128-GCM"},
		{"--dtls-ciphers OC-DTLS1_2-AES256-GCM", ModeAuto,
			hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS-CipherSuite", "OC-DTLS1_2-AES256-GCM"), false, legacy,
			suiteRSAWithAES256GCMSHA384, HeaderCipherSuite, "OC-DTLS1_2-AES256-GCM"},
		{"both OC names: AES-128 first", ModeAuto,
			hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS-CipherSuite", "OC-DTLS1_2-AES256-GCM:OC-DTLS1_2-AES128-GCM"), false, legacy,
			suiteRSAWithAES128GCMSHA256, HeaderCipherSuite, "OC-DTLS1_2-AES128-GCM"},
		{"Cisco-like, ECDHE-RSA offered", ModeAuto,
			hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS-CipherSuite", "AES256-SHA:AES128-SHA:DES-CBC3-SHA",
				"X-DTLS12-CipherSuite", "ECDHE-RSA-AES256-GCM-SHA384:AES256-GCM-SHA384:AES128-GCM-SHA256:AES256-SHA"), true, legacy,
			dtls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, HeaderDTLS12CipherSuite, "ECDHE-RSA-AES256-GCM-SHA384"},
		{"Cisco-like, RSA suites only", ModeAuto,
			hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS-CipherSuite", "AES256-SHA:AES128-SHA",
				"X-DTLS12-CipherSuite", "AES256-GCM-SHA384:AES128-GCM-SHA256"), true, legacy,
			suiteRSAWithAES128GCMSHA256, HeaderDTLS12CipherSuite, "AES128-GCM-SHA256"},
		{"Cisco-like, AES256-GCM-SHA384 only", ModeAuto,
			hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS12-CipherSuite", "AES256-GCM-SHA384:AES256-SHA"), false, legacy,
			suiteRSAWithAES256GCMSHA384, HeaderDTLS12CipherSuite, "AES256-GCM-SHA384"},
		{"X-DTLS12 beats OC names", ModeAuto,
			hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS-CipherSuite", "OC-DTLS1_2-AES128-GCM",
				"X-DTLS12-CipherSuite", "AES256-GCM-SHA384"), false, legacy,
			suiteRSAWithAES256GCMSHA384, HeaderDTLS12CipherSuite, "AES256-GCM-SHA384"},
		{"only DTLS 0.9 names", ModeAuto,
			hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS-CipherSuite", "DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA:DES-CBC3-SHA"), true, none, 0, "", ""},
		{"non-GCM DTLS 1.2 names only", ModeAuto,
			hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS12-CipherSuite", "ECDHE-RSA-AES256-SHA:AES256-SHA"), false, none, 0, "", ""},
		{"lower-case names are not ours", ModeAuto,
			hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS12-CipherSuite", "aes128-gcm-sha256"), false, none, 0, "", ""},
		{"missing master secret, TLS 1.2", ModeAuto,
			hdr("X-DTLS-CipherSuite", ocCipherSuites, "X-DTLS12-CipherSuite", ocDTLS12Suites), false, none, 0, "", ""},
		{"missing master secret, TLS 1.3: PSK needs none", ModeAuto,
			hdr("X-DTLS-CipherSuite", ocCipherSuites, "X-DTLS12-CipherSuite", ocDTLS12Suites), true, psk, 0, HeaderCipherSuite, PSKNegotiate},
		{"short master secret", ModeAuto,
			hdr("X-DTLS-Master-Secret", ocSecret[:94], "X-DTLS12-CipherSuite", ocDTLS12Suites), false, none, 0, "", ""},
		{"odd master secret", ModeAuto,
			hdr("X-DTLS-Master-Secret", ocSecret[:95], "X-DTLS12-CipherSuite", ocDTLS12Suites), false, none, 0, "", ""},
		{"non-hex master secret", ModeAuto,
			hdr("X-DTLS-Master-Secret", strings.Repeat("Z", 96), "X-DTLS12-CipherSuite", ocDTLS12Suites), false, none, 0, "", ""},
		{"forced psk on TLS 1.3", ModePSK, ocDefault, true, psk, 0, HeaderCipherSuite, PSKNegotiate},
		{"forced psk on TLS 1.2: no legacy fallback", ModePSK, ocDefault, false, none, 0, "", ""},
		{"forced psk, client without PSK-NEGOTIATE", ModePSK,
			hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS12-CipherSuite", ocDTLS12Suites), true, none, 0, "", ""},
		{"forced legacy on TLS 1.3", ModeLegacy, ocDefault, true, legacy,
			dtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, HeaderDTLS12CipherSuite, "ECDHE-RSA-AES128-GCM-SHA256"},
		{"forced legacy, --dtls-ciphers PSK-NEGOTIATE", ModeLegacy,
			hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS-CipherSuite", "PSK-NEGOTIATE"), true, none, 0, "", ""},
		{"off", ModeOff, ocDefault, true, none, 0, "", ""},
		{"off, TLS 1.2", ModeOff, ocDefault, false, none, 0, "", ""},
		{"unknown mode", Mode(42), ocDefault, true, none, 0, "", ""},
		{"--no-dtls", ModeAuto, http.Header{}, true, none, 0, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ParseOffer(tt.h)
			p, ok := Negotiate(tt.mode, o, tt.canExport)
			d := p.Response()
			switch tt.want {
			case none:
				if ok || p.PSK || p.Suite != (Suite{}) || d != nil {
					t.Fatalf("want no DTLS, got ok=%v %+v response %+v", ok, p, d)
				}
			case psk:
				if !ok || !p.PSK || len(p.AppID) != AppIDLen || p.Suite != (Suite{Header: tt.header, Name: tt.value}) {
					t.Fatalf("want PSK, got ok=%v %+v", ok, p)
				}
				if want := (cstp.DTLS{AppID: p.AppID, CipherSuite: tt.value}); d == nil || !reflect.DeepEqual(*d, want) {
					t.Fatalf("response %+v, want %+v", d, want)
				}
			case legacy:
				if !ok || p.PSK || p.Suite != (Suite{ID: tt.id, Header: tt.header, Name: tt.value}) ||
					!bytes.Equal(p.MasterSecret, o.MasterSecret) || p.SessionID == ([32]byte{}) {
					t.Fatalf("want legacy %v %s: %s, got ok=%v %+v", tt.id, tt.header, tt.value, ok, p)
				}
				want := cstp.DTLS{SessionID: p.SessionID[:], CipherSuite: tt.value}
				if tt.header == HeaderDTLS12CipherSuite {
					want = cstp.DTLS{SessionID: p.SessionID[:], CipherSuite12: tt.value}
				}
				if d == nil || !reflect.DeepEqual(*d, want) {
					t.Fatalf("response %+v, want %+v", d, want)
				}
				if len(d.SessionID) != cstp.SessionIDLen {
					t.Fatalf("session id %x is not %d bytes", d.SessionID, cstp.SessionIDLen)
				}
			}
		})
	}
}

func TestNegotiateRandomIDs(t *testing.T) {
	o := ParseOffer(hdr("X-DTLS-Master-Secret", ocSecret, "X-DTLS-CipherSuite", ocCipherSuites, "X-DTLS12-CipherSuite", ocDTLS12Suites))
	a, _ := Negotiate(ModeAuto, o, true)
	b, _ := Negotiate(ModeAuto, o, true)
	if bytes.Equal(a.AppID, b.AppID) {
		t.Fatal("App-IDs repeat")
	}
	c, _ := Negotiate(ModeLegacy, o, true)
	d, _ := Negotiate(ModeLegacy, o, true)
	if c.SessionID == d.SessionID {
		t.Fatal("session ids repeat")
	}
}

func TestMTU(t *testing.T) {
	gcm := Params{Suite: Suite{ID: dtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}}
	rsa := Params{Suite: Suite{ID: suiteRSAWithAES256GCMSHA384}}
	psk := Params{PSK: true}
	chacha := Params{PSK: true, Suite: Suite{ID: dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256}}
	tests := []struct {
		name              string
		base              int
		outerV6, tunnelV6 bool
		p                 Params
		want              int
	}{
		{"dtls.md example: 1500, IPv4, AES-GCM", 1500, false, false, gcm, 1434},
		{"default base", 0, false, false, gcm, 1434},
		{"negative base", -1, false, false, rsa, 1434},
		{"PSK assumes AES-GCM overhead", 1500, false, false, psk, 1434},
		{"ChaCha20-Poly1305", 1500, false, false, chacha, 1442},
		{"outer IPv6", 1500, true, false, gcm, 1414},
		{"IPv6 inside, room to spare", 1500, true, true, gcm, 1414},
		{"IPv6 inside, small link: floor 1280", 1300, false, true, gcm, 1280},
		{"small link, IPv4 inside: no floor", 1300, false, false, gcm, 1234},
		{"jumbo", 9000, false, false, gcm, 8934},
	}
	for _, tt := range tests {
		if got := MTU(tt.base, tt.outerV6, tt.tunnelV6, tt.p); got != tt.want {
			t.Errorf("%s: MTU = %d, want %d", tt.name, got, tt.want)
		}
	}
}
