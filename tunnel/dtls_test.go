package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/protocol/handshake"

	"github.com/underpass/underpass/internal/core/acdtls"
	"github.com/underpass/underpass/internal/core/cstp"
)

// sniffPC records what a DTLS client sends.
type sniffPC struct {
	net.PacketConn
	mu   sync.Mutex
	sent [][]byte
}

func (s *sniffPC) WriteTo(b []byte, to net.Addr) (int, error) {
	s.mu.Lock()
	s.sent = append(s.sent, bytes.Clone(b))
	s.mu.Unlock()
	return s.PacketConn.WriteTo(b, to)
}

func (s *sniffPC) datagrams() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.sent...)
}

// dtlsClient is a CSTP connection that negotiated PSK-NEGOTIATE and a pion
// DTLS client that uses it, as openconnect does.
type dtlsClient struct {
	cstp       *tls.Conn
	cstpReader *bufio.Reader // frames after the CONNECT reply
	conn       *dtls.Conn
	pc         *sniffPC
	tunAddr    netip.Addr
	server     *net.UDPAddr
}

// connectDTLS signs in, sends CONNECT with openconnect's DTLS offer and
// completes the DTLS handshake the answer asks for.
func connectDTLS(t *testing.T, addr string) *dtlsClient {
	t.Helper()
	cookie, body := signIn(t, addr, "alice", "secret")
	if cookie == "" {
		t.Fatalf("sign-in: %s", body)
	}
	c := tlsDial(t, addr)
	t.Cleanup(func() { c.Close() })
	secret := make([]byte, 48)
	_, _ = rand.Read(secret)
	fmt.Fprintf(c, "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: gw\r\nCookie: webvpn=%s\r\nX-CSTP-Version: 1\r\nX-CSTP-MTU: 1400\r\n"+
		"X-CSTP-Address-Type: IPv4\r\nX-DTLS-Master-Secret: %X\r\nX-DTLS-CipherSuite: PSK-NEGOTIATE:OC-DTLS1_2-AES128-GCM\r\n\r\n", cookie, secret)
	req, _ := http.NewRequest(http.MethodConnect, "https://gw/CSCOSSLC/tunnel", nil)
	br := bufio.NewReader(c)
	rsp, err := http.ReadResponse(br, req)
	if err != nil || rsp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", rsp, err)
	}
	tun, err := cstp.ParseTunnel(rsp.Header)
	if err != nil || tun.DTLS == nil || tun.DTLS.CipherSuite != acdtls.PSKNegotiate {
		t.Fatalf("no PSK-NEGOTIATE offer: %+v %v", tun, err)
	}
	cs := c.ConnectionState()
	psk, err := cs.ExportKeyingMaterial(acdtls.PSKExporterLabel, nil, acdtls.PSKLen)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	pc := &sniffPC{PacketConn: udp}
	host, _, _ := net.SplitHostPort(addr)
	server := &net.UDPAddr{IP: net.ParseIP(host), Port: tun.DTLS.Port}
	appID := tun.DTLS.AppID
	conn, err := dtls.ClientWithOptions(pc, server,
		dtls.WithPSK(func([]byte) ([]byte, error) { return psk, nil }),
		dtls.WithPSKIdentityHint([]byte(acdtls.PSKIdentity)),
		dtls.WithCipherSuites(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256),
		dtls.WithLoggerFactory(acdtls.PionLogger(nil)),
		dtls.WithClientHelloMessageHook(func(m handshake.MessageClientHello) handshake.Message {
			m.SessionID = bytes.Clone(appID) // openconnect puts the App-ID here
			return &m
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		t.Fatalf("DTLS handshake: %v", err)
	}
	// CSTP keepalives, as openconnect sends them whatever DTLS does.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
				_, _ = c.Write(cstp.AppendFrame(nil, cstp.Keepalive, nil))
			}
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })
	return &dtlsClient{cstp: c, cstpReader: br, conn: conn, pc: pc, tunAddr: tun.Address, server: server}
}

// ping sends an ICMP echo to the gateway over DTLS and waits for the
// reply over DTLS.
func (d *dtlsClient) ping(t *testing.T, g *Gateway, seq uint16) {
	t.Helper()
	if _, err := d.conn.Write(append([]byte{byte(cstp.Data)}, icmpEcho(d.tunAddr, g.Addr(), 7, seq)...)); err != nil {
		t.Fatalf("DTLS write: %v", err)
	}
	buf := make([]byte, 8192)
	_ = d.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, err := d.conn.Read(buf)
		if err != nil {
			t.Fatalf("no echo reply over DTLS: %v", err)
		}
		typ, p, err := acdtls.ParseRecord(buf[:n])
		if err == nil && typ == cstp.Data && len(p) >= 28 && p[20] == 0 && p[26] == byte(seq>>8) && p[27] == byte(seq) {
			return
		}
	}
}

// TestDTLSHostileUDP: junk, unknown or truncated ClientHellos and records
// replayed from another address get no state and no answer; a replayed
// ClientHello with a live App-ID gets at most dtlsPendingPerLink
// half-handshakes, each answered with less than it sent (no
// amplification), which expire; the live DTLS session keeps working
// throughout.
func TestDTLSHostileUDP(t *testing.T) {
	t.Parallel()
	g, addr := startGateway(t, func(c *Config) { c.DTLS = DTLSPSK })
	d := connectDTLS(t, addr)
	d.ping(t, g, 1)
	sent := d.pc.datagrams()
	hello := sent[0] // the first ClientHello, App-ID inside
	if id, ok := acdtls.ClientHelloSessionID(hello); !ok || len(id) != acdtls.AppIDLen {
		t.Fatalf("first datagram is not the ClientHello: %x", hello[:min(len(hello), 64)])
	}
	record := sent[len(sent)-1] // the encrypted echo request
	st0 := g.Stats()

	unknown := bytes.Clone(hello)
	unknown[60] ^= 0xff // another session id
	junk := [][]byte{unknown, hello[:50], hello[:59], record, {}, {22}, {23, 0xfe, 0xfd}}
	for range 100 {
		b := make([]byte, 1+int(hello[5])%200)
		_, _ = rand.Read(b)
		b[0] &^= 0x40 // the DTLS side of the port
		junk = append(junk, b)
	}
	attacker, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	for _, b := range junk {
		if _, err := attacker.WriteTo(b, d.server); err != nil {
			t.Fatal(err)
		}
	}
	// Half handshakes: the live ClientHello replayed from 5 addresses.
	var halves []*net.UDPConn
	for range 5 {
		h, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if _, err := h.WriteTo(hello, d.server); err != nil {
			t.Fatal(err)
		}
		halves = append(halves, h)
	}
	d.ping(t, g, 2) // the flood is behind us: everything was read

	st := g.Stats()
	if n := st.DTLSDropped - st0.DTLSDropped; n < uint64(len(junk)) {
		t.Errorf("dropped %d datagrams without state, want at least %d", n, len(junk))
	}
	if st.DTLSPeers > 1+dtlsPendingPerLink {
		t.Errorf("%d DTLS peers with state, want at most %d", st.DTLSPeers, 1+dtlsPendingPerLink)
	}
	if got := received(attacker); got != 0 {
		t.Errorf("the junk sender got %d bytes back", got)
	}
	answered := 0
	for _, h := range halves {
		got := received(h)
		if got > len(hello) {
			t.Errorf("a half handshake got %d bytes for %d sent: amplification", got, len(hello))
		}
		if got > 0 {
			answered++
		}
	}
	if answered > dtlsPendingPerLink {
		t.Errorf("%d half handshakes answered, want at most %d", answered, dtlsPendingPerLink)
	}
	// A record replayed from the client's own address is dropped by the
	// DTLS replay window: no second echo reply.
	if _, err := d.pc.PacketConn.WriteTo(record, d.server); err != nil {
		t.Fatal(err)
	}
	d.ping(t, g, 3)
	// The half handshakes expire (dtlsHandshakeTimeout); the live
	// session stays.
	// The client keeps talking meanwhile, or the gateway's DTLS DPD would
	// retire its silent channel.
	deadline := time.Now().Add(2 * dtlsHandshakeTimeout)
	for seq := uint16(4); g.Stats().DTLSPeers != 1; seq++ {
		if time.Now().After(deadline) {
			t.Fatalf("%d DTLS peers after the half handshakes' timeout, want 1", g.Stats().DTLSPeers)
		}
		d.ping(t, g, seq)
		time.Sleep(500 * time.Millisecond)
	}
}

// received drains what c got within a short grace, in bytes.
func received(c *net.UDPConn) int {
	total := 0
	buf := make([]byte, 4096)
	for {
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return total
		}
		total += n
	}
}

// TestDTLSDeadFallsBackToCSTP: when the client's DTLS goes silent (a
// network that starts dropping UDP), the gateway retires the channel after
// 2.5 DPD intervals and the session carries on over CSTP.
func TestDTLSDeadFallsBackToCSTP(t *testing.T) {
	t.Parallel()
	g, addr := startGateway(t, nil) // DPD 2 s
	d := connectDTLS(t, addr)
	d.ping(t, g, 1)
	// Silent from now on, without a close_notify alert: the UDP socket
	// goes first.
	d.pc.PacketConn.Close()
	d.conn.Close()
	deadline := time.Now().Add(20 * time.Second)
	for g.Stats().DTLSPeers != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the silent DTLS channel was not retired")
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := g.Stats().DTLSPacketsOut
	if _, err := d.cstp.Write(cstp.AppendFrame(nil, cstp.Data, icmpEcho(d.tunAddr, g.Addr(), 7, 2))); err != nil {
		t.Fatal(err)
	}
	r := cstp.NewReader(d.cstpReader, cstp.MaxRecordPayload)
	_ = d.cstp.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		typ, p, err := r.Next()
		if err != nil {
			t.Fatalf("no echo reply over CSTP: %v", err)
		}
		if typ == cstp.Data && len(p) >= 28 && p[20] == 0 && p[27] == 2 {
			break
		}
	}
	if g.Stats().DTLSPacketsOut != out {
		t.Error("a packet went to the retired DTLS channel")
	}
}
