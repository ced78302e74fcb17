package acdtls

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
)

// buildClientHello crafts one DTLS record holding an unfragmented
// ClientHello (RFC 6347 §4.2.2, §4.2.1).
func buildClientHello(recVersion uint16, sid, cookie []byte, suites []uint16) []byte {
	var body []byte
	body = append(body, 0xfe, 0xfd)                        // client_version DTLS 1.2
	body = append(body, bytes.Repeat([]byte{0x11}, 32)...) // random
	body = append(body, byte(len(sid)))
	body = append(body, sid...)
	body = append(body, byte(len(cookie)))
	body = append(body, cookie...)
	body = binary.BigEndian.AppendUint16(body, uint16(2*len(suites)))
	for _, s := range suites {
		body = binary.BigEndian.AppendUint16(body, s)
	}
	body = append(body, 1, 0) // compression_methods: null
	body = append(body, 0, 0) // extensions: none

	hs := []byte{handshakeClientHello, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body)),
		0, 0, // message_seq
		0, 0, 0, // fragment_offset
		byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}
	hs = append(hs, body...)

	rec := []byte{contentTypeHandshake, byte(recVersion >> 8), byte(recVersion),
		0, 0, // epoch
		0, 0, 0, 0, 0, 0, // sequence number
		byte(len(hs) >> 8), byte(len(hs))}
	return append(rec, hs...)
}

func seq(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(0xa0 + i)
	}
	return b
}

func TestClientHelloSessionID(t *testing.T) {
	sid32 := seq(32)
	good := buildClientHello(0xfeff, sid32, nil, []uint16{0x00a8})
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }

	tests := []struct {
		name string
		in   []byte
		want []byte // nil: not ok
	}{
		{"openconnect record version 0xfeff", good, sid32},
		{"record version 0xfefd", buildClientHello(0xfefd, sid32, nil, nil), sid32},
		{"one-byte id", buildClientHello(0xfeff, []byte{7}, nil, nil), []byte{7}},
		{"with cookie and trailing record", append(buildClientHello(0xfefd, seq(16), seq(32), []uint16{1, 2}), good...), seq(16)},
		{"empty", nil, nil},
		{"record header only", good[:13], nil},
		{"cut before id length", good[:59], nil},
		{"cut at id length", good[:60], nil},
		{"cut inside id", good[:70], nil},
		{"cut inside rest of hello", good[:100], nil},
		{"zero-length id", buildClientHello(0xfeff, nil, nil, []uint16{1}), nil},
		{"id length 33", mod(func(b []byte) []byte { b[59] = 33; return b }), nil},
		{"id length 255", mod(func(b []byte) []byte { b[59] = 255; return b }), nil},
		{"application data record", mod(func(b []byte) []byte { b[0] = 23; return b }), nil},
		{"alert record", mod(func(b []byte) []byte { b[0] = 21; return b }), nil},
		{"TLS record version", mod(func(b []byte) []byte { b[1], b[2] = 3, 3; return b }), nil},
		{"DTLS 1.3 record version", mod(func(b []byte) []byte { b[2] = 0xfc; return b }), nil},
		{"epoch 1", mod(func(b []byte) []byte { b[4] = 1; return b }), nil},
		{"ServerHello", mod(func(b []byte) []byte { b[13] = 2; return b }), nil},
		{"HelloVerifyRequest", mod(func(b []byte) []byte { b[13] = 3; return b }), nil},
		{"record length past datagram", mod(func(b []byte) []byte { b[11]++; return b }), nil},
		{"record length 0xffff", mod(func(b []byte) []byte { b[11], b[12] = 0xff, 0xff; return b }), nil},
		{"record shorter than handshake header", mod(func(b []byte) []byte { b[11], b[12] = 0, 11; return b }), nil},
		{"record cut before id", mod(func(b []byte) []byte { b[11], b[12] = 0, 50; return b }), nil},
		{"fragment offset not 0", mod(func(b []byte) []byte { b[21] = 1; return b }), nil},
		{"fragment longer than message", mod(func(b []byte) []byte { b[16]--; return b }), nil},
		{"fragment longer than record", mod(func(b []byte) []byte { b[24]++; b[16]++; return b }), nil},
		{"fragment too short for id", mod(func(b []byte) []byte { b[22], b[23], b[24] = 0, 0, 40; return b }), nil},
		{"first fragment of a longer message", mod(func(b []byte) []byte { b[14] = 1; return b }), sid32},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, ok := ClientHelloSessionID(tt.in)
			if ok != (tt.want != nil) || !bytes.Equal(id, tt.want) {
				t.Fatalf("got %x, %v; want %x, %v", id, ok, tt.want, tt.want != nil)
			}
			if ok && cap(id) != len(id) {
				t.Errorf("id has spare capacity %d: appending to it would clobber the datagram", cap(id)-len(id))
			}
		})
	}
}

func TestClientHelloSessionIDNoAlloc(t *testing.T) {
	d := buildClientHello(0xfeff, seq(32), nil, nil)
	if n := testing.AllocsPerRun(100, func() { ClientHelloSessionID(d) }); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

func TestClientHelloOffers(t *testing.T) {
	d := buildClientHello(0xfeff, seq(32), seq(20), []uint16{0xccab, 0x00a8, 0xc0a4})
	tests := []struct {
		name string
		in   []byte
		id   uint16
		want bool
	}{
		{"listed first", d, 0xccab, true},
		{"listed second", d, 0x00a8, true},
		{"listed last", d, 0xc0a4, true},
		{"not listed", d, 0x00ae, false},
		{"cut inside suites", d[:len(d)-6], 0xc0a4, false},
		{"cut before suites", d[:60+32+1+20], 0x00a8, false},
		{"odd suite list length", func() []byte {
			b := bytes.Clone(d)
			b[60+32+1+20+1]++ // suites length low byte
			return b
		}(), 0x00a8, false},
		{"nil", nil, 0x00a8, false},
		{"empty session id (gnutls-cli)", buildClientHello(0xfefd, nil, nil, []uint16{0x00a8}), 0x00a8, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := clientHelloOffers(tt.in, tt.id); got != tt.want {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// capturePionClientHello runs a pion client against a bare UDP socket and
// returns the first datagram it sends.
func capturePionClientHello(t *testing.T, opts ...dtls.ClientOption) []byte {
	t.Helper()
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := dtls.ClientWithOptions(pc, sink.LocalAddr(), opts...)
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.HandshakeContext(ctx) }()
	defer func() {
		cancel()
		<-done
		c.Close()
	}()
	buf := make([]byte, 2048)
	if err := sink.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, _, err := sink.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// withSessionID makes a pion client put id in its ClientHello session_id,
// as openconnect does with the App-ID in PSK mode.
func withSessionID(id []byte) dtls.ClientOption {
	return dtls.WithClientHelloMessageHook(func(m handshake.MessageClientHello) handshake.Message {
		m.SessionID = bytes.Clone(id)
		return &m
	})
}

func TestClientHelloSessionIDFromPion(t *testing.T) {
	appID := seq(AppIDLen)
	d := capturePionClientHello(t,
		dtls.WithPSK(func([]byte) ([]byte, error) { return seq(32), nil }),
		dtls.WithPSKIdentityHint([]byte(PSKIdentity)),
		dtls.WithCipherSuites(dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256, dtls.TLS_PSK_WITH_AES_128_GCM_SHA256),
		dtls.WithLoggerFactory(PionLogger(nil)),
		withSessionID(appID),
	)
	id, ok := ClientHelloSessionID(d)
	if !ok || !bytes.Equal(id, appID) {
		t.Fatalf("ClientHelloSessionID(pion hello) = %x, %v; want %x", id, ok, appID)
	}
	if d[1] != 0xfe || d[2] != 0xfd {
		t.Logf("pion record version %x", d[1:3])
	}
	// openconnect's first ClientHello has record version DTLS 1.0.
	d10 := bytes.Clone(d)
	d10[2] = dtlsVersion10Minor
	if id, ok := ClientHelloSessionID(d10); !ok || !bytes.Equal(id, appID) {
		t.Fatalf("with record version 0xfeff: %x, %v", id, ok)
	}
	if !clientHelloOffers(d, uint16(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256)) ||
		!clientHelloOffers(d, uint16(dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256)) ||
		clientHelloOffers(d, uint16(dtls.TLS_PSK_WITH_AES_128_CCM)) {
		t.Fatal("clientHelloOffers misreads pion's suite list")
	}
}

func FuzzClientHelloSessionID(f *testing.F) {
	f.Add(buildClientHello(0xfeff, seq(32), nil, []uint16{0x00a8}))
	f.Add(buildClientHello(0xfefd, seq(1), seq(32), []uint16{0xccab, 0x00a8}))
	f.Add(buildClientHello(0xfeff, nil, nil, nil))
	f.Add([]byte{22, 0xfe, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, d []byte) {
		orig := bytes.Clone(d)
		id, ok := ClientHelloSessionID(d)
		if !bytes.Equal(d, orig) {
			t.Fatal("input modified")
		}
		if !ok {
			if id != nil {
				t.Fatalf("not ok but id %x", id)
			}
		} else {
			if len(id) < 1 || len(id) > maxSessionIDLen {
				t.Fatalf("id length %d", len(id))
			}
			if &id[0] != &d[sessionIDLenOff+1] || int(d[sessionIDLenOff]) != len(id) {
				t.Fatalf("id %x is not the session_id field of the input", id)
			}
		}
		for _, s := range []uint16{0x00a8, 0xccab, 0} {
			if clientHelloOffers(d, s) {
				if _, valid := clientHelloBody(d); !valid {
					t.Fatal("suite found in a datagram without a valid ClientHello")
				}
			}
		}
	})
}
