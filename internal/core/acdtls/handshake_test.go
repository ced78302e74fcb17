package acdtls

import (
	"bytes"
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"
)

// Test handshake time limits. A handshake with the wrong key never gets an
// alert: the peer cannot decrypt the Finished message and DTLS discards
// records that fail authentication (RFC 6347 §4.1.2.7), so both sides wait
// for their deadline; failing cases use the short one.
const (
	handshakeTimeout = 10 * time.Second
	failTimeout      = 1500 * time.Millisecond
)

// sniffConn is a PacketConn that records what it sends, can rewrite
// outgoing datagrams, and can hand out one pre-read datagram first — as the
// gateway's demultiplexer does with the ClientHello it looked at.
type sniffConn struct {
	net.PacketConn
	rewrite func([]byte) []byte

	mu        sync.Mutex
	sent      [][]byte
	first     []byte
	firstFrom net.Addr
}

func (s *sniffConn) WriteTo(b []byte, a net.Addr) (int, error) {
	out := b
	if s.rewrite != nil {
		out = s.rewrite(bytes.Clone(b))
	}
	s.mu.Lock()
	s.sent = append(s.sent, bytes.Clone(out))
	s.mu.Unlock()
	if _, err := s.PacketConn.WriteTo(out, a); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (s *sniffConn) ReadFrom(b []byte) (int, net.Addr, error) {
	s.mu.Lock()
	if first := s.first; first != nil {
		s.first = nil
		s.mu.Unlock()
		return copy(b, first), s.firstFrom, nil
	}
	s.mu.Unlock()
	return s.PacketConn.ReadFrom(b)
}

// plainHandshakeTypes lists the handshake message types in the epoch-0
// (unencrypted) records of the datagrams.
func (s *sniffConn) plainHandshakeTypes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	var types []byte
	for _, d := range s.sent {
		for len(d) >= recordHeaderLen {
			n := int(d[11])<<8 | int(d[12])
			if len(d) < recordHeaderLen+n {
				break
			}
			if d[0] == contentTypeHandshake && d[3] == 0 && d[4] == 0 && n > 0 {
				types = append(types, d[recordHeaderLen])
			}
			d = d[recordHeaderLen+n:]
		}
	}
	return types
}

// asDTLS10ClientHello rewrites the record version of a datagram's
// ClientHello records to DTLS 1.0, as openconnect (GnuTLS) sends them. The
// record header is outside the handshake transcript, so pion's client
// does not notice.
func asDTLS10ClientHello(d []byte) []byte {
	for i := 0; i+recordHeaderLen < len(d); {
		n := int(d[i+11])<<8 | int(d[i+12])
		if d[i] == contentTypeHandshake && d[i+3] == 0 && d[i+4] == 0 && d[i+recordHeaderLen] == handshakeClientHello {
			d[i+2] = dtlsVersion10Minor
		}
		i += recordHeaderLen + n
	}
	return d
}

type handshakeResult struct {
	client, server       *dtls.Conn
	clientErr, serverErr error
	clientNet, serverNet *sniffConn
	first                []byte // the first datagram the server got
}

func listenLoopback(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// runHandshake starts a pion client, reads its first datagram off the
// server socket (like the gateway's demultiplexer), builds the server's
// options from it, starts the server with that datagram replayed, and
// waits for both handshakes. Both conns are closed at cleanup.
func runHandshake(t testing.TB, serverOpts func(first []byte) ([]dtls.ServerOption, error),
	clientOpts []dtls.ClientOption, v10 bool, timeout time.Duration,
) *handshakeResult {
	t.Helper()
	cNet := &sniffConn{PacketConn: listenLoopback(t)}
	if v10 {
		cNet.rewrite = asDTLS10ClientHello
	}
	sUDP := listenLoopback(t)
	sNet := &sniffConn{PacketConn: sUDP}
	r := &handshakeResult{clientNet: cNet, serverNet: sNet}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	client, err := dtls.ClientWithOptions(cNet, sUDP.LocalAddr(), clientOpts...)
	if err != nil {
		cNet.Close()
		sUDP.Close()
		t.Fatal(err)
	}
	r.client = client
	t.Cleanup(func() { client.Close() })
	clientDone := make(chan error, 1)
	go func() { clientDone <- client.HandshakeContext(ctx) }()

	buf := make([]byte, 2048)
	if err := sUDP.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	n, from, err := sUDP.ReadFrom(buf)
	if err != nil {
		sUDP.Close()
		t.Fatalf("no ClientHello: %v", err)
	}
	if err := sUDP.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	r.first = bytes.Clone(buf[:n])
	sNet.first, sNet.firstFrom = r.first, from

	opts, err := serverOpts(r.first)
	if err != nil {
		sUDP.Close()
		t.Fatal(err)
	}
	server, err := dtls.ServerWithOptions(sNet, from, opts...)
	if err != nil {
		sUDP.Close()
		t.Fatal(err)
	}
	r.server = server
	t.Cleanup(func() { server.Close() })
	r.serverErr = server.HandshakeContext(ctx)
	if r.serverErr != nil {
		// Let the client see the alert (or time out) before returning.
		cancelSoon := time.AfterFunc(failTimeout, cancel)
		defer cancelSoon.Stop()
	}
	r.clientErr = <-clientDone
	return r
}

// exchange sends a record each way and checks it arrives intact.
func exchange(t *testing.T, a, b *dtls.Conn) {
	t.Helper()
	for _, dir := range []struct {
		from, to *dtls.Conn
		msg      []byte
	}{
		{a, b, AppendRecord(nil, 0, bytes.Repeat([]byte{0x45}, 1400))},
		{b, a, AppendRecord(nil, 3, []byte("dpd"))},
	} {
		if _, err := dir.from.Write(dir.msg); err != nil {
			t.Fatalf("write: %v", err)
		}
		if err := dir.to.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8192)
		n, err := dir.to.Read(buf)
		if err != nil || !bytes.Equal(buf[:n], dir.msg) {
			t.Fatalf("read %d bytes, %v", n, err)
		}
	}
}

func pskClientOptions(key, appID []byte, suites ...dtls.CipherSuiteID) []dtls.ClientOption {
	return []dtls.ClientOption{
		dtls.WithPSK(func([]byte) ([]byte, error) { return key, nil }),
		dtls.WithPSKIdentityHint([]byte(PSKIdentity)), // a pion client sends this as its identity
		dtls.WithCipherSuites(suites...),
		dtls.WithLoggerFactory(PionLogger(nil)),
		withSessionID(appID),
	}
}

func pskParams(t testing.TB) Params {
	t.Helper()
	p, ok := Negotiate(ModeAuto, Offer{CipherSuites: []string{PSKNegotiate}}, true)
	if !ok || !p.PSK {
		t.Fatal("no PSK params")
	}
	return p
}

func TestPSKHandshake(t *testing.T) {
	key := seq(PSKLen)
	openconnectOrder := []dtls.CipherSuiteID{ // pion's subset of GnuTLS's order (dtls.md §3)
		dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256,
		dtls.TLS_PSK_WITH_AES_128_GCM_SHA256,
		dtls.TLS_PSK_WITH_AES_128_CCM,
		dtls.TLS_PSK_WITH_AES_128_CBC_SHA256,
	}
	tests := []struct {
		name      string
		suites    []dtls.CipherSuiteID
		passHello bool // server options built with the ClientHello
		v10       bool
		want      dtls.CipherSuiteID
		noEMS     bool // client offers no Extended Master Secret, like openconnect 9.01
	}{
		{"openconnect order, DTLS 1.0 record, no EMS: AES-128-GCM", openconnectOrder, true, true, dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, true},
		{"openconnect order, EMS", openconnectOrder, true, true, dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, false},
		{"openconnect order, DTLS 1.2 record", openconnectOrder, true, false, dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, true},
		{"openconnect order, no ClientHello given: client's first", openconnectOrder, false, true, dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256, true},
		{"AES-128-GCM only", []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_GCM_SHA256}, true, true, dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, true},
		{"ChaCha20 only", []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256}, true, true, dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256, true},
		{"AES-128-CCM only", []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CCM}, true, true, dtls.TLS_PSK_WITH_AES_128_CCM, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pskParams(t)
			var identities []string
			clientOpts := pskClientOptions(key, p.AppID, tt.suites...)
			if tt.noEMS {
				clientOpts = append(clientOpts, dtls.WithExtendedMasterSecret(dtls.DisableExtendedMasterSecret))
			}
			r := runHandshake(t, func(first []byte) ([]dtls.ServerOption, error) {
				if got := helloHasExtension(first, 0x0017); got == tt.noEMS {
					t.Errorf("ClientHello has EMS: %v", got)
				}
				if id, ok := ClientHelloSessionID(first); !ok || !bytes.Equal(id, p.AppID) {
					t.Errorf("first datagram names session %x, %v; want App-ID %x", id, ok, p.AppID)
				}
				if tt.v10 && first[2] != dtlsVersion10Minor {
					t.Errorf("record version %x", first[1:3])
				}
				hello := first
				if !tt.passHello {
					hello = nil
				}
				opts, err := p.ServerOptions(key, hello, nil)
				// Watch the identity the server is asked about.
				opts = append(opts, dtls.WithVerifyConnection(func(s *dtls.State) error {
					identities = append(identities, string(s.IdentityHint))
					return nil
				}))
				return opts, err
			}, clientOpts, tt.v10, handshakeTimeout)
			if r.clientErr != nil || r.serverErr != nil {
				t.Fatalf("handshake: client %v, server %v", r.clientErr, r.serverErr)
			}
			cs, _ := r.client.ConnectionState()
			ss, _ := r.server.ConnectionState()
			if cs.CipherSuiteID != tt.want || ss.CipherSuiteID != tt.want {
				t.Fatalf("suite client %v server %v, want %v", cs.CipherSuiteID, ss.CipherSuiteID, tt.want)
			}
			if !slices.Equal(identities, []string{PSKIdentity}) {
				t.Fatalf("identities %q", identities)
			}
			exchange(t, r.client, r.server)
		})
	}
}

func TestPSKHandshakeFails(t *testing.T) {
	key := seq(PSKLen)
	tests := []struct {
		name   string
		client func(appID []byte) []dtls.ClientOption
	}{
		{"wrong PSK", func(appID []byte) []dtls.ClientOption {
			return pskClientOptions(seq(PSKLen-1), appID, dtls.TLS_PSK_WITH_AES_128_GCM_SHA256)
		}},
		{"wrong identity", func(appID []byte) []dtls.ClientOption {
			return append(pskClientOptions(key, appID, dtls.TLS_PSK_WITH_AES_128_GCM_SHA256),
				dtls.WithPSKIdentityHint([]byte("Client_identity")))
		}},
		{"CBC only", func(appID []byte) []dtls.ClientOption {
			return pskClientOptions(key, appID, dtls.TLS_PSK_WITH_AES_128_CBC_SHA256)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pskParams(t)
			r := runHandshake(t, func(first []byte) ([]dtls.ServerOption, error) {
				return p.ServerOptions(key, first, nil)
			}, tt.client(p.AppID), true, failTimeout)
			if r.clientErr == nil || r.serverErr == nil {
				t.Fatalf("handshake succeeded: client %v, server %v", r.clientErr, r.serverErr)
			}
			t.Logf("client: %v; server: %v", r.clientErr, r.serverErr)
		})
	}
}

// clientStore is the client's session cache: the one session the CONNECT
// response described, whatever the key.
type clientStore struct{ s dtls.Session }

func (c clientStore) Get([]byte) (dtls.Session, error) { return c.s, nil }
func (clientStore) Set([]byte, dtls.Session) error     { return nil }
func (clientStore) Del([]byte) error                   { return nil }

// legacyClientOptions is a pion client that resumes session sid with
// secret, as openconnect or a Cisco client does after the CONNECT response,
// offering exactly the suites in offer (nil: all it has).
func legacyClientOptions(t testing.TB, sid [32]byte, secret []byte, suite dtls.CipherSuiteID, offer []dtls.CipherSuiteID) []dtls.ClientOption {
	t.Helper()
	cert, err := throwawayCert()
	if err != nil {
		t.Fatal(err)
	}
	opts := []dtls.ClientOption{
		dtls.WithSessionStore(clientStore{dtls.Session{
			ID: sid[:], Secret: secret, Version: 1, IsClient: true, CipherSuiteID: suite,
			PeerCertificates: cert.Certificate, // pion wants some; never checked with InsecureSkipVerify
		}}),
		dtls.WithInsecureSkipVerify(true),
		dtls.WithExtendedMasterSecret(dtls.DisableExtendedMasterSecret),
		dtls.WithCustomCipherSuites(newRSAGCMSuites),
		dtls.WithCipherSuites(dtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, dtls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
		dtls.WithLoggerFactory(PionLogger(nil)),
	}
	if offer != nil {
		opts = append(opts, dtls.WithClientHelloMessageHook(func(m handshake.MessageClientHello) handshake.Message {
			m.CipherSuiteIDs = nil
			for _, id := range offer {
				m.CipherSuiteIDs = append(m.CipherSuiteIDs, uint16(id))
			}
			return &m
		}))
	}
	return opts
}

func legacyParams(t testing.TB, name string) Params {
	t.Helper()
	o := Offer{MasterSecret: seq(MasterSecretLen)}
	if len(name) > 3 && name[:3] == "OC-" {
		o.CipherSuites = []string{name}
	} else {
		o.DTLS12CipherSuites = []string{name}
	}
	p, ok := Negotiate(ModeLegacy, o, false)
	if !ok || p.Suite.Name != name {
		t.Fatalf("Negotiate(%s) = %+v, %v", name, p, ok)
	}
	return p
}

func TestLegacyResumption(t *testing.T) {
	tests := []struct {
		name  string
		offer []dtls.CipherSuiteID // what the client's ClientHello lists; nil: just the session's
	}{
		{"ECDHE-RSA-AES128-GCM-SHA256", nil},
		{"ECDHE-RSA-AES256-GCM-SHA384", nil},
		{"AES128-GCM-SHA256", nil},
		{"AES256-GCM-SHA384", nil},
		{"OC-DTLS1_2-AES128-GCM", nil},
		{"OC-DTLS1_2-AES256-GCM", nil},
		// OpenSSL-style clients list many suites; the session's must win.
		{"AES128-GCM-SHA256", []dtls.CipherSuiteID{
			dtls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, dtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			suiteRSAWithAES256GCMSHA384, suiteRSAWithAES128GCMSHA256}},
		{"ECDHE-RSA-AES256-GCM-SHA384", []dtls.CipherSuiteID{
			suiteRSAWithAES128GCMSHA256, dtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, dtls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384}},
	}
	for _, tt := range tests {
		name := tt.name
		if tt.offer != nil {
			name += ", many suites offered"
		}
		t.Run(name, func(t *testing.T) {
			p := legacyParams(t, tt.name)
			offer := tt.offer
			if offer == nil {
				offer = []dtls.CipherSuiteID{p.Suite.ID}
			}
			r := runHandshake(t, func(first []byte) ([]dtls.ServerOption, error) {
				if id, ok := ClientHelloSessionID(first); !ok || !bytes.Equal(id, p.SessionID[:]) {
					t.Errorf("first datagram names session %x, %v", id, ok)
				}
				return p.ServerOptions(nil, first, nil)
			}, legacyClientOptions(t, p.SessionID, p.MasterSecret, p.Suite.ID, offer), true, handshakeTimeout)
			if r.clientErr != nil || r.serverErr != nil {
				t.Fatalf("handshake: client %v, server %v", r.clientErr, r.serverErr)
			}
			// Abbreviated handshake: in clear the server sent only
			// HelloVerifyRequest (3) and ServerHello (2) — no Certificate
			// (11), ServerKeyExchange (12) or ServerHelloDone (14).
			types := r.serverNet.plainHandshakeTypes()
			if !slices.Contains(types, 2) || slices.ContainsFunc(types, func(b byte) bool { return b != 2 && b != 3 }) {
				t.Fatalf("server sent handshake types %v in clear: not a resumption", types)
			}
			cs, _ := r.client.ConnectionState()
			ss, _ := r.server.ConnectionState()
			if cs.CipherSuiteID != p.Suite.ID || ss.CipherSuiteID != p.Suite.ID ||
				!bytes.Equal(cs.SessionID, p.SessionID[:]) || !bytes.Equal(ss.SessionID, p.SessionID[:]) {
				t.Fatalf("client %v %x, server %v %x", cs.CipherSuiteID, cs.SessionID, ss.CipherSuiteID, ss.SessionID)
			}
			exchange(t, r.client, r.server)
		})
	}
}

func TestLegacyHandshakeFails(t *testing.T) {
	wrong := seq(MasterSecretLen)
	wrong[0] ^= 1
	tests := []struct {
		name   string
		suite  string
		client func(t *testing.T, p Params) []dtls.ClientOption
	}{
		{"wrong master secret, ECDHE-RSA", "ECDHE-RSA-AES128-GCM-SHA256", func(t *testing.T, p Params) []dtls.ClientOption {
			return legacyClientOptions(t, p.SessionID, wrong, p.Suite.ID, nil)
		}},
		{"wrong master secret, RSA", "OC-DTLS1_2-AES128-GCM", func(t *testing.T, p Params) []dtls.ClientOption {
			return legacyClientOptions(t, p.SessionID, wrong, p.Suite.ID, nil)
		}},
		{"another session id", "AES128-GCM-SHA256", func(t *testing.T, p Params) []dtls.ClientOption {
			sid := p.SessionID
			sid[31] ^= 1
			return legacyClientOptions(t, sid, p.MasterSecret, p.Suite.ID, nil)
		}},
		{"full handshake, ECDHE-RSA", "ECDHE-RSA-AES128-GCM-SHA256", func(t *testing.T, p Params) []dtls.ClientOption {
			return []dtls.ClientOption{
				dtls.WithInsecureSkipVerify(true),
				dtls.WithCipherSuites(dtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
				dtls.WithLoggerFactory(PionLogger(nil)),
			}
		}},
		{"full handshake, ECDHE-RSA, EMS off", "ECDHE-RSA-AES256-GCM-SHA384", func(t *testing.T, p Params) []dtls.ClientOption {
			return []dtls.ClientOption{
				dtls.WithInsecureSkipVerify(true),
				dtls.WithExtendedMasterSecret(dtls.DisableExtendedMasterSecret),
				dtls.WithCipherSuites(dtls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
				dtls.WithLoggerFactory(PionLogger(nil)),
			}
		}},
		{"full handshake, RSA key exchange", "OC-DTLS1_2-AES128-GCM", func(t *testing.T, p Params) []dtls.ClientOption {
			return []dtls.ClientOption{
				dtls.WithInsecureSkipVerify(true),
				dtls.WithExtendedMasterSecret(dtls.DisableExtendedMasterSecret),
				dtls.WithCustomCipherSuites(newRSAGCMSuites),
				dtls.WithCipherSuites(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256), // dropped: leaves the custom suites alone
				dtls.WithLoggerFactory(PionLogger(nil)),
			}
		}},
		// An on-path attacker sees the session id in the first ClientHello
		// and could answer the cookie with a session-less ClientHello.
		{"session id dropped after the cookie, RSA", "AES128-GCM-SHA256", func(t *testing.T, p Params) []dtls.ClientOption {
			return append(legacyClientOptions(t, p.SessionID, p.MasterSecret, p.Suite.ID, nil),
				dtls.WithClientHelloMessageHook(func(m handshake.MessageClientHello) handshake.Message {
					if len(m.Cookie) > 0 {
						m.SessionID = nil
					}
					return &m
				}))
		}},
		{"session suite not offered", "AES128-GCM-SHA256", func(t *testing.T, p Params) []dtls.ClientOption {
			return legacyClientOptions(t, p.SessionID, p.MasterSecret, p.Suite.ID,
				[]dtls.CipherSuiteID{dtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := legacyParams(t, tt.suite)
			r := runHandshake(t, func(first []byte) ([]dtls.ServerOption, error) {
				return p.ServerOptions(nil, first, nil)
			}, tt.client(t, p), true, failTimeout)
			if r.clientErr == nil || r.serverErr == nil {
				t.Fatalf("handshake succeeded: client %v, server %v", r.clientErr, r.serverErr)
			}
			t.Logf("client: %v; server: %v", r.clientErr, r.serverErr)
		})
	}
}

func TestServerOptionsErrors(t *testing.T) {
	good := legacyParams(t, "AES128-GCM-SHA256")
	short := good
	short.MasterSecret = short.MasterSecret[:47]
	badSuite := good
	badSuite.Suite.ID = dtls.TLS_PSK_WITH_AES_128_GCM_SHA256
	tests := []struct {
		name string
		p    Params
		psk  []byte
		is   error
	}{
		{"zero params", Params{}, seq(32), ErrNoDTLS},
		{"PSK without key", pskParams(t), nil, ErrBadPSK},
		{"legacy short secret", short, nil, nil},
		{"legacy non-legacy suite", badSuite, nil, nil},
	}
	for _, tt := range tests {
		_, err := tt.p.ServerOptions(tt.psk, nil, nil)
		if err == nil || (tt.is != nil && !errors.Is(err, tt.is)) {
			t.Errorf("%s: err %v, want %v", tt.name, err, tt.is)
		}
	}
	if _, err := good.ServerOptions(nil, nil, nil); err != nil {
		t.Errorf("good legacy params: %v", err)
	}
}
