package masque

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/net/http/httpguts"
)

// ALPN is HTTP/3's TLS application protocol (RFC 9114 section 3.1).
const ALPN = "h3"

// HTTP/3 frame types (RFC 9114 section 7.2).
const (
	frameData     = 0x00
	frameHeaders  = 0x01
	frameSettings = 0x04
	frameGoAway   = 0x07
)

// isHTTP2Frame reports frame types reserved because HTTP/2 used them
// (RFC 9114 section 7.2.8): receiving one is H3_FRAME_UNEXPECTED.
// CANCEL_PUSH (0x03), PUSH_PROMISE (0x05) and MAX_PUSH_ID (0x0d) are
// HTTP/3 frames, but only about server push, which neither side enables.
func isHTTP2Frame(t uint64) bool {
	return t == 0x02 || t == 0x06 || t == 0x08 || t == 0x09
}

// Unidirectional stream types (RFC 9114 section 6.2, RFC 9204 4.2).
const (
	streamControl      = 0x00
	streamPush         = 0x01
	streamQPACKEncoder = 0x02
	streamQPACKDecoder = 0x03
)

// Settings identifiers.
const (
	settingQPACKMaxTableCapacity = 0x01 // RFC 9204 5; we keep the default 0
	settingMaxFieldSectionSize   = 0x06 // RFC 9114 7.2.4.1
	settingEnableConnectProtocol = 0x08 // RFC 9220 3
	settingH3Datagram            = 0x33 // RFC 9297 2.1.1
)

// HTTP/3 error codes (RFC 9114 section 8.1, RFC 9297 section 5.2).
const (
	ErrCodeNoError              quic.ApplicationErrorCode = 0x100
	ErrCodeGeneralProtocol      quic.ApplicationErrorCode = 0x101
	ErrCodeInternal             quic.ApplicationErrorCode = 0x102
	ErrCodeStreamCreation       quic.ApplicationErrorCode = 0x103
	ErrCodeClosedCriticalStream quic.ApplicationErrorCode = 0x104
	ErrCodeFrameUnexpected      quic.ApplicationErrorCode = 0x105
	ErrCodeFrame                quic.ApplicationErrorCode = 0x106
	ErrCodeExcessiveLoad        quic.ApplicationErrorCode = 0x107
	ErrCodeID                   quic.ApplicationErrorCode = 0x108
	ErrCodeSettings             quic.ApplicationErrorCode = 0x109
	ErrCodeMissingSettings      quic.ApplicationErrorCode = 0x10a
	ErrCodeRequestRejected      quic.ApplicationErrorCode = 0x10b
	ErrCodeRequestCancelled     quic.ApplicationErrorCode = 0x10c
	ErrCodeRequestIncomplete    quic.ApplicationErrorCode = 0x10d
	ErrCodeMessage              quic.ApplicationErrorCode = 0x10e
	ErrCodeConnect              quic.ApplicationErrorCode = 0x10f
	ErrCodeDatagram             quic.ApplicationErrorCode = 0x33
	// QPACK errors (RFC 9204 section 6).
	ErrCodeQPACKDecompressionFailed quic.ApplicationErrorCode = 0x200
	ErrCodeQPACKEncoderStream       quic.ApplicationErrorCode = 0x201
)

// Error is an HTTP/3 protocol error: Code is what the connection (or the
// stream) is closed with.
type Error struct {
	Code   quic.ApplicationErrorCode
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("masque: HTTP/3 error %#x: %s", uint64(e.Code), e.Reason)
}

func h3err(code quic.ApplicationErrorCode, format string, a ...any) *Error {
	return &Error{Code: code, Reason: fmt.Sprintf(format, a...)}
}

// Frame payload limits: SETTINGS and GOAWAY are small; a HEADERS frame
// holds a field section of at most maxFieldSection bytes.
const (
	maxControlFrame = 4 << 10  // a SETTINGS with a hundred greased entries
	maxFieldSection = 16 << 10 // also sent as SETTINGS_MAX_FIELD_SECTION_SIZE
)

// appendFrame appends an HTTP/3 frame (RFC 9114 section 7.1).
func appendFrame(b []byte, typ uint64, p []byte) []byte {
	b = quicvarint.Append(b, typ)
	b = quicvarint.Append(b, uint64(len(p)))
	return append(b, p...)
}

// readFrameHeader reads a frame's type and length; io.EOF only at a frame
// boundary.
func readFrameHeader(r quicvarint.Reader) (typ, n uint64, err error) {
	if typ, err = quicvarint.Read(r); err != nil {
		return 0, 0, err
	}
	if n, err = quicvarint.Read(r); err != nil {
		return 0, 0, noEOF(err)
	}
	return typ, n, nil
}

// readPayload reads a frame payload of n bytes, at most limit.
func readPayload(r io.Reader, typ, n uint64, limit int) ([]byte, error) {
	if n > uint64(limit) {
		return nil, h3err(ErrCodeExcessiveLoad, "frame type %#x of %d bytes exceeds %d", typ, n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, noEOF(err)
	}
	return b, nil
}

// Settings are the SETTINGS values CONNECT-IP depends on.
type Settings struct {
	// Datagram: SETTINGS_H3_DATAGRAM = 1 (RFC 9297 section 2.1.1).
	Datagram bool
	// ExtendedConnect: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 9220).
	ExtendedConnect bool
	// MaxFieldSection is SETTINGS_MAX_FIELD_SECTION_SIZE; 0 if unlimited.
	// Dial refuses to send a request larger than the server's (RFC 9114
	// 4.2.2 counts name + value + 32 per field).
	MaxFieldSection uint64
}

// appendSettings appends the SETTINGS frame we send: datagrams, extended
// CONNECT (server only: RFC 9220 section 3 gives it meaning from a
// server) and our field section limit. QPACK's dynamic table stays at its
// default size 0, so neither side needs QPACK encoder or decoder streams.
func appendSettings(b []byte, server bool) []byte {
	var p []byte
	p = quicvarint.Append(p, settingMaxFieldSectionSize)
	p = quicvarint.Append(p, maxFieldSection)
	p = quicvarint.Append(p, settingH3Datagram)
	p = quicvarint.Append(p, 1)
	if server {
		p = quicvarint.Append(p, settingEnableConnectProtocol)
		p = quicvarint.Append(p, 1)
	}
	return appendFrame(b, frameSettings, p)
}

// ParseSettings parses a SETTINGS frame's payload (RFC 9114 section
// 7.2.4): unknown identifiers are ignored; a duplicate, an HTTP/2 setting
// (0x02-0x05) or a boolean setting other than 0 or 1 is H3_SETTINGS_ERROR.
func ParseSettings(p []byte) (Settings, error) {
	var s Settings
	seen := map[uint64]bool{}
	for len(p) > 0 {
		id, n, err := quicvarint.Parse(p)
		if err != nil {
			return s, h3err(ErrCodeFrame, "SETTINGS: truncated identifier")
		}
		p = p[n:]
		v, n, err := quicvarint.Parse(p)
		if err != nil {
			return s, h3err(ErrCodeFrame, "SETTINGS: truncated value of %#x", id)
		}
		p = p[n:]
		if seen[id] {
			return s, h3err(ErrCodeSettings, "SETTINGS: duplicate identifier %#x", id)
		}
		seen[id] = true
		switch id {
		case 0x02, 0x03, 0x04, 0x05:
			return s, h3err(ErrCodeSettings, "SETTINGS: HTTP/2 setting %#x (RFC 9114 7.2.4.1)", id)
		case settingH3Datagram, settingEnableConnectProtocol:
			if v > 1 {
				return s, h3err(ErrCodeSettings, "SETTINGS: %#x = %d, want 0 or 1", id, v)
			}
			if id == settingH3Datagram {
				s.Datagram = v == 1
			} else {
				s.ExtendedConnect = v == 1
			}
		case settingMaxFieldSectionSize:
			s.MaxFieldSection = v
		}
	}
	return s, nil
}

// appendHeadersFrame appends a HEADERS frame holding fields, encoded with
// QPACK's static table and literals only (RFC 9204: Required Insert
// Count 0).
func appendHeadersFrame(b []byte, fields []qpack.HeaderField) []byte {
	var buf bytes.Buffer
	enc := qpack.NewEncoder(&buf)
	for _, f := range fields {
		_ = enc.WriteField(f) // a bytes.Buffer does not fail
	}
	return appendFrame(b, frameHeaders, buf.Bytes())
}

// fieldSection is a decoded HEADERS frame: the pseudo-header fields and
// the rest as an http.Header.
type fieldSection struct {
	pseudo map[string]string
	header http.Header
}

// parseFieldSection decodes a field section and checks it is a valid HTTP
// message's (RFC 9114 section 4.2, 4.3 and 10.3): lowercase names of
// token characters, values without CR, LF, NUL or other control
// characters (checked with golang.org/x/net/http/httpguts, as net/http
// checks HTTP/1 and HTTP/2 fields), pseudo-headers first and each once, no
// connection-specific fields, and a decoded size (the sum of each field's
// name and value lengths plus 32, RFC 9114 4.2.2) of at most
// maxFieldSection, the limit we announce. allowed lists the pseudo-headers
// valid here. A violation is H3_MESSAGE_ERROR, a stream error; a
// reference to QPACK's dynamic table, which we keep at 0 bytes, is
// QPACK_DECOMPRESSION_FAILED, a connection error (RFC 9204 2.2.3).
func parseFieldSection(p []byte, allowed ...string) (*fieldSection, error) {
	fs := &fieldSection{pseudo: map[string]string{}, header: http.Header{}}
	if len(p) > 0 && p[0] != 0 {
		// The first byte of the field section prefix is the encoded
		// Required Insert Count: anything but 0 needs a dynamic table
		// (RFC 9204 4.5.1.1).
		return nil, h3err(ErrCodeQPACKDecompressionFailed, "field section references the dynamic table, whose capacity is 0")
	}
	next := qpack.NewDecoder().Decode(p)
	regular := false
	size := 0
	for {
		f, err := next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, h3err(ErrCodeMessage, "QPACK: %v", err)
		}
		if size += len(f.Name) + len(f.Value) + 32; size > maxFieldSection {
			return nil, h3err(ErrCodeMessage, "field section larger than %d bytes (RFC 9114 4.2.2)", maxFieldSection)
		}
		if f.Name == "" || strings.ToLower(f.Name) != f.Name {
			return nil, h3err(ErrCodeMessage, "field name %q is not lowercase", f.Name)
		}
		if !httpguts.ValidHeaderFieldValue(f.Value) {
			return nil, h3err(ErrCodeMessage, "field %s: invalid character in its value (RFC 9114 10.3)", f.Name)
		}
		if f.IsPseudo() {
			if regular {
				return nil, h3err(ErrCodeMessage, "pseudo-header %s after a regular field", f.Name)
			}
			ok := false
			for _, a := range allowed {
				ok = ok || a == f.Name
			}
			if !ok {
				return nil, h3err(ErrCodeMessage, "pseudo-header %s not allowed here", f.Name)
			}
			if _, dup := fs.pseudo[f.Name]; dup {
				return nil, h3err(ErrCodeMessage, "pseudo-header %s twice", f.Name)
			}
			fs.pseudo[f.Name] = f.Value
			continue
		}
		regular = true
		if !httpguts.ValidHeaderFieldName(f.Name) {
			return nil, h3err(ErrCodeMessage, "field name %q is not a token (RFC 9114 4.2)", f.Name)
		}
		switch f.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return nil, h3err(ErrCodeMessage, "connection-specific field %s (RFC 9114 4.2)", f.Name)
		case "te":
			if f.Value != "trailers" {
				return nil, h3err(ErrCodeMessage, "te: %q (only \"trailers\" is allowed)", f.Value)
			}
		}
		fs.header.Add(f.Name, f.Value)
	}
	return fs, nil
}

// fieldSectionSize is a field section's size as RFC 9114 section 4.2.2
// counts it: each field's name and value lengths plus 32.
func fieldSectionSize(fields []qpack.HeaderField) int {
	n := 0
	for _, f := range fields {
		n += len(f.Name) + len(f.Value) + 32
	}
	return n
}

// headerFields lists h's fields with lowercase names, skipping those
// HTTP/3 forbids.
func headerFields(out []qpack.HeaderField, h http.Header) []qpack.HeaderField {
	for k, vs := range h {
		k = strings.ToLower(k)
		switch k {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host":
			continue
		}
		for _, v := range vs {
			out = append(out, qpack.HeaderField{Name: k, Value: v})
		}
	}
	return out
}

// readHeadersFrame reads the frames that open a message on a request
// stream up to its HEADERS and decodes them (allowed: the pseudo-headers
// valid in it), skipping frames of unknown types (RFC 9114 section 9).
// DATA first, or a frame that belongs on the control stream, is
// H3_FRAME_UNEXPECTED, a connection error.
func readHeadersFrame(r *bufio.Reader, allowed ...string) (*fieldSection, error) {
	for {
		typ, n, err := readFrameHeader(r)
		if err != nil {
			return nil, noEOF(err)
		}
		switch {
		case typ == frameHeaders:
			if n > maxFieldSection {
				// Larger than we announced (RFC 9114 4.2.2): a stream
				// error, which resets the stream unread; the connection
				// and its other streams go on.
				return nil, h3err(ErrCodeMessage, "HEADERS frame of %d bytes exceeds our %d-byte field section limit", n, maxFieldSection)
			}
			p, err := readPayload(r, typ, n, maxFieldSection)
			if err != nil {
				return nil, err
			}
			return parseFieldSection(p, allowed...)
		case typ == frameData:
			return nil, h3err(ErrCodeFrameUnexpected, "DATA before a message's HEADERS")
		case typ == frameSettings || typ == frameGoAway || isHTTP2Frame(typ):
			return nil, h3err(ErrCodeFrameUnexpected, "frame type %#x on a request stream", typ)
		default:
			if _, err := io.CopyN(io.Discard, r, int64(min(n, 1<<62))); err != nil {
				return nil, noEOF(err)
			}
		}
	}
}

// capsuleProtocol is the Capsule-Protocol header's value: the structured
// field boolean true (RFC 9297 section 3.4, RFC 8941 3.3.6).
const capsuleProtocol = "?1"

// statusOf parses a :status pseudo-header (three digits, RFC 9110 15).
func statusOf(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || len(s) != 3 || n < 100 {
		return 0, h3err(ErrCodeMessage, "bad :status %q", s)
	}
	return n, nil
}

var errClosedCritical = errors.New("masque: peer closed a critical stream")
