package acdtls

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// TestGnuTLSPSKInterop runs GnuTLS's gnutls-cli (the TLS library of
// Debian's openconnect) as a DTLS 1.2 PSK client against ServerOptions
// (package gnutls-bin). gnutls-cli is not openconnect: it
// puts no App-ID in the session_id and its extensions differ, but the
// handshake code, suite order and cookie exchange are GnuTLS's. With DTLS
// 1.0 enabled it sends the 0xfeff record version openconnect sends.
func TestGnuTLSPSKInterop(t *testing.T) {
	testenv.RequireTool(t, "gnutls-cli") // scripts/deps.sh installs gnutls-bin; missing under CI=true fails
	cli, err := testenv.LookTool("gnutls-cli")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		priority  string
		passHello bool
		want      dtls.CipherSuiteID
	}{
		// GnuTLS's NORMAL order, as openconnect's PSK priority inherits it:
		// AES-256-GCM, ChaCha20-Poly1305, AES-256-CCM, ..., AES-128-GCM.
		{"NORMAL, hello given", "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK", true, dtls.TLS_PSK_WITH_AES_128_GCM_SHA256},
		// DTLS 1.0 enabled too: GnuTLS then sends record version 0xfeff.
		{"NORMAL with DTLS 1.0 enabled", "NORMAL:-VERS-ALL:+VERS-DTLS1.2:+VERS-DTLS1.0:-KX-ALL:+PSK", true, dtls.TLS_PSK_WITH_AES_128_GCM_SHA256},
		// No Extended Master Secret, as openconnect 9.01 (dtls.md §3).
		{"NORMAL, DTLS 1.0, no EMS", "NORMAL:-VERS-ALL:+VERS-DTLS1.2:+VERS-DTLS1.0:-KX-ALL:+PSK:%NO_SESSION_HASH", true, dtls.TLS_PSK_WITH_AES_128_GCM_SHA256},
		{"NORMAL, no hello", "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK", false, dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256},
		{"AES-128-CCM only", "NONE:+VERS-DTLS1.2:+AES-128-CCM:+AEAD:+PSK:+COMP-NULL:+SIGN-ALL", true, dtls.TLS_PSK_WITH_AES_128_CCM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gnutlsPSK(t, cli, tt.priority, tt.passHello, tt.want)
		})
	}
}

func gnutlsPSK(t *testing.T, cli, priority string, passHello bool, want dtls.CipherSuiteID) {
	key := seq(PSKLen)
	p := pskParams(t)
	sUDP := listenLoopback(t)
	sNet := &sniffConn{PacketConn: sUDP}
	port := sUDP.LocalAddr().(interface{ AddrPort() netip.AddrPort }).AddrPort().Port()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, cli, "--udp", "--port", strconv.Itoa(int(port)),
		"--pskusername", PSKIdentity, "--pskkey", hex.EncodeToString(key),
		"--priority", priority, "127.0.0.1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	defer func() {
		stdin.Close()
		for range lines {
		}
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("gnutls-cli stderr:\n%s", stderr.String())
		}
	}()

	buf := make([]byte, 4096)
	if err := sUDP.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, from, err := sUDP.ReadFrom(buf)
	if err != nil {
		sUDP.Close()
		t.Fatalf("no datagram from gnutls-cli: %v", err)
	}
	_ = sUDP.SetReadDeadline(time.Time{})
	first := bytes.Clone(buf[:n])
	id, idOK := ClientHelloSessionID(first)
	t.Logf("first datagram: %d bytes, record version %x, session_id %x (ok %v), EMS %v, offers AES-128-GCM %v, ChaCha20 %v",
		n, first[1:3], id, idOK, helloHasExtension(first, 0x0017),
		clientHelloOffers(first, uint16(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256)),
		clientHelloOffers(first, uint16(dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256)))
	sNet.first, sNet.firstFrom = first, from

	hello := first
	if !passHello {
		hello = nil
	}
	opts, err := p.ServerOptions(key, hello, nil)
	if err != nil {
		sUDP.Close()
		t.Fatal(err)
	}
	server, err := dtls.ServerWithOptions(sNet, from, opts...)
	if err != nil {
		sUDP.Close()
		t.Fatal(err)
	}
	defer server.Close()
	hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
	defer hcancel()
	if err := server.HandshakeContext(hctx); err != nil {
		t.Fatalf("handshake with gnutls-cli: %v", err)
	}
	st, _ := server.ConnectionState()
	t.Logf("negotiated %v (%#04x), identity %q", dtls.CipherSuiteName(st.CipherSuiteID), uint16(st.CipherSuiteID), st.IdentityHint)
	if st.CipherSuiteID != want {
		t.Errorf("suite %v, want %v", st.CipherSuiteID, want)
	}

	// gnutls-cli sends each stdin line as one record and prints what it gets.
	if _, err := io.WriteString(stdin, "ping-from-gnutls\n"); err != nil {
		t.Fatal(err)
	}
	if err := server.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err = server.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "ping-from-gnutls") {
		t.Fatalf("server read %q, %v", buf[:n], err)
	}
	if _, err := server.Write([]byte("pong-from-pion\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("gnutls-cli exited before printing the reply")
			}
			if strings.Contains(l, "pong-from-pion") {
				return
			}
		case <-deadline:
			t.Fatal("gnutls-cli did not print the reply")
		}
	}
}

// helloHasExtension reports whether the ClientHello in d carries extension
// typ (0x0017: extended_master_secret, RFC 7627).
func helloHasExtension(d []byte, typ uint16) bool {
	body, ok := clientHelloBody(d)
	if !ok {
		return false
	}
	_, rest, ok := sessionIDAndRest(body)
	if !ok {
		return false
	}
	skip := func(lenBytes int) bool { // skips a length-prefixed vector
		if len(rest) < lenBytes {
			return false
		}
		n := 0
		for _, b := range rest[:lenBytes] {
			n = n<<8 | int(b)
		}
		if len(rest) < lenBytes+n {
			return false
		}
		rest = rest[lenBytes+n:]
		return true
	}
	if !skip(1) || !skip(2) || !skip(1) || len(rest) < 2 { // cookie, cipher_suites, compression_methods
		return false
	}
	rest = rest[2:] // extensions length
	for len(rest) >= 4 {
		if uint16(rest[0])<<8|uint16(rest[1]) == typ {
			return true
		}
		rest = rest[2:]
		if !skip(2) {
			return false
		}
	}
	return false
}
