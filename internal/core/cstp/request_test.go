package cstp

import (
	"bytes"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	secret := bytes.Repeat([]byte{0x5a}, MasterSecretLen)
	// openconnect 9.01's CONNECT (cstp.c), reconnecting.
	h := http.Header{}
	h.Set("X-CSTP-Version", "1")
	h.Set("X-CSTP-Hostname", "laptop")
	h.Set("X-CSTP-Accept-Encoding", "oc-lz4,lzs")
	h.Set("X-CSTP-Base-MTU", "1500")
	h.Set("X-CSTP-MTU", "1406")
	h.Set("X-CSTP-Address-Type", "IPv6,IPv4")
	h.Set("X-CSTP-Full-IPv6-Capability", "true")
	h.Set("X-CSTP-Address", "100.64.0.2")
	h.Set("X-DTLS-Master-Secret", strings.Repeat("5A", MasterSecretLen))
	h.Set("X-DTLS-CipherSuite", "PSK-NEGOTIATE:OC-DTLS1_2-AES256-GCM:OC2-DTLS1_2-CHACHA20-POLY1305:OC-DTLS1_2-AES128-GCM:DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA")
	h.Set("X-DTLS12-CipherSuite", "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-GCM-SHA256")
	h.Set("X-DTLS-Accept-Encoding", "oc-lz4,lzs")
	want := Request{
		Hostname: "laptop", MTU: 1406, BaseMTU: 1500, IPv4: true, IPv6: true, FullIPv6: true,
		Address:        netip.MustParseAddr("100.64.0.2"),
		MasterSecret:   secret,
		CipherSuites:   []string{"PSK-NEGOTIATE", "OC-DTLS1_2-AES256-GCM", "OC2-DTLS1_2-CHACHA20-POLY1305", "OC-DTLS1_2-AES128-GCM", "DHE-RSA-AES256-SHA", "DHE-RSA-AES128-SHA", "AES256-SHA", "AES128-SHA"},
		CipherSuites12: []string{"ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-GCM-SHA256"},
	}
	got := ParseRequest(h)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	// SetHeaders writes what ParseRequest reads.
	h2 := http.Header{}
	got.SetHeaders(h2)
	if back := ParseRequest(h2); !reflect.DeepEqual(back, want) {
		t.Fatalf("round trip %+v", back)
	}

	if !got.WantsIPv6() {
		t.Error("openconnect's request does not want IPv6")
	}
	for _, tc := range []struct {
		typ, full string
		want      bool
	}{
		{"IPv4", "", false},
		{"", "", false},
		{"IPv4", "false", false},
		{"IPv6", "", true},
		{"IPv4", "TRUE", true},
		{" IPv4 , IPv6 ", "", true},
	} {
		h := http.Header{}
		if tc.typ != "" {
			h.Set(HdrAddressType, tc.typ)
		}
		if tc.full != "" {
			h.Set(HdrFullIPv6, tc.full)
		}
		r := ParseRequest(h)
		if r.WantsIPv6() != tc.want {
			t.Errorf("Address-Type %q, Full-IPv6-Capability %q: WantsIPv6 = %v", tc.typ, tc.full, !tc.want)
		}
	}

	// Lenient: bad values are dropped, nothing fails.
	bad := http.Header{}
	bad.Set("X-CSTP-MTU", "+1400")
	bad.Set("X-CSTP-Base-MTU", "100000")
	bad.Set("X-CSTP-Address-Type", "IPX")
	bad.Set("X-CSTP-Address", "fe80::1%eth0")
	bad.Set("X-DTLS-Master-Secret", strings.Repeat("5A", MasterSecretLen-1))
	bad.Set("X-DTLS-CipherSuite", " : :")
	if got := ParseRequest(bad); !reflect.DeepEqual(got, Request{}) {
		t.Errorf("bad values kept: %+v", got)
	}
	bad.Set("X-DTLS-Master-Secret", strings.Repeat("ZZ", MasterSecretLen))
	bad.Set("X-CSTP-MTU", "575")
	if got := ParseRequest(bad); !reflect.DeepEqual(got, Request{}) {
		t.Errorf("bad values kept: %+v", got)
	}

	// The Go client's request today: Version, MTU, Address-Type: IPv4.
	h3 := http.Header{}
	(&Request{MTU: 16000, IPv4: true}).SetHeaders(h3)
	if want := (http.Header{"X-Cstp-Version": {"1"}, "X-Cstp-Mtu": {"16000"}, "X-Cstp-Address-Type": {"IPv4"}}); !reflect.DeepEqual(h3, want) {
		t.Errorf("client headers %v, want %v", h3, want)
	}
}
