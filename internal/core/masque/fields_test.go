package masque

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// encodeSection QPACK-encodes fields into a field section (no frame).
func encodeSection(fields ...qpack.HeaderField) []byte {
	var buf bytes.Buffer
	enc := qpack.NewEncoder(&buf)
	for _, f := range fields {
		_ = enc.WriteField(f)
	}
	return buf.Bytes()
}

// TestFieldSectionRules: names and values with characters RFC 9114 4.2 and
// 10.3 forbid, a decoded section above our announced limit (RFC 9114
// 4.2.2: name + value + 32 per field) and a dynamic table reference (RFC
// 9204 2.2.3) are refused with the right error code.
func TestFieldSectionRules(t *testing.T) {
	method := qpack.HeaderField{Name: ":method", Value: "CONNECT"}
	// 16 KiB of 2-byte indexed field lines (static table entry 85): they
	// decode to 8,191 fields, 54 times the limit by RFC 9114's count.
	amplified := []byte{0, 0}
	for len(amplified)+2 <= maxFieldSection {
		amplified = append(amplified, 0xff, 85-63)
	}
	for _, tc := range []struct {
		name string
		p    []byte
		want quic.ApplicationErrorCode // 0: accepted
	}{
		{"valid", encodeSection(method, qpack.HeaderField{Name: "user-agent", Value: "ok client/1.0"}), 0},
		{"CR LF in a value", encodeSection(method, qpack.HeaderField{Name: "user-agent", Value: "a\r\nx-injected: 1"}), ErrCodeMessage},
		{"NUL in a value", encodeSection(method, qpack.HeaderField{Name: "authorization", Value: "Basic \x00abc"}), ErrCodeMessage},
		{"DEL in a value", encodeSection(method, qpack.HeaderField{Name: "underpass-device-id", Value: "a\x7f"}), ErrCodeMessage},
		{"NUL in a pseudo-header value", encodeSection(qpack.HeaderField{Name: ":method", Value: "CON\x00NECT"}), ErrCodeMessage},
		{"space in a name", encodeSection(method, qpack.HeaderField{Name: "bad name", Value: "v"}), ErrCodeMessage},
		{"colon in a name", encodeSection(method, qpack.HeaderField{Name: "a:b", Value: "v"}), ErrCodeMessage},
		{"decoded size above the limit", amplified, ErrCodeMessage},
		{"large but within the limit", encodeSection(method, qpack.HeaderField{Name: "cookie", Value: strings.Repeat("a", maxFieldSection-(7+7+32)-(6+32))}), 0},
		{"one byte above the limit", encodeSection(method, qpack.HeaderField{Name: "cookie", Value: strings.Repeat("a", maxFieldSection-(7+7+32)-(6+32)+1)}), ErrCodeMessage},
		{"dynamic table reference", []byte{0x02, 0x00, 0x80}, ErrCodeQPACKDecompressionFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseFieldSection(tc.p, ":method")
			var he *Error
			switch {
			case tc.want == 0 && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != 0 && (!errors.As(err, &he) || he.Code != tc.want):
				t.Fatalf("got %v, want code %#x", err, uint64(tc.want))
			}
		})
	}
}

// TestMalformedRequestReset: a request with a forbidden character, or a
// HEADERS frame larger than the field section limit we announce, is
// answered with an H3_MESSAGE_ERROR reset of its stream, and the
// connection stays up for the next request.
func TestMalformedRequestReset(t *testing.T) {
	bad := append(requestFields("gw.example", testPath, nil), qpack.HeaderField{Name: "user-agent", Value: "a\nb"})
	big := appendFrame(nil, frameHeaders, make([]byte, maxFieldSection+1))
	for name, b := range map[string][]byte{"LF in a value": appendHeadersFrame(nil, bad), "HEADERS above the limit": big} {
		t.Run(name, func(t *testing.T) { malformedRequestReset(t, b) })
	}
}

func malformedRequestReset(t *testing.T, b []byte) {
	server, str, _ := openRequest(t)
	// The server may refuse a large HEADERS frame from its header alone,
	// so the reset (STOP_SENDING) can end the write before it is done.
	_, err := str.Write(b)
	if err == nil {
		_, err = str.Read(make([]byte, 1))
	}
	var se *quic.StreamError
	if !errors.As(err, &se) || se.ErrorCode != quic.StreamErrorCode(ErrCodeMessage) {
		t.Fatalf("read %v, want an H3_MESSAGE_ERROR reset", err)
	}
	if qc := server.QUIC(); qc.Context().Err() != nil {
		t.Fatalf("connection closed: %v", context.Cause(qc.Context()))
	}
}

// TestEncoderStreamInstructions: with our dynamic table capacity at 0, an
// encoder stream may only set the capacity to 0; a capacity above it is
// QPACK_ENCODER_STREAM_ERROR (RFC 9204 4.3.1).
func TestEncoderStreamInstructions(t *testing.T) {
	cq, sq := quicPair(t)
	newRawServer(t, sq, appendSettings(nil, true))
	if _, err := NewClientConn(cq, nil); err != nil {
		t.Fatal(err)
	}
	s, _ := sq.OpenUniStream()
	_, _ = s.Write([]byte{streamQPACKEncoder, 0x20, 0x20, 0x3f, 0xe1, 0x1f}) // 0, 0, then 4096
	if got := closeCode(t, sq); got != ErrCodeQPACKEncoderStream {
		t.Fatalf("closed with %#x, want QPACK_ENCODER_STREAM_ERROR", uint64(got))
	}
}

// TestDatagramSettingWithoutQUICDatagrams: SETTINGS_H3_DATAGRAM = 1 from
// a peer that did not offer QUIC datagrams is H3_SETTINGS_ERROR (RFC 9297
// 2.1.1).
func TestDatagramSettingWithoutQUICDatagrams(t *testing.T) {
	ln, err := quic.ListenAddr("127.0.0.1:0", testTLS(t), testQUIC)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cq, err := quic.DialAddr(ctx, ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPN}}, &quic.Config{MaxIdleTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cq.CloseWithError(0, "")
	sq, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sq.CloseWithError(0, "")
	if _, err := NewServerConn(sq, nil); err != nil {
		t.Fatal(err)
	}
	ctl, _ := cq.OpenUniStream()
	_, _ = ctl.Write(append([]byte{streamControl}, appendSettings(nil, false)...))
	if got := closeCode(t, sq); got != ErrCodeSettings {
		t.Fatalf("closed with %#x, want H3_SETTINGS_ERROR", uint64(got))
	}
}

// TestIPPayload: context ID 0 in any variable-length encoding carries an
// IP packet (RFC 9000 16 allows non-minimal ones); other IDs do not.
func TestIPPayload(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string // "-": not an IP packet
	}{
		{[]byte{0, 'p'}, "p"},
		{[]byte{0x40, 0, 'p'}, "p"},
		{[]byte{0x80, 0, 0, 0, 'p'}, "p"},
		{[]byte{0xc0, 0, 0, 0, 0, 0, 0, 0, 'p'}, "p"},
		{[]byte{0x40, 1, 'p'}, "-"},
		{[]byte{1, 'p'}, "-"},
		{[]byte{0x40}, "-"},
		{nil, "-"},
	} {
		p, ok := ipPayload(tc.in)
		got := string(p)
		if !ok {
			got = "-"
		}
		if got != tc.want {
			t.Errorf("% x: got %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestSkipHugeUnknownFrame: a frame of an unknown type longer than 1 GiB
// is skipped whole (RFC 9114 9), not parsed from its middle on.
func TestSkipHugeUnknownFrame(t *testing.T) {
	n := uint64(1<<30 + 5)
	b := quicvarint.Append(nil, 0x21)
	b = quicvarint.Append(b, n)
	// The payload is zeros, which read as frames would be empty DATA frames.
	r := bufio.NewReader(io.MultiReader(bytes.NewReader(b), io.LimitReader(zeros{}, int64(n))))
	_, err := readHeadersFrame(r, ":method")
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("after a %d-byte grease frame: %v, want the end of the stream", n, err)
	}
}

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
