package cstp

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"net/netip"
	"net/textproto"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// gatewayTunnel is what the gateway's connectResponse sends for the test
// gateway of tunnel/gateway_test.go (split tunnel, a proxy, a banner).
func gatewayTunnel() *Tunnel {
	return &Tunnel{
		ServerName:    "underpass",
		Address:       netip.MustParseAddr("100.64.0.2"),
		Netmask:       16,
		DNS:           []netip.Addr{netip.MustParseAddr("10.0.0.53")},
		DefaultDomain: []string{"corp.example", "example.net"},
		SplitInclude: []netip.Prefix{
			netip.MustParsePrefix("198.18.0.0/16"),
			netip.MustParsePrefix("10.0.0.53/32"),
			netip.MustParsePrefix("fd00:1::/48"),
		},
		SplitExclude:        []netip.Prefix{netip.MustParsePrefix("198.18.200.0/24")},
		SplitDNS:            []string{"corp.example", "example.net"},
		Keepalive:           20 * time.Second,
		DPD:                 2 * time.Second,
		SessionTimeout:      3599*time.Second + 700*time.Millisecond, // time.Until(expires): truncated
		DisconnectedTimeout: 300 * time.Second,
		MTU:                 16000,
		BaseMTU:             16000,
		Proxy: Proxy{
			PACURL:     "http://wpad.corp.example/proxy.pac",
			Exceptions: []string{"*.corp.example", "10.1.2.3"},
		},
		Banner: "Authorised use only.",
	}
}

const gatewayHead = "HTTP/1.1 200 CONNECTED\r\n" +
	"X-CSTP-Version: 1\r\n" +
	"X-CSTP-Server-Name: underpass\r\n" +
	"X-CSTP-Address: 100.64.0.2\r\n" +
	"X-CSTP-Netmask: 255.255.0.0\r\n" +
	"X-CSTP-DNS: 10.0.0.53\r\n" +
	"X-CSTP-Default-Domain: corp.example example.net\r\n" +
	"X-CSTP-Split-Include: 198.18.0.0/255.255.0.0\r\n" +
	"X-CSTP-Split-Include: 10.0.0.53/255.255.255.255\r\n" +
	"X-CSTP-Split-Include: fd00:1::/48\r\n" +
	"X-CSTP-Split-Exclude: 198.18.200.0/255.255.255.0\r\n" +
	"X-CSTP-Split-DNS: corp.example\r\n" +
	"X-CSTP-Split-DNS: example.net\r\n" +
	"X-CSTP-Keepalive: 20\r\n" +
	"X-CSTP-DPD: 2\r\n" +
	"X-CSTP-Idle-Timeout: none\r\n" +
	"X-CSTP-Session-Timeout: 3599\r\n" +
	"X-CSTP-Disconnected-Timeout: 300\r\n" +
	"X-CSTP-Rekey-Method: none\r\n" +
	"X-CSTP-MTU: 16000\r\n" +
	"X-CSTP-Base-MTU: 16000\r\n"

// gatewayTail follows the DTLS block, if any.
const gatewayTail = "X-CSTP-MSIE-Proxy-PAC-URL: http://wpad.corp.example/proxy.pac\r\n" +
	"X-CSTP-MSIE-Proxy-Exceptions: *.corp.example;10.1.2.3\r\n" +
	"X-CSTP-Banner: Authorised use only.\r\n"

var (
	appID     = bytes.Repeat([]byte{0xa5}, 32)
	sessionID = []byte("0123456789abcdef0123456789ABCDEF")
	appIDHex  = strings.Repeat("A5", 32)
	sessIDHex = "3031323334353637383961626364656630313233343536373839414243444546"
)

func TestAppendResponse(t *testing.T) {
	full := gatewayTunnel()
	full.SplitInclude, full.SplitDNS, full.TunnelAllDNS = nil, nil, true
	full.IdleTimeout = 1800 * time.Second
	full.Proxy = Proxy{Server: "proxy.corp.example:3128"}

	psk := gatewayTunnel()
	psk.DTLS = &DTLS{Port: 443, DPD: 30 * time.Second, Keepalive: 20 * time.Second, AppID: appID, CipherSuite: PSKNegotiate}

	legacy12 := gatewayTunnel()
	legacy12.DTLS = &DTLS{Port: 4443, DPD: 30 * time.Second, MTU: 1434, SessionID: sessionID, CipherSuite12: "ECDHE-RSA-AES128-GCM-SHA256"}

	legacyOC := gatewayTunnel()
	legacyOC.DTLS = &DTLS{Port: 443, Keepalive: 20 * time.Second, MTU: 1434, SessionID: sessionID, CipherSuite: "OC-DTLS1_2-AES128-GCM"}

	minimal := &Tunnel{Address: netip.MustParseAddr("192.0.2.1"), MTU: 1400}

	tests := []struct {
		name string
		t    *Tunnel
		want string
	}{
		{"gateway, no DTLS", gatewayTunnel(), gatewayHead + gatewayTail + "\r\n"},
		{"full tunnel, idle timeout, proxy server", full, "HTTP/1.1 200 CONNECTED\r\n" +
			"X-CSTP-Version: 1\r\n" +
			"X-CSTP-Server-Name: underpass\r\n" +
			"X-CSTP-Address: 100.64.0.2\r\n" +
			"X-CSTP-Netmask: 255.255.0.0\r\n" +
			"X-CSTP-DNS: 10.0.0.53\r\n" +
			"X-CSTP-Default-Domain: corp.example example.net\r\n" +
			"X-CSTP-Split-Exclude: 198.18.200.0/255.255.255.0\r\n" +
			"X-CSTP-Tunnel-All-DNS: true\r\n" +
			"X-CSTP-Keepalive: 20\r\n" +
			"X-CSTP-DPD: 2\r\n" +
			"X-CSTP-Idle-Timeout: 1800\r\n" +
			"X-CSTP-Session-Timeout: 3599\r\n" +
			"X-CSTP-Disconnected-Timeout: 300\r\n" +
			"X-CSTP-Rekey-Method: none\r\n" +
			"X-CSTP-MTU: 16000\r\n" +
			"X-CSTP-Base-MTU: 16000\r\n" +
			"X-CSTP-MSIE-Proxy-Server: proxy.corp.example:3128\r\n" +
			"X-CSTP-Banner: Authorised use only.\r\n" +
			"\r\n"},
		{"PSK-NEGOTIATE", psk, gatewayHead +
			"X-DTLS-Port: 443\r\n" +
			"X-DTLS-DPD: 30\r\n" +
			"X-DTLS-Keepalive: 20\r\n" +
			"X-DTLS-App-ID: " + appIDHex + "\r\n" +
			"X-DTLS-CipherSuite: PSK-NEGOTIATE\r\n" +
			gatewayTail + "\r\n"},
		{"legacy, DTLS 1.2 name", legacy12, gatewayHead +
			"X-DTLS-Port: 4443\r\n" +
			"X-DTLS-DPD: 30\r\n" +
			"X-DTLS-Keepalive: 0\r\n" +
			"X-DTLS-MTU: 1434\r\n" +
			"X-DTLS-Session-ID: " + sessIDHex + "\r\n" +
			"X-DTLS12-CipherSuite: ECDHE-RSA-AES128-GCM-SHA256\r\n" +
			gatewayTail + "\r\n"},
		{"legacy, openconnect name", legacyOC, gatewayHead +
			"X-DTLS-Port: 443\r\n" +
			"X-DTLS-DPD: 0\r\n" +
			"X-DTLS-Keepalive: 20\r\n" +
			"X-DTLS-MTU: 1434\r\n" +
			"X-DTLS-Session-ID: " + sessIDHex + "\r\n" +
			"X-DTLS-CipherSuite: OC-DTLS1_2-AES128-GCM\r\n" +
			gatewayTail + "\r\n"},
		{"minimal", minimal, "HTTP/1.1 200 CONNECTED\r\n" +
			"X-CSTP-Version: 1\r\n" +
			"X-CSTP-Address: 192.0.2.1\r\n" +
			"X-CSTP-Keepalive: 0\r\n" +
			"X-CSTP-DPD: 0\r\n" +
			"X-CSTP-Idle-Timeout: none\r\n" +
			"X-CSTP-Session-Timeout: 0\r\n" +
			"X-CSTP-Disconnected-Timeout: 0\r\n" +
			"X-CSTP-Rekey-Method: none\r\n" +
			"X-CSTP-MTU: 1400\r\n" +
			"\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.t.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			got := string(tt.t.AppendResponse([]byte("prefix")))
			if got != "prefix"+tt.want {
				t.Fatalf("got\n%s\nwant\n%s", got, "prefix"+tt.want)
			}
			// The order, spelled out: Version first, the DTLS block in
			// one piece right after X-CSTP-Base-MTU (or X-CSTP-MTU), its
			// cipher suite last.
			checkOrder(t, headerNames(got), tt.t.DTLS != nil)
			// What the client reads back is what was sent, routes masked.
			back := parseHead(t, got[len("prefix"):])
			want := *tt.t
			want.SessionTimeout = want.SessionTimeout.Truncate(time.Second)
			if !reflect.DeepEqual(back, &want) {
				t.Errorf("parsed back\n%+v\nwant\n%+v", back, &want)
			}
		})
	}
}

// checkOrder checks Version first and the shape of the DTLS block.
func checkOrder(t *testing.T, names []string, dtls bool) {
	t.Helper()
	if names[0] != HdrVersion {
		t.Errorf("first header %s, want %s", names[0], HdrVersion)
	}
	var block []string
	start := -1
	for i, n := range names {
		if strings.HasPrefix(n, "X-DTLS") {
			if start < 0 {
				start = i
			} else if i != start+len(block) {
				t.Errorf("DTLS block not contiguous: %v", names)
			}
			block = append(block, n)
		}
	}
	if !dtls {
		if start >= 0 {
			t.Errorf("X-DTLS headers without DTLS: %v", names)
		}
		return
	}
	if start < 1 || (names[start-1] != HdrBaseMTU && names[start-1] != HdrMTU) {
		t.Errorf("DTLS block does not follow the MTU headers: %v", names)
	}
	if block[0] != HdrDTLSPort {
		t.Errorf("DTLS block starts with %s", block[0])
	}
	if last := block[len(block)-1]; last != HdrDTLSCipherSuite && last != HdrDTLS12CipherSuite {
		t.Errorf("last DTLS header %s, want a cipher suite: %v", last, block)
	}
	if i, j := slices.Index(block, HdrDTLSCipherSuite), slices.Index(block, HdrDTLS12CipherSuite); i >= 0 && j > i {
		t.Errorf("X-DTLS12-CipherSuite after X-DTLS-CipherSuite: %v", block)
	}
}

// headerNames lists the header names of a response head, in order.
func headerNames(head string) []string {
	var names []string
	for _, line := range strings.Split(head, "\r\n")[1:] {
		if k, _, ok := strings.Cut(line, ": "); ok {
			names = append(names, k)
		}
	}
	return names
}

// parseHead reads a response head as the client does and parses it.
func parseHead(t *testing.T, head string) *Tunnel {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(head)), nil)
	if err != nil {
		t.Fatalf("ReadResponse: %v", err)
	}
	tun, err := ParseTunnel(resp.Header)
	if err != nil {
		t.Fatalf("ParseTunnel: %v", err)
	}
	return tun
}

func TestAppendHeadersNeverBreaksALine(t *testing.T) {
	tun := &Tunnel{Address: netip.MustParseAddr("192.0.2.1"), MTU: 1400, Banner: "a\r\nX-Evil: 1\x00\x7f\tb", Netmask: 99, DNS: []netip.Addr{{}}}
	got := string(tun.AppendHeaders(nil))
	if !strings.Contains(got, "X-CSTP-Banner: a  X-Evil: 1  \tb\r\n") {
		t.Errorf("banner not neutralised:\n%q", got)
	}
	if strings.Contains(got, "Netmask") || strings.Contains(got, "X-CSTP-DNS") {
		t.Errorf("invalid fields written:\n%q", got)
	}
	if n := strings.Count(got, "\r\n"); n != len(headerNames("status\r\n"+got)) {
		t.Errorf("%d lines, %d headers", n, len(headerNames(got)))
	}
}

func TestParseTunnelOcserv(t *testing.T) {
	// An ocserv 1.1.6 reply in legacy mode (worker-vpn.c's order and
	// spelling, lower-case hex, extra headers we ignore).
	head := "HTTP/1.1 200 CONNECTED\r\n" +
		"X-CSTP-Version: 1\r\n" +
		"X-CSTP-Server-Name: ocserv 1.1.6\r\n" +
		"X-CSTP-DPD: 90\r\n" +
		"X-CSTP-Default-Domain: example.com\r\n" +
		"X-CSTP-Address: 192.168.1.185\r\n" +
		"X-CSTP-Netmask: 255.255.255.0\r\n" +
		"X-CSTP-DNS: 192.168.1.2\r\n" +
		"X-CSTP-DNS-IP6: fd00::53\r\n" +
		"X-CSTP-Split-DNS: example.com\r\n" +
		"X-CSTP-Split-Include: 10.0.0.0/255.0.0.0\r\n" +
		"X-CSTP-Split-Include-IP6: fd00::/8\r\n" +
		"X-CSTP-Tunnel-All-DNS: false\r\n" +
		"X-CSTP-Split-Exclude: 10.9.0.0/16\r\n" +
		"X-CSTP-Keepalive: 32400\r\n" +
		"X-CSTP-Idle-Timeout: none\r\n" +
		"X-CSTP-Smartcard-Removal-Disconnect: true\r\n" +
		"X-CSTP-Rekey-Time: 172800\r\n" +
		"X-CSTP-Rekey-Method: ssl\r\n" +
		"X-CSTP-MSIE-Proxy-Pac-URL: http://wpad.example.com/wpad.dat\r\n" +
		"X-CSTP-Session-Timeout: none\r\n" +
		"X-CSTP-Disconnected-Timeout: none\r\n" +
		"X-CSTP-Keep: true\r\n" +
		"X-CSTP-TCP-Keepalive: true\r\n" +
		"X-CSTP-License: accept\r\n" +
		"X-DTLS-DPD: 90\r\n" +
		"X-DTLS-Port: 443\r\n" +
		"X-DTLS-Rekey-Time: 172810\r\n" +
		"X-DTLS-Rekey-Method: ssl\r\n" +
		"X-DTLS-Keepalive: 32400\r\n" +
		"X-DTLS-Session-ID: " + strings.ToLower(sessIDHex) + "\r\n" +
		"X-DTLS12-CipherSuite: ECDHE-RSA-AES128-GCM-SHA256\r\n" +
		"X-DTLS-MTU: 1403\r\n" +
		"X-CSTP-Base-MTU: 1500\r\n" +
		"X-CSTP-MTU: 1406\r\n" +
		"X-CSTP-Banner: Welcome\r\n" +
		"\r\n"
	got := parseHead(t, head)
	want := &Tunnel{
		ServerName:    "ocserv 1.1.6",
		Address:       netip.MustParseAddr("192.168.1.185"),
		Netmask:       24,
		DNS:           []netip.Addr{netip.MustParseAddr("192.168.1.2"), netip.MustParseAddr("fd00::53")},
		DefaultDomain: []string{"example.com"},
		SplitInclude:  []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")},
		SplitExclude:  []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")},
		SplitDNS:      []string{"example.com"},
		Keepalive:     32400 * time.Second,
		DPD:           90 * time.Second,
		MTU:           1406,
		BaseMTU:       1500,
		Proxy:         Proxy{PACURL: "http://wpad.example.com/wpad.dat"},
		Banner:        "Welcome",
		DTLS: &DTLS{
			Port: 443, DPD: 90 * time.Second, Keepalive: 32400 * time.Second, MTU: 1403,
			SessionID: sessionID, CipherSuite12: "ECDHE-RSA-AES128-GCM-SHA256",
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got\n%+v\n%+v\nwant\n%+v\n%+v", got, got.DTLS, want, want.DTLS)
	}

	// ocserv in PSK mode: lower-case App-ID, then PSK-NEGOTIATE.
	psk := strings.Replace(head, "X-DTLS-Session-ID: "+strings.ToLower(sessIDHex)+"\r\nX-DTLS12-CipherSuite: ECDHE-RSA-AES128-GCM-SHA256\r\nX-DTLS-MTU: 1403\r\n",
		"X-DTLS-App-ID: "+strings.ToLower(appIDHex)+"\r\nX-DTLS-CipherSuite: PSK-NEGOTIATE\r\n", 1)
	got = parseHead(t, psk)
	want.DTLS = &DTLS{Port: 443, DPD: 90 * time.Second, Keepalive: 32400 * time.Second, AppID: appID, CipherSuite: PSKNegotiate}
	if !reflect.DeepEqual(got.DTLS, want.DTLS) {
		t.Fatalf("PSK: got %+v, want %+v", got.DTLS, want.DTLS)
	}
}

func TestParseTunnelDefaults(t *testing.T) {
	// Only the required headers: everything else zero, no DTLS; X-DTLS-*
	// headers without an App-ID or Session-ID are ignored, as openconnect
	// stays on CSTP then.
	h := http.Header{}
	h.Set(HdrAddress, "192.0.2.1")
	h.Set(HdrMTU, "1280")
	h.Set(HdrDTLSPort, "443")
	h.Set(HdrDTLSCipherSuite, "PSK-NEGOTIATE")
	h.Set("X-Unknown", "whatever")
	got, err := ParseTunnel(h)
	if err != nil {
		t.Fatal(err)
	}
	want := &Tunnel{Address: netip.MustParseAddr("192.0.2.1"), MTU: 1280}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestParseTunnelErrors(t *testing.T) {
	base := map[string][]string{
		HdrAddress: {"192.0.2.1"},
		HdrMTU:     {"1400"},
	}
	psk := map[string][]string{HdrDTLSAppID: {appIDHex}, HdrDTLSPort: {"443"}, HdrDTLSCipherSuite: {PSKNegotiate}}
	legacy := map[string][]string{HdrDTLSSessionID: {sessIDHex}, HdrDTLSPort: {"443"}, HdrDTLS12CipherSuite: {"AES128-GCM-SHA256"}}
	tests := []struct {
		name    string
		with    []map[string][]string
		set     map[string][]string // nil value: delete
		header  string              // want HeaderError.Name
		value   string              // want HeaderError.Value
		snippet string              // in the reason
	}{
		{"no address", nil, map[string][]string{HdrAddress: nil}, HdrAddress, "", "missing"},
		{"IPv6 address", nil, map[string][]string{HdrAddress: {"fd00::1"}}, HdrAddress, "fd00::1", "IPv4"},
		{"garbage address", nil, map[string][]string{HdrAddress: {"host"}}, HdrAddress, "host", "IPv4"},
		{"two addresses", nil, map[string][]string{HdrAddress: {"192.0.2.1", "192.0.2.2"}}, HdrAddress, "192.0.2.2", "2 times"},
		{"no MTU", nil, map[string][]string{HdrMTU: nil}, HdrMTU, "", "missing"},
		{"MTU too small", nil, map[string][]string{HdrMTU: {"1279"}}, HdrMTU, "1279", "out of range [1280, 16376]"},
		{"MTU too big", nil, map[string][]string{HdrMTU: {"16377"}}, HdrMTU, "16377", "out of range"},
		{"MTU signed", nil, map[string][]string{HdrMTU: {"+1400"}}, HdrMTU, "+1400", "decimal"},
		{"MTU leading zero", nil, map[string][]string{HdrMTU: {"01400"}}, HdrMTU, "01400", "decimal"},
		{"MTU huge", nil, map[string][]string{HdrMTU: {"99999999999999999999999"}}, HdrMTU, "99999999999999999999999", "decimal"},
		{"base MTU too small", nil, map[string][]string{HdrBaseMTU: {"575"}}, HdrBaseMTU, "575", "out of range [576, 65535]"},
		{"netmask not dotted", nil, map[string][]string{HdrNetmask: {"24"}}, HdrNetmask, "24", "dotted"},
		{"netmask IPv6", nil, map[string][]string{HdrNetmask: {"ffff::"}}, HdrNetmask, "ffff::", "dotted"},
		{"netmask holes", nil, map[string][]string{HdrNetmask: {"255.0.255.0"}}, HdrNetmask, "255.0.255.0", "contiguous"},
		{"netmask zero", nil, map[string][]string{HdrNetmask: {"0.0.0.0"}}, HdrNetmask, "0.0.0.0", "/0"},
		{"address-ip6 v4", nil, map[string][]string{HdrAddressIP6: {"192.0.2.1/24"}}, HdrAddressIP6, "192.0.2.1/24", "IPv6"},
		{"address-ip6 bare", nil, map[string][]string{HdrAddressIP6: {"fd00::1"}}, HdrAddressIP6, "fd00::1", "IPv6"},
		{"DNS garbage", nil, map[string][]string{HdrDNS: {"10.0.0.53", "dns.example"}}, HdrDNS, "dns.example", "IP address"},
		{"DNS zone", nil, map[string][]string{HdrDNSIP6: {"fe80::1%eth0"}}, HdrDNSIP6, "fe80::1%eth0", "IP address"},
		{"route holes", nil, map[string][]string{HdrSplitInclude: {"10.0.0.0/255.0.255.0"}}, HdrSplitInclude, "10.0.0.0/255.0.255.0", "netmask 255.0.255.0 is not contiguous"},
		{"route garbage", nil, map[string][]string{HdrSplitExclude: {"corp.example"}}, HdrSplitExclude, "corp.example", "not an IP address"},
		{"route v6 dotted", nil, map[string][]string{HdrSplitIncludeIP6: {"fd00::/255.0.0.0"}}, HdrSplitIncludeIP6, "fd00::/255.0.0.0", "needs an IPv4"},
		{"route too long", nil, map[string][]string{HdrSplitExcludeIP6: {"fd00::/129"}}, HdrSplitExcludeIP6, "fd00::/129", "exceeds 128"},
		{"tunnel-all-dns", nil, map[string][]string{HdrTunnelAllDNS: {"yes"}}, HdrTunnelAllDNS, "yes", `"true" or "false"`},
		{"DPD negative", nil, map[string][]string{HdrDPD: {"-1"}}, HdrDPD, "-1", "whole number of seconds"},
		{"DPD fraction", nil, map[string][]string{HdrDPD: {"1.5"}}, HdrDPD, "1.5", "whole number of seconds"},
		{"keepalive none", nil, map[string][]string{HdrKeepalive: {"none"}}, HdrKeepalive, "none", "whole number of seconds"},
		{"idle timeout huge", nil, map[string][]string{HdrIdleTimeout: {"2147483648"}}, HdrIdleTimeout, "2147483648", "more than 2147483647"},
		{"session timeout word", nil, map[string][]string{HdrSessionTimeout: {"never"}}, HdrSessionTimeout, "never", "seconds"},
		{"two banners", nil, map[string][]string{HdrBanner: {"a", "b"}}, HdrBanner, "b", "2 times"},

		{"app-id not hex", []map[string][]string{psk}, map[string][]string{HdrDTLSAppID: {"xyz"}}, HdrDTLSAppID, "xyz", "hex"},
		{"app-id empty", []map[string][]string{psk}, map[string][]string{HdrDTLSAppID: {""}}, HdrDTLSAppID, "", "hex"},
		{"app-id too long", []map[string][]string{psk}, map[string][]string{HdrDTLSAppID: {appIDHex + "00"}}, HdrDTLSAppID, appIDHex + "00", "33 bytes, at most 32"},
		{"PSK without suite", []map[string][]string{psk}, map[string][]string{HdrDTLSCipherSuite: nil}, HdrDTLSCipherSuite, "", "want PSK-NEGOTIATE"},
		{"PSK with legacy suite", []map[string][]string{psk}, map[string][]string{HdrDTLSCipherSuite: {"OC-DTLS1_2-AES128-GCM"}}, HdrDTLSCipherSuite, "OC-DTLS1_2-AES128-GCM", "want PSK-NEGOTIATE"},
		{"PSK plus DTLS12", []map[string][]string{psk}, map[string][]string{HdrDTLS12CipherSuite: {"AES128-GCM-SHA256"}}, HdrDTLS12CipherSuite, "AES128-GCM-SHA256", "order, which is lost"},
		{"PSK no port", []map[string][]string{psk}, map[string][]string{HdrDTLSPort: nil}, HdrDTLSPort, "", "missing"},
		{"port zero", []map[string][]string{psk}, map[string][]string{HdrDTLSPort: {"0"}}, HdrDTLSPort, "0", "out of range [1, 65535]"},
		{"port big", []map[string][]string{psk}, map[string][]string{HdrDTLSPort: {"65536"}}, HdrDTLSPort, "65536", "out of range"},
		{"DTLS MTU zero", []map[string][]string{psk}, map[string][]string{HdrDTLSMTU: {"0"}}, HdrDTLSMTU, "0", "out of range [1, 16376]"},
		{"DTLS DPD bad", []map[string][]string{psk}, map[string][]string{HdrDTLSDPD: {"x"}}, HdrDTLSDPD, "x", "seconds"},
		{"DTLS keepalive bad", []map[string][]string{psk}, map[string][]string{HdrDTLSKeepalive: {"1e3"}}, HdrDTLSKeepalive, "1e3", "seconds"},
		{"both ids", []map[string][]string{psk}, map[string][]string{HdrDTLSSessionID: {sessIDHex}}, HdrDTLSSessionID, sessIDHex, "pick PSK or legacy"},
		{"session-id short", []map[string][]string{legacy}, map[string][]string{HdrDTLSSessionID: {sessIDHex[:62]}}, HdrDTLSSessionID, sessIDHex[:62], "exactly 64 hex digits"},
		{"session-id odd", []map[string][]string{legacy}, map[string][]string{HdrDTLSSessionID: {sessIDHex[:63]}}, HdrDTLSSessionID, sessIDHex[:63], "hex"},
		{"legacy no suite", []map[string][]string{legacy}, map[string][]string{HdrDTLS12CipherSuite: nil}, HdrDTLSCipherSuite, "", "exactly one of"},
		{"legacy both suites", []map[string][]string{legacy}, map[string][]string{HdrDTLSCipherSuite: {"OC-DTLS1_2-AES128-GCM"}}, HdrDTLS12CipherSuite, "AES128-GCM-SHA256", "order, which is lost"},
		{"legacy PSK suite", []map[string][]string{legacy}, map[string][]string{HdrDTLS12CipherSuite: nil, HdrDTLSCipherSuite: {PSKNegotiate}}, HdrDTLSCipherSuite, PSKNegotiate, "needs X-DTLS-App-ID"},
		{"legacy suite list", []map[string][]string{legacy}, map[string][]string{HdrDTLS12CipherSuite: {"A:B"}}, HdrDTLS12CipherSuite, "A:B", "one cipher suite"},
		{"two ports", []map[string][]string{legacy}, map[string][]string{HdrDTLSPort: {"1", "2"}}, HdrDTLSPort, "2", "2 times"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for _, m := range append([]map[string][]string{base}, append(tt.with, tt.set)...) {
				for k, v := range m {
					h.Del(k)
					for _, s := range v {
						h.Add(k, s)
					}
				}
			}
			tun, err := ParseTunnel(h)
			var he *HeaderError
			if !errors.As(err, &he) {
				t.Fatalf("got %+v, %v; want a *HeaderError", tun, err)
			}
			if tun != nil {
				t.Errorf("a Tunnel came with the error")
			}
			if he.Name != tt.header || he.Value != tt.value || !strings.Contains(he.Reason, tt.snippet) {
				t.Errorf("got %q %q %q; want %q %q ...%q...", he.Name, he.Value, he.Reason, tt.header, tt.value, tt.snippet)
			}
			if !strings.Contains(err.Error(), tt.header) || !strings.Contains(err.Error(), tt.value) {
				t.Errorf("%q does not name header and value", err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mod    func(*Tunnel)
		header string
	}{
		{"no address", func(t *Tunnel) { t.Address = netip.Addr{} }, HdrAddress},
		{"v6 address", func(t *Tunnel) { t.Address = netip.MustParseAddr("::1") }, HdrAddress},
		{"netmask", func(t *Tunnel) { t.Netmask = 33 }, HdrNetmask},
		{"address6 v4", func(t *Tunnel) { t.Address6 = netip.MustParsePrefix("10.0.0.1/8") }, HdrAddressIP6},
		{"MTU", func(t *Tunnel) { t.MTU = 0 }, HdrMTU},
		{"base MTU", func(t *Tunnel) { t.BaseMTU = 70000 }, HdrBaseMTU},
		{"DNS", func(t *Tunnel) { t.DNS = append(t.DNS, netip.Addr{}) }, HdrDNS},
		{"route", func(t *Tunnel) { t.SplitExclude = append(t.SplitExclude, netip.Prefix{}) }, HdrSplitExclude},
		{"negative DPD", func(t *Tunnel) { t.DPD = -time.Second }, HdrDPD},
		{"huge session", func(t *Tunnel) { t.SessionTimeout = (MaxSeconds + 1) * time.Second }, HdrSessionTimeout},
		{"DTLS no id", func(t *Tunnel) { t.DTLS = &DTLS{Port: 443, CipherSuite: PSKNegotiate} }, HdrDTLSSessionID},
		{"DTLS no port", func(t *Tunnel) { t.DTLS = &DTLS{AppID: appID, CipherSuite: PSKNegotiate} }, HdrDTLSPort},
		{"DTLS12 with PSK", func(t *Tunnel) {
			t.DTLS = &DTLS{Port: 443, AppID: appID, CipherSuite: PSKNegotiate, CipherSuite12: "AES128-GCM-SHA256"}
		}, HdrDTLS12CipherSuite},
		{"DTLS MTU", func(t *Tunnel) {
			t.DTLS = &DTLS{Port: 443, AppID: appID, CipherSuite: PSKNegotiate, MTU: MaxMTU + 1}
		}, HdrDTLSMTU},
		{"DTLS keepalive", func(t *Tunnel) {
			t.DTLS = &DTLS{Port: 443, AppID: appID, CipherSuite: PSKNegotiate, Keepalive: -1}
		}, HdrDTLSKeepalive},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tun := gatewayTunnel()
			tt.mod(tun)
			var he *HeaderError
			if err := tun.Validate(); !errors.As(err, &he) || he.Name != tt.header {
				t.Fatalf("Validate: %v, want an error about %s", err, tt.header)
			}
		})
	}
	// Even an invalid DTLS never puts X-DTLS12-CipherSuite after
	// PSK-NEGOTIATE.
	tun := gatewayTunnel()
	tun.DTLS = &DTLS{Port: 443, AppID: appID, CipherSuite: PSKNegotiate, CipherSuite12: "AES128-GCM-SHA256"}
	names := headerNames("status\r\n" + string(tun.AppendHeaders(nil)))
	if i := slices.Index(names, HdrDTLSCipherSuite); i < 0 || slices.Index(names, HdrDTLS12CipherSuite) > i {
		t.Errorf("order %v", names)
	}
}

// seedHeads are real-world-shaped header blocks for FuzzTunnelRoundTrip.
func seedHeads(t testing.TB) []string {
	var seeds []string
	for _, tun := range []*Tunnel{gatewayTunnel(), {Address: netip.MustParseAddr("192.0.2.1"), MTU: 1400}} {
		seeds = append(seeds, string(tun.AppendHeaders(nil)))
	}
	psk := gatewayTunnel()
	psk.DTLS = &DTLS{Port: 443, DPD: 30 * time.Second, Keepalive: 20 * time.Second, AppID: appID, CipherSuite: PSKNegotiate}
	seeds = append(seeds, string(psk.AppendHeaders(nil)))
	legacy := gatewayTunnel()
	legacy.Address6 = netip.MustParsePrefix("fd00::5/64")
	legacy.DTLS = &DTLS{Port: 443, MTU: 1434, SessionID: sessionID, CipherSuite: "OC-DTLS1_2-AES128-GCM"}
	seeds = append(seeds, string(legacy.AppendHeaders(nil)))
	dual := &Tunnel{ // interleaved families in a dual-stack reply
		Address: netip.MustParseAddr("100.64.0.2"), MTU: 1400, Address6: netip.MustParsePrefix("fd7a::2/64"),
		DNS:          []netip.Addr{netip.MustParseAddr("fd00::53"), netip.MustParseAddr("10.0.0.53"), netip.MustParseAddr("fd00::54")},
		SplitInclude: []netip.Prefix{netip.MustParsePrefix("fd00:1::/48"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00:2::/48")},
		SplitExclude: []netip.Prefix{netip.MustParsePrefix("fd00:1:9::/64")},
	}
	seeds = append(seeds, string(dual.AppendHeaders(nil)))
	seeds = append(seeds,
		"X-CSTP-Version: 1\r\nX-CSTP-Server-Name: ocserv 1.1.6\r\nX-CSTP-DPD: 90\r\nX-CSTP-Default-Domain: example.com\r\n"+
			"X-CSTP-Address: 192.168.1.185\r\nX-CSTP-Netmask: 255.255.255.0\r\nX-CSTP-DNS: 192.168.1.2\r\n"+
			"X-CSTP-Split-Include: 10.0.0.0/255.0.0.0\r\nX-CSTP-Tunnel-All-DNS: false\r\nX-CSTP-Keepalive: 32400\r\n"+
			"X-CSTP-Idle-Timeout: none\r\nX-CSTP-Rekey-Method: ssl\r\nX-CSTP-Session-Timeout: none\r\n"+
			"X-CSTP-Disconnected-Timeout: none\r\nX-CSTP-Keep: true\r\nX-DTLS-DPD: 90\r\nX-DTLS-Port: 443\r\n"+
			"X-DTLS-Keepalive: 32400\r\nX-DTLS-App-ID: "+strings.ToLower(appIDHex)+"\r\nX-DTLS-CipherSuite: PSK-NEGOTIATE\r\n"+
			"X-CSTP-Base-MTU: 1500\r\nX-CSTP-MTU: 1406\r\n",
		"X-CSTP-Address: 10.1.2.3\r\nX-CSTP-MTU: 1300\r\nX-CSTP-Split-Exclude-IP6: fd00::/8\r\nX-CSTP-DNS-IP6: fd00::53\r\n"+
			"X-DTLS-Session-ID: "+sessIDHex+"\r\nX-DTLS-Port: 1\r\nX-DTLS12-CipherSuite: AES256-GCM-SHA384\r\nX-DTLS-MTU: 1\r\n",
		"X-CSTP-Address: 10.1.2.3\r\nX-CSTP-MTU: 1300\r\nX-CSTP-MSIE-Proxy-Exceptions: ;a; b ;;\r\nX-CSTP-Banner:\r\n"+
			"X-CSTP-Default-Domain:    \r\nX-CSTP-Split-DNS:\r\nX-CSTP-Split-Include: ::ffff:10.0.0.0/104\r\n",
	)
	return seeds
}

// readHeader parses a header block the way http.ReadResponse does.
func readHeader(b []byte) (http.Header, error) {
	r := textproto.NewReader(bufio.NewReader(bytes.NewReader(b)))
	mh, err := r.ReadMIMEHeader()
	return http.Header(mh), err
}

func FuzzTunnelRoundTrip(f *testing.F) {
	for _, s := range seedHeads(f) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := readHeader(append(data, "\r\n\r\n"...))
		if err != nil {
			return
		}
		// Supply the two required headers when missing (unless the input
		// names them, even empty), so that mutated inputs reach the
		// encoder more often.
		if _, ok := h[textproto.CanonicalMIMEHeaderKey(HdrAddress)]; !ok {
			h.Set(HdrAddress, "192.0.2.1")
		}
		if _, ok := h[textproto.CanonicalMIMEHeaderKey(HdrMTU)]; !ok {
			h.Set(HdrMTU, "1400")
		}
		t1, err := ParseTunnel(h)
		if err != nil {
			if t1 != nil {
				t.Fatal("a Tunnel came with the error")
			}
			var he *HeaderError
			if !errors.As(err, &he) {
				t.Fatalf("error %v is not a *HeaderError", err)
			}
			return
		}
		if err := t1.Validate(); err != nil {
			t.Fatalf("ParseTunnel result fails Validate: %v", err)
		}
		enc := t1.AppendHeaders(nil)
		if !bytes.HasPrefix(enc, []byte(HdrVersion+": 1\r\n")) {
			t.Fatalf("encoding does not start with the version:\n%s", enc)
		}
		checkOrder(t, headerNames("status\r\n"+string(enc)), t1.DTLS != nil)
		if d := t1.DTLS; d != nil && len(d.AppID) > 0 && bytes.Contains(enc, []byte(HdrDTLS12CipherSuite)) {
			t.Fatalf("PSK mode with X-DTLS12-CipherSuite:\n%s", enc)
		}
		h2, err := readHeader(append(enc, "\r\n"...))
		if err != nil {
			t.Fatalf("encoding does not read back: %v\n%q", err, enc)
		}
		t2, err := ParseTunnel(h2)
		if err != nil {
			t.Fatalf("encoding does not parse: %v\n%q", err, enc)
		}
		if !reflect.DeepEqual(t1, t2) {
			t.Fatalf("round trip changed the tunnel\nfirst  %+v %+v\nsecond %+v %+v\nwire %q", t1, t1.DTLS, t2, t2.DTLS, enc)
		}
		if enc2 := t2.AppendHeaders(nil); !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding not stable:\n%q\n%q", enc, enc2)
		}
	})
}

// TestAppendResponseDualStack: a reply with X-CSTP-Address-IP6 sends the
// IPv6 resolvers and routes after the last IPv4 one in the -IP6 headers
// (ocserv's spelling); an IPv6 entry before an IPv4 one stays plain, so
// every list parses back in order. Without Address6 nothing changes.
func TestAppendResponseDualStack(t *testing.T) {
	dual := gatewayTunnel()
	dual.Address6 = netip.MustParsePrefix("fd7a:5c3e:11::2/64")
	dual.DNS = []netip.Addr{netip.MustParseAddr("10.0.0.53"), netip.MustParseAddr("fd00:1::53")}
	dual.SplitExclude = append(dual.SplitExclude, netip.MustParsePrefix("fd00:1:99::/64"))
	want := "HTTP/1.1 200 CONNECTED\r\n" +
		"X-CSTP-Version: 1\r\n" +
		"X-CSTP-Server-Name: underpass\r\n" +
		"X-CSTP-Address: 100.64.0.2\r\n" +
		"X-CSTP-Netmask: 255.255.0.0\r\n" +
		"X-CSTP-Address-IP6: fd7a:5c3e:11::2/64\r\n" +
		"X-CSTP-DNS: 10.0.0.53\r\n" +
		"X-CSTP-DNS-IP6: fd00:1::53\r\n" +
		"X-CSTP-Default-Domain: corp.example example.net\r\n" +
		"X-CSTP-Split-Include: 198.18.0.0/255.255.0.0\r\n" +
		"X-CSTP-Split-Include: 10.0.0.53/255.255.255.255\r\n" +
		"X-CSTP-Split-Include-IP6: fd00:1::/48\r\n" +
		"X-CSTP-Split-Exclude: 198.18.200.0/255.255.255.0\r\n" +
		"X-CSTP-Split-Exclude-IP6: fd00:1:99::/64\r\n"
	got := string(dual.AppendResponse(nil))
	if !strings.HasPrefix(got, want) {
		t.Fatalf("dual-stack reply\n%s\nwant it to start with\n%s", got, want)
	}
	back := parseHead(t, got)
	w := *dual
	w.SessionTimeout = w.SessionTimeout.Truncate(time.Second)
	if !reflect.DeepEqual(back, &w) {
		t.Errorf("parsed back\n%+v\nwant\n%+v", back, &w)
	}

	// Interleaved families: only the IPv6 tail uses -IP6.
	mixed := &Tunnel{
		Address: netip.MustParseAddr("100.64.0.2"), MTU: 1400, Address6: netip.MustParsePrefix("fd7a::2/64"),
		DNS: []netip.Addr{netip.MustParseAddr("fd00::53"), netip.MustParseAddr("10.0.0.53"), netip.MustParseAddr("fd00::54")},
		SplitInclude: []netip.Prefix{netip.MustParsePrefix("fd00:1::/48"), netip.MustParsePrefix("10.0.0.0/8"),
			netip.MustParsePrefix("fd00:2::/48"), netip.MustParsePrefix("fd00:3::/48")},
	}
	head := string(mixed.AppendResponse(nil))
	for _, line := range []string{
		"X-CSTP-DNS: fd00::53\r\n", "X-CSTP-DNS: 10.0.0.53\r\n", "X-CSTP-DNS-IP6: fd00::54\r\n",
		"X-CSTP-Split-Include: fd00:1::/48\r\n", "X-CSTP-Split-Include: 10.0.0.0/255.0.0.0\r\n",
		"X-CSTP-Split-Include-IP6: fd00:2::/48\r\n", "X-CSTP-Split-Include-IP6: fd00:3::/48\r\n",
	} {
		if !strings.Contains(head, line) {
			t.Errorf("mixed reply lacks %q:\n%s", line, head)
		}
	}
	back = parseHead(t, head)
	if !slices.Equal(back.DNS, mixed.DNS) || !slices.Equal(back.SplitInclude, mixed.SplitInclude) {
		t.Errorf("mixed lists parsed back as %v %v, want %v %v", back.DNS, back.SplitInclude, mixed.DNS, mixed.SplitInclude)
	}

	// IPv4 only (no Address6): IPv6 entries in the plain headers, as
	// before dual stack.
	v4 := *mixed
	v4.Address6 = netip.Prefix{}
	head = string(v4.AppendResponse(nil))
	if strings.Contains(head, "-IP6") {
		t.Errorf("-IP6 header without Address6:\n%s", head)
	}
}
