package acdtls

import (
	"errors"

	"github.com/underpass/underpass/internal/core/cstp"
)

// Framing inside DTLS (dtls.md §6): one DTLS record is one message, a type
// byte followed by the payload, with no length or magic (the record
// delimits it). The type codes are CSTP's (cstp.Data, cstp.DPDReq,
// cstp.DPDResp, cstp.Keepalive, ...): openconnect uses the same AC_PKT_*
// values on both channels.

// RecordHeaderLen is the size of the framing in front of a payload.
const RecordHeaderLen = 1

// ErrEmptyRecord is ParseRecord's error for a record without a type byte.
var ErrEmptyRecord = errors.New("acdtls: empty DTLS record")

// AppendRecord appends one DTLS message, type byte then payload, to dst.
// Write the result as one record (one pion Conn.Write). Over DTLS the
// gateway sends cstp.Data, cstp.DPDReq, cstp.DPDResp and cstp.Keepalive:
// openconnect ignores cstp.Disconnect and cstp.Terminate there (send them
// over CSTP, see OverDTLS), and cstp.Compressed needs a negotiated
// X-DTLS-Content-Encoding, which this gateway never sends.
func AppendRecord(dst []byte, t cstp.Type, payload []byte) []byte {
	return append(append(dst, byte(t)), payload...)
}

// ParseRecord splits a decrypted DTLS record into its type and payload;
// payload aliases rec. Unknown types are returned as they are, for the
// caller to ignore; only an empty record is an error.
//
// A cstp.DPDReq must be answered with a cstp.DPDResp carrying the same
// payload, whatever its length: right after every handshake openconnect
// pads one to the tunnel MTU as its MTU probe (dtls.md §7) and settles on
// 576 (1280 with IPv6) when the echo does not come back.
func ParseRecord(rec []byte) (t cstp.Type, payload []byte, err error) {
	if len(rec) < RecordHeaderLen {
		return 0, nil, ErrEmptyRecord
	}
	return cstp.Type(rec[0]), rec[RecordHeaderLen:], nil
}

// OverDTLS reports whether the gateway should send a message of type t over
// DTLS (dtls.md §6): DATA, DPD request/response and keepalive. DISCONNECT and
// TERMINATE go over CSTP, where the client acts on them; COMPRESSED is never
// sent.
func OverDTLS(t cstp.Type) bool {
	switch t {
	case cstp.Data, cstp.DPDReq, cstp.DPDResp, cstp.Keepalive:
		return true
	}
	return false
}
