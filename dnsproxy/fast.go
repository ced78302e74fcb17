package dnsproxy

import "encoding/binary"

// wireQuery is what the fast path needs from a plain query, parsed straight
// from the wire without allocating.
type wireQuery struct {
	id            uint16
	rd, cd        bool
	edns, do      bool
	udpSize       uint16
	nameEnd       int // the question name is req[headerLen:nameEnd]
	qtype, qclass uint16
	keyLen        int
	key           [maxKeyLen]byte
}

// parseWireQuery accepts only the common shape of a query: QUERY opcode,
// one question with an uncompressed name, no answer or authority records,
// at most one additional record which is an EDNS version 0 OPT ending the
// message. Anything else returns false and takes the slow path, which
// parses and validates fully.
func parseWireQuery(req []byte, q *wireQuery) bool {
	be := binary.BigEndian
	if len(req) < headerLen+5 {
		return false
	}
	if req[2]&(flagQR|0x78) != 0 { // 0x78 masks the opcode: QUERY is 0
		return false
	}
	if be.Uint16(req[4:]) != 1 || be.Uint16(req[6:]) != 0 || be.Uint16(req[8:]) != 0 {
		return false
	}
	ar := be.Uint16(req[10:])
	if ar > 1 {
		return false
	}
	off, n := headerLen, 0
	for {
		if off >= len(req) {
			return false
		}
		l := int(req[off])
		if l == 0 {
			break
		}
		if l > 63 || off+1+l >= len(req) || n+1+l >= 255 { // 63: max label, 255: max name
			return false
		}
		for _, b := range req[off : off+1+l] {
			if 'A' <= b && b <= 'Z' {
				b += 'a' - 'A'
			}
			q.key[n] = b
			n++
		}
		off += 1 + l
	}
	q.key[n] = 0
	n++
	off++
	q.nameEnd = off
	if off+4 > len(req) {
		return false
	}
	q.qtype, q.qclass = be.Uint16(req[off:]), be.Uint16(req[off+2:])
	off += 4
	q.edns, q.do, q.udpSize = false, false, 0
	if ar == 1 {
		// OPT: root name(1) type(2) size(2) ext-rcode(1) version(1) flags(2) rdlen(2).
		if off+11 > len(req) || req[off] != 0 || be.Uint16(req[off+1:]) != typeOPT || req[off+6] != 0 {
			return false
		}
		q.edns = true
		q.udpSize = be.Uint16(req[off+3:])
		q.do = be.Uint16(req[off+7:])&ednsDO != 0
		off += 11 + int(be.Uint16(req[off+9:]))
	}
	if off != len(req) {
		return false
	}
	q.id = be.Uint16(req)
	q.rd = req[2]&flagRD != 0
	q.cd = req[3]&flagCD != 0
	q.keyLen = len(appendKeyTail(q.key[:n], q.qtype, q.qclass, q.do, q.cd)) // fits: q.key has room for the tail
	return true
}

// appendKeyTail appends a cache key's tail (type, class, DO/CD flags) to
// key, which holds the lower-case wire name.
func appendKeyTail(key []byte, qtype, qclass uint16, do, cd bool) []byte {
	var f byte
	if do {
		f |= keyDO
	}
	if cd {
		f |= keyCD
	}
	return append(key, byte(qtype>>8), byte(qtype), byte(qclass>>8), byte(qclass), f)
}

// responseLimit is the largest answer a client may receive.
func responseLimit(t Transport, edns bool, udpSize uint16) int {
	if t == TCP {
		return 0xffff // the TCP length prefix's maximum
	}
	if !edns || udpSize < 512 { // RFC 6891 §6.2.3: sizes below 512 mean 512
		return 512
	}
	return min(int(udpSize), maxUDPSize)
}

// fastAnswer answers a plain query from the cache, appending to dst. It
// reports false when the slow path must handle the query (not plain, not
// cached, or too large for the client).
func (s *Server) fastAnswer(dst, req []byte, t Transport, q *wireQuery) ([]byte, bool) {
	if s.cache == nil || !parseWireQuery(req, q) {
		return dst, false
	}
	now := s.now()
	e := s.cache.get(q.key[:q.keyLen], now)
	if e == nil {
		return dst, false
	}
	out := e.render(dst, q.id, q.rd, q.cd, req[headerLen:q.nameEnd], q.edns, q.do, now)
	if len(out)-len(dst) > responseLimit(t, q.edns, q.udpSize) {
		return dst, false
	}
	return out, true
}
