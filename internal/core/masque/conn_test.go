package masque

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"

	"github.com/underpass/underpass/internal/core/certutil"
)

func testTLS(t testing.TB) *tls.Config {
	t.Helper()
	c, k, err := certutil.SelfSigned([]string{"localhost"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{ALPN}}
}

var testQUIC = &quic.Config{EnableDatagrams: true, MaxIdleTimeout: 10 * time.Second}

// quicPair returns a connected client and server QUIC connection.
func quicPair(t *testing.T) (client, server *quic.Conn) {
	t.Helper()
	ln, err := quic.ListenAddr("127.0.0.1:0", testTLS(t), testQUIC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err = quic.DialAddr(ctx, ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPN}}, testQUIC)
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = client.CloseWithError(0, "")
		_ = server.CloseWithError(0, "")
	})
	return client, server
}

// closeCode waits for qc to close and returns its application error code.
func closeCode(t *testing.T, qc *quic.Conn) quic.ApplicationErrorCode {
	t.Helper()
	select {
	case <-qc.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the connection stayed open")
	}
	var ae *quic.ApplicationError
	if !errors.As(context.Cause(qc.Context()), &ae) {
		t.Fatalf("closed with %v, not an application error", context.Cause(qc.Context()))
	}
	return ae.ErrorCode
}

// rawServer plays an HTTP/3 server from raw bytes.
type rawServer struct {
	qc  *quic.Conn
	ctl *quic.SendStream
}

func newRawServer(t *testing.T, qc *quic.Conn, control []byte) *rawServer {
	t.Helper()
	ctl, err := qc.OpenUniStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Write(append([]byte{streamControl}, control...)); err != nil {
		t.Fatal(err)
	}
	return &rawServer{qc: qc, ctl: ctl}
}

// request accepts a request stream and reads its HEADERS.
func (s *rawServer) request(t *testing.T) (*quic.Stream, *fieldSection) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	str, err := s.qc.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(str)
	typ, n, err := readFrameHeader(quicvarint.NewReader(r))
	if err != nil || typ != frameHeaders {
		t.Fatalf("request: frame %#x, %v", typ, err)
	}
	p, err := readPayload(r, typ, n, maxFieldSection)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := parseFieldSection(p, ":method", ":protocol", ":scheme", ":authority", ":path")
	if err != nil {
		t.Fatal(err)
	}
	return str, fs
}

func statusFrame(status string, extra ...string) []byte {
	hf := []qpack.HeaderField{{Name: ":status", Value: status}}
	for i := 0; i+1 < len(extra); i += 2 {
		hf = append(hf, qpack.HeaderField{Name: extra[i], Value: extra[i+1]})
	}
	return appendHeadersFrame(nil, hf)
}

func testRequest() Request {
	return Request{Authority: "gw.example:443", Path: "/.well-known/masque/ip/", Header: http.Header{"Authorization": {"Basic YTpi"}}}
}

func TestDialAndCapsules(t *testing.T) {
	cq, sq := quicPair(t)
	srv := newRawServer(t, sq, appendSettings(nil, true))
	mc, err := NewClientConn(cq, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var reqFields *fieldSection
	go func() {
		defer close(done)
		str, fs := srv.request(t)
		reqFields = fs
		var b []byte
		b = appendFrame(b, 0x21, []byte("grease before the response"))
		b = append(b, statusFrame("103")...) // interim: skipped
		b = append(b, statusFrame("200", "set-cookie", "webvpn=abc")...)
		caps := AppendRouteAdvertisement(AppendAddressAssign(nil, []AssignedAddress{{0, mp("10.0.0.9/32")}}), []IPRoute{{ma("10.0.0.0"), ma("10.255.255.255"), 0}})
		// Capsules split across DATA frames, with an unknown frame between.
		b = appendFrame(b, frameData, caps[:3])
		b = appendFrame(b, 0x1f*3+0x21, []byte{1, 2, 3})
		b = appendFrame(b, frameData, caps[3:])
		if _, err := str.Write(b); err != nil {
			t.Error(err)
		}
		_ = str.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sess, rsp, err := mc.Dial(ctx, testRequest())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	<-done
	if rsp.Status != 200 || rsp.Header.Get("Set-Cookie") != "webvpn=abc" {
		t.Errorf("response %+v", rsp)
	}
	want := map[string]string{":method": "CONNECT", ":protocol": "connect-ip", ":scheme": "https", ":authority": "gw.example:443", ":path": "/.well-known/masque/ip/"}
	for k, v := range want {
		if reqFields.pseudo[k] != v {
			t.Errorf("request %s = %q, want %q", k, reqFields.pseudo[k], v)
		}
	}
	if reqFields.header.Get("Capsule-Protocol") != "?1" || reqFields.header.Get("Authorization") != "Basic YTpi" {
		t.Errorf("request fields %v", reqFields.header)
	}
	all := func(uint64) bool { return true }
	if typ, p, err := sess.ReadCapsule(all); err != nil || typ != CapsuleAddressAssign || len(p) != 7 {
		t.Fatalf("first capsule: %#x %x %v", typ, p, err)
	}
	if typ, _, err := sess.ReadCapsule(all); err != nil || typ != CapsuleRouteAdvertisement {
		t.Fatalf("second capsule: %#x %v", typ, err)
	}
	if _, _, err := sess.ReadCapsule(all); err == nil {
		t.Fatal("read past the stream's end")
	}
}

func TestDialRefusals(t *testing.T) {
	settings := func(ids ...uint64) []byte {
		var p []byte
		for _, id := range ids {
			p = quicvarint.Append(quicvarint.Append(p, id), 1)
		}
		return appendFrame(nil, frameSettings, p)
	}
	for _, tc := range []struct {
		name     string
		settings []byte
		response []byte
		want     string
		status   int
	}{
		{"no extended CONNECT", settings(settingH3Datagram), nil, "SETTINGS_ENABLE_CONNECT_PROTOCOL", 0},
		{"no datagrams", settings(settingEnableConnectProtocol), nil, "SETTINGS_H3_DATAGRAM", 0},
		{"refused", appendSettings(nil, true), statusFrame("401", "x-reason", "who are you"), "status 401", 401},
		{"DATA first", appendSettings(nil, true), appendFrame(nil, frameData, []byte{1}), "DATA before", 0},
		{"101", appendSettings(nil, true), statusFrame("101"), "status 101", 0},
		{"no status", appendSettings(nil, true), appendHeadersFrame(nil, []qpack.HeaderField{{Name: "x-a", Value: "1"}}), "without :status", 0},
		{"uppercase field", appendSettings(nil, true), statusFrame("200", "X-Reason", "no"), "not lowercase", 0},
		{"request pseudo-header", appendSettings(nil, true), statusFrame("200", ":path", "/"), "not allowed", 0},
		{"SETTINGS on the request stream", appendSettings(nil, true), appendSettings(nil, true), "on a request stream", 0},
		{"request above the server's field section limit", appendFrame(nil, frameSettings, []byte{
			settingEnableConnectProtocol, 1, settingH3Datagram, 1, settingMaxFieldSectionSize, 63,
		}), nil, "SETTINGS_MAX_FIELD_SECTION_SIZE", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cq, sq := quicPair(t)
			srv := newRawServer(t, sq, tc.settings)
			if tc.response != nil {
				go func() {
					str, _ := srv.request(t)
					_, _ = str.Write(tc.response)
				}()
			}
			mc, err := NewClientConn(cq, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, rsp, err := mc.Dial(ctx, testRequest())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Dial: %v, want an error with %q", err, tc.want)
			}
			if tc.status != 0 && (rsp == nil || rsp.Status != tc.status || rsp.Header.Get("X-Reason") == "") {
				t.Fatalf("response %+v, want status %d with X-Reason", rsp, tc.status)
			}
		})
	}
}

func TestControlStreamErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		control []byte
		close   bool // the server closes its control stream after writing
		want    quic.ApplicationErrorCode
	}{
		{"GOAWAY before SETTINGS", appendFrame(nil, frameGoAway, []byte{0}), false, ErrCodeMissingSettings},
		{"duplicate setting", appendFrame(nil, frameSettings, []byte{0x33, 1, 0x33, 1}), false, ErrCodeSettings},
		{"HTTP/2 setting", appendFrame(nil, frameSettings, []byte{0x02, 0}), false, ErrCodeSettings},
		{"datagram setting 2", appendFrame(nil, frameSettings, []byte{0x33, 2}), false, ErrCodeSettings},
		{"truncated SETTINGS", appendFrame(nil, frameSettings, []byte{0x33}), false, ErrCodeFrame},
		{"huge SETTINGS", appendFrame(nil, frameSettings, make([]byte, maxControlFrame+1)), false, ErrCodeExcessiveLoad},
		{"control stream closed", appendSettings(nil, true), true, ErrCodeClosedCriticalStream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cq, sq := quicPair(t)
			srv := newRawServer(t, sq, tc.control)
			if tc.close {
				_ = srv.ctl.Close()
			}
			if _, err := NewClientConn(cq, nil); err != nil {
				t.Fatal(err)
			}
			if got := closeCode(t, sq); got != tc.want {
				t.Fatalf("closed with %#x, want %#x", uint64(got), uint64(tc.want))
			}
		})
	}
}

func TestUniStreams(t *testing.T) {
	cq, sq := quicPair(t)
	srv := newRawServer(t, sq, appendSettings(nil, true))
	mc, err := NewClientConn(cq, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A reserved stream type (0x1f*N+0x21) is aborted; QPACK streams are
	// drained; the connection lives on.
	grease, _ := sq.OpenUniStream()
	_, _ = grease.Write(quicvarint.Append(nil, 0x1f*7+0x21))
	for _, typ := range []byte{streamQPACKEncoder, streamQPACKDecoder} {
		s, _ := sq.OpenUniStream()
		_, _ = s.Write([]byte{typ, 0x20}) // Set Dynamic Table Capacity 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := mc.awaitSettings(ctx); err != nil {
		t.Fatal(err)
	}
	<-grease.Context().Done() // the client's STOP_SENDING cancels the stream
	var se *quic.StreamError
	if err := context.Cause(grease.Context()); !errors.As(err, &se) || se.ErrorCode != quic.StreamErrorCode(ErrCodeStreamCreation) {
		t.Errorf("reserved stream ended with %v, want H3_STREAM_CREATION_ERROR", err)
	}
	if sq.Context().Err() != nil {
		t.Fatalf("connection closed: %v", context.Cause(sq.Context()))
	}
	// A second control stream is a connection error.
	dup, _ := sq.OpenUniStream()
	_, _ = dup.Write(append([]byte{streamControl}, appendSettings(nil, true)...))
	if got := closeCode(t, sq); got != ErrCodeStreamCreation {
		t.Fatalf("duplicate control stream: closed with %#x", uint64(got))
	}
	_ = srv
}

func TestDatagrams(t *testing.T) {
	cq, sq := quicPair(t)
	srv := newRawServer(t, sq, appendSettings(nil, true))
	mc, err := NewClientConn(cq, nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		str, _ := srv.request(t)
		_, _ = str.Write(statusFrame("200"))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sess, _, err := mc.Dial(ctx, testRequest())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	sess.OnPacket(func(p []byte) {
		mu.Lock()
		got = append(got, string(p))
		mu.Unlock()
	})
	served := make(chan error, 1)
	go func() { served <- mc.ServeDatagrams() }()
	qsid := uint64(sess.str.StreamID()) / 4
	send := func(b []byte) {
		if err := sq.SendDatagram(b); err != nil {
			t.Fatal(err)
		}
	}
	send(append(quicvarint.Append(nil, qsid), 0, 'a'))
	send(append(quicvarint.Append(nil, qsid+1), 0, 'x')) // no such stream: dropped
	send(append(quicvarint.Append(nil, qsid), 1, 'y'))   // context ID 1: dropped
	send(append(quicvarint.Append(nil, qsid), 0, 'b'))
	// Datagrams may be reordered; wait for both good ones.
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // room for a wrongly delivered one
	mu.Lock()
	if s := strings.Join(got, ","); s != "a,b" && s != "b,a" {
		t.Errorf("delivered %q, want a and b only", s)
	}
	mu.Unlock()
	// The client's datagrams reach the server with the session's prefix.
	if err := sess.WritePacket([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b, err := sq.ReceiveDatagram(ctx)
	if err != nil || string(b) != string(append(quicvarint.Append(nil, qsid), 0, 'p', 'i', 'n', 'g')) {
		t.Fatalf("server received %q, %v", b, err)
	}
	// A quarter stream ID beyond 2^60-1 is H3_DATAGRAM_ERROR.
	send(quicvarint.Append(nil, 1<<61))
	if got := closeCode(t, sq); got != ErrCodeDatagram {
		t.Fatalf("closed with %#x, want H3_DATAGRAM_ERROR", uint64(got))
	}
	if err := <-served; err == nil {
		t.Fatal("ServeDatagrams returned nil")
	}
}
