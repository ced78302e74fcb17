package acdtls

// Offsets and sizes of a DTLS 1.2 record carrying a ClientHello
// (RFC 6347 §4.1, §4.2.2, §4.2.1), as read by ocserv too (dtls.md §5).
const (
	recordHeaderLen    = 13 // type 1, version 2, epoch 2, sequence number 6, length 2
	handshakeHeaderLen = 12 // msg_type 1, length 3, message_seq 2, fragment_offset 3, fragment_length 3

	contentTypeHandshake   = 22 // RFC 5246 §6.2.1
	handshakeClientHello   = 1  // RFC 5246 §7.4
	dtlsVersionMajor       = 0xfe
	dtlsVersion10Minor     = 0xff // DTLS 1.0: openconnect's (GnuTLS's) first ClientHello record version
	dtlsVersion12Minor     = 0xfd // DTLS 1.2: pion's record version, and the hello version everywhere
	helloVersionRandomLen  = 2 + 32
	maxSessionIDLen        = 32                                                           // RFC 5246 §7.4.1.2: opaque SessionID<0..32>
	sessionIDLenOff        = recordHeaderLen + handshakeHeaderLen + helloVersionRandomLen // 59
	minClientHelloDatagram = sessionIDLenOff + 1
)

// ClientHelloSessionID returns the session_id of the ClientHello in the
// first record of a UDP payload: the App-ID in PSK-NEGOTIATE mode, the
// server-chosen session id in legacy mode (dtls.md §5). The length byte is
// at offset 59 and the id starts at offset 60 (13-byte record header,
// 12-byte handshake header, 2-byte version, 32-byte random).
//
// ok is false unless the first record is an epoch-0 handshake record with
// record version DTLS 1.0 (0xfeff, openconnect's first ClientHello) or DTLS
// 1.2 (0xfefd), its length fits the datagram, it holds a ClientHello whose
// first fragment (fragment_offset 0) contains the whole session_id, and the
// session_id is 1..32 bytes long. id aliases datagram: nothing is allocated,
// and the caller must copy it to keep it past the datagram buffer's reuse.
func ClientHelloSessionID(datagram []byte) (id []byte, ok bool) {
	body, ok := clientHelloBody(datagram)
	if !ok {
		return nil, false
	}
	id, _, ok = sessionIDAndRest(body)
	if !ok || len(id) == 0 {
		return nil, false
	}
	return id, true
}

// clientHelloOffers reports whether the ClientHello in datagram lists the
// cipher suite id. It is false when the list cannot be read (not a
// ClientHello, a cipher-suite list cut by fragmentation, ...).
func clientHelloOffers(datagram []byte, id uint16) bool {
	body, ok := clientHelloBody(datagram)
	if !ok {
		return false
	}
	_, rest, ok := sessionIDAndRest(body)
	if !ok || len(rest) < 1 {
		return false
	}
	// cookie<0..2^8-1> (RFC 6347 §4.2.1), then cipher_suites<2..2^16-2>.
	n := int(rest[0])
	rest = rest[1:]
	if n > len(rest) {
		return false
	}
	rest = rest[n:]
	if len(rest) < 2 {
		return false
	}
	n = int(rest[0])<<8 | int(rest[1])
	rest = rest[2:]
	if n%2 != 0 || n > len(rest) {
		return false
	}
	for i := 0; i < n; i += 2 {
		if uint16(rest[i])<<8|uint16(rest[i+1]) == id {
			return true
		}
	}
	return false
}

// clientHelloBody validates the record and handshake headers and returns
// the ClientHello body bytes present in this (first) fragment: from the
// client_version to the end of the fragment.
func clientHelloBody(d []byte) ([]byte, bool) {
	if len(d) < minClientHelloDatagram {
		return nil, false
	}
	if d[0] != contentTypeHandshake || d[1] != dtlsVersionMajor ||
		(d[2] != dtlsVersion10Minor && d[2] != dtlsVersion12Minor) {
		return nil, false
	}
	if d[3] != 0 || d[4] != 0 { // epoch: a ClientHello in clear is always epoch 0
		return nil, false
	}
	recLen := int(d[11])<<8 | int(d[12])
	if recLen > len(d)-recordHeaderLen || recLen < handshakeHeaderLen {
		return nil, false
	}
	h := d[recordHeaderLen : recordHeaderLen+recLen]
	if h[0] != handshakeClientHello {
		return nil, false
	}
	msgLen := int(h[1])<<16 | int(h[2])<<8 | int(h[3])
	fragOff := int(h[6])<<16 | int(h[7])<<8 | int(h[8])
	fragLen := int(h[9])<<16 | int(h[10])<<8 | int(h[11])
	if fragOff != 0 || fragLen > msgLen || fragLen > len(h)-handshakeHeaderLen {
		return nil, false
	}
	return h[handshakeHeaderLen : handshakeHeaderLen+fragLen], true
}

// sessionIDAndRest splits a ClientHello body after the version and random:
// the session_id (0..32 bytes) and what follows it.
func sessionIDAndRest(body []byte) (id, rest []byte, ok bool) {
	if len(body) < helloVersionRandomLen+1 {
		return nil, nil, false
	}
	n := int(body[helloVersionRandomLen])
	start := helloVersionRandomLen + 1
	if n > maxSessionIDLen || n > len(body)-start {
		return nil, nil, false
	}
	return body[start : start+n : start+n], body[start+n:], true
}
