// Package cstp implements the framing of the AnyConnect tunnel protocol
// (CSTP) that openconnect speaks over TLS.
//
// A frame is an 8-byte header — 'S' 'T' 'F' 0x01, the payload length as a
// big-endian uint16, the frame type, and a zero byte — followed by the
// payload. openconnect reads one TLS record per frame, so a writer must put
// every frame in a TLS record of its own; the reading side (the gateway
// reading the client) treats the connection as a plain byte stream.
package cstp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// HeaderLen is the size of a frame header.
const HeaderLen = 8

// MaxRecordPayload is the largest payload whose frame still fits one TLS
// record: a TLS record carries at most 16384 plaintext bytes (RFC 8446 §5.1),
// and openconnect needs the whole frame, header included, in one record.
const MaxRecordPayload = 16384 - HeaderLen

// maxLen is the largest payload the 16-bit length field can describe.
const maxLen = 0xffff

// Type is a frame type.
type Type byte

// Frame types.
const (
	Data       Type = 0x00 // one IP packet
	DPDReq     Type = 0x03 // dead-peer-detection request; answer with DPDResp and the same payload
	DPDResp    Type = 0x04
	Disconnect Type = 0x05 // reason byte + text; the session ends
	Keepalive  Type = 0x07 // no reply
	Compressed Type = 0x08 // never negotiated by this gateway
	Terminate  Type = 0x09 // the server ends the session
)

// ReasonUserDisconnect is the reason byte openconnect sends in DISCONNECT
// when the user logs off.
const ReasonUserDisconnect = 0xb0

// Reason bytes the gateway sends in DISCONNECT. openconnect prints the
// byte and the text after it ("Received server disconnect: %02x '%s'",
// cstp.c) and exits either way; tunnel.Client tells them apart.
const (
	// ReasonSessionEnded: the session is over; sign in again.
	ReasonSessionEnded = 0x00
	// ReasonTakenOver: another connection took the session over; do not
	// reconnect.
	ReasonTakenOver = 0x01
)

func (t Type) String() string {
	switch t {
	case Data:
		return "DATA"
	case DPDReq:
		return "DPD-REQ"
	case DPDResp:
		return "DPD-RESP"
	case Disconnect:
		return "DISCONNECT"
	case Keepalive:
		return "KEEPALIVE"
	case Compressed:
		return "COMPRESSED"
	case Terminate:
		return "TERMINATE"
	}
	return fmt.Sprintf("TYPE-%#02x", byte(t))
}

// Errors returned (wrapped in *FrameError) by Reader.Next.
var (
	ErrBadMagic  = errors.New("cstp: bad frame magic")
	ErrTooLarge  = errors.New("cstp: frame too large")
	ErrTruncated = errors.New("cstp: truncated frame")
)

// FrameError describes a malformed frame.
type FrameError struct {
	Err    error  // ErrBadMagic, ErrTooLarge or ErrTruncated
	Header []byte // the header bytes read, for diagnostics
	Len    int    // the declared payload length, when known
	cause  error  // underlying read error, for ErrTruncated
}

func (e *FrameError) Error() string {
	switch {
	case errors.Is(e.Err, ErrTooLarge):
		return fmt.Sprintf("%v: payload length %d", e.Err, e.Len)
	case e.cause != nil:
		return fmt.Sprintf("%v: %v", e.Err, e.cause)
	}
	return fmt.Sprintf("%v (header % x)", e.Err, e.Header)
}

// Unwrap makes errors.Is work for both the kind and the read error.
func (e *FrameError) Unwrap() []error {
	if e.cause != nil {
		return []error{e.Err, e.cause}
	}
	return []error{e.Err}
}

// PutHeader writes a frame header for a payload of payloadLen bytes into
// b[:HeaderLen]. It panics if payloadLen does not fit the length field.
func PutHeader(b []byte, t Type, payloadLen int) {
	if payloadLen < 0 || payloadLen > maxLen {
		panic(fmt.Sprintf("cstp: payload length %d out of range", payloadLen))
	}
	_ = b[HeaderLen-1]
	b[0], b[1], b[2], b[3] = 'S', 'T', 'F', 1
	b[4], b[5] = byte(payloadLen>>8), byte(payloadLen)
	b[6], b[7] = byte(t), 0
}

// AppendFrame appends a whole frame to dst.
func AppendFrame(dst []byte, t Type, payload []byte) []byte {
	var h [HeaderLen]byte
	PutHeader(h[:], t, len(payload))
	return append(append(dst, h[:]...), payload...)
}

// DisconnectPayload builds a DISCONNECT payload: a reason byte and a text.
func DisconnectPayload(reason byte, msg string) []byte {
	return append([]byte{reason}, msg...)
}

// readerBufSize is the Reader's buffer: one maximum-size TLS record's worth
// of frames (and then some), so a full record is handed over in one piece.
const readerBufSize = 32 << 10

// Reader parses frames from a byte stream.
type Reader struct {
	br         *bufio.Reader
	maxPayload int
	buf        []byte // payload storage, reused; grows up to maxPayload
}

// NewReader returns a Reader that rejects payloads longer than maxPayload
// (capped at the 16-bit field's 65535). If r is a *bufio.Reader it is used
// as is, so bytes already buffered by an HTTP server are not lost.
func NewReader(r io.Reader, maxPayload int) *Reader {
	if maxPayload <= 0 || maxPayload > maxLen {
		maxPayload = maxLen
	}
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, readerBufSize)
	}
	return &Reader{br: br, maxPayload: maxPayload}
}

// Next returns the next frame. The payload aliases an internal buffer and
// is valid only until the next call. A clean end of stream between frames
// returns io.EOF; anything else malformed returns a *FrameError.
func (r *Reader) Next() (Type, []byte, error) {
	h, err := r.br.Peek(HeaderLen)
	if err != nil {
		if len(h) == 0 && errors.Is(err, io.EOF) {
			return 0, nil, io.EOF
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, &FrameError{Err: ErrTruncated, Header: append([]byte(nil), h...), cause: err}
	}
	if h[0] != 'S' || h[1] != 'T' || h[2] != 'F' || h[3] != 1 {
		return 0, nil, &FrameError{Err: ErrBadMagic, Header: append([]byte(nil), h...)}
	}
	n := int(h[4])<<8 | int(h[5])
	t := Type(h[6])
	if n > r.maxPayload {
		return 0, nil, &FrameError{Err: ErrTooLarge, Header: append([]byte(nil), h...), Len: n}
	}
	if _, err := r.br.Discard(HeaderLen); err != nil {
		return 0, nil, &FrameError{Err: ErrTruncated, cause: err}
	}
	if cap(r.buf) < n {
		r.buf = make([]byte, n, max(n, 2048)) // 2 KiB: a typical packet, so small frames never reallocate
	}
	p := r.buf[:n]
	if _, err := io.ReadFull(r.br, p); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, &FrameError{Err: ErrTruncated, Len: n, cause: err}
	}
	return t, p, nil
}
