package masque

import (
	"bufio"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// Session is one CONNECT-IP request stream (RFC 9484): capsules on the
// stream, IP packets as HTTP datagrams with context ID 0.
type Session struct {
	conn *Conn
	str  *quic.Stream
	qsid uint64
	body bodyReader

	handler atomic.Pointer[func([]byte)]

	wmu    sync.Mutex // datagram writes
	wbuf   []byte
	prefix int // length of the quarter stream ID and context ID in wbuf

	smu sync.Mutex // stream writes

	closeOnce sync.Once
}

func newSession(c *Conn, str *quic.Stream, r *bufio.Reader) *Session {
	s := &Session{conn: c, str: str, qsid: uint64(str.StreamID()) / 4}
	s.body.r = r
	// Quarter stream ID, then context ID 0 (RFC 9484 section 6).
	s.wbuf = quicvarint.Append(make([]byte, 0, 2048), s.qsid)
	s.wbuf = append(s.wbuf, 0)
	s.prefix = len(s.wbuf)
	c.addSession(s)
	return s
}

// Conn returns the HTTP/3 connection the session runs on.
func (s *Session) Conn() *Conn { return s.conn }

// OnPacket sets the handler of the session's IP packets. It runs in
// ServeDatagrams' goroutine; p is valid only during the call.
func (s *Session) OnPacket(h func(p []byte)) { s.handler.Store(&h) }

func (s *Session) handleDatagram(b []byte) {
	p, ok := ipPayload(b)
	if !ok {
		return
	}
	if h := s.handler.Load(); h != nil {
		(*h)(p)
	}
}

// ipPayload returns the IP packet of an HTTP datagram's payload (after the
// quarter stream ID): context ID 0 carries IP packets; others are not ours
// (RFC 9484 section 6). The context ID is a variable-length integer that
// need not be minimal (RFC 9000 section 16), so 0x40 0x00 is 0 too.
func ipPayload(b []byte) ([]byte, bool) {
	if len(b) > 0 && b[0] == 0 {
		return b[1:], true // the usual 1-byte encoding
	}
	id, n, err := quicvarint.Parse(b)
	if err != nil || id != 0 {
		return nil, false
	}
	return b[n:], true
}

// IPPayload returns the IP packet of a DATAGRAM capsule's payload (RFC
// 9297 section 3.5: the HTTP datagram payload, a context ID and then, for
// context ID 0, the packet); ok is false for another context ID or a
// truncated one.
func IPPayload(p []byte) (packet []byte, ok bool) { return ipPayload(p) }

// WritePacket sends p as an HTTP datagram. quic-go copies p, so the caller
// may reuse it; while quic-go's send queue is full, WritePacket waits. A
// packet too big for a datagram returns a *quic.DatagramTooLargeError.
func (s *Session) WritePacket(p []byte) error {
	s.wmu.Lock()
	s.wbuf = append(s.wbuf[:s.prefix], p...)
	err := s.conn.qc.SendDatagram(s.wbuf)
	s.wmu.Unlock()
	return err
}

// WriteCapsules writes capsules (a concatenation of AppendCapsule's
// results) in one DATA frame.
func (s *Session) WriteCapsules(b []byte) error {
	s.smu.Lock()
	defer s.smu.Unlock()
	_, err := s.str.Write(appendFrame(nil, frameData, b))
	return err
}

// ReadCapsule reads the next capsule from the stream (see ReadCapsule for
// want, the payload and the errors). It must not be called concurrently.
// The end of the stream is io.EOF.
func (s *Session) ReadCapsule(want func(uint64) bool) (uint64, []byte, error) {
	return ReadCapsule(&s.body, want)
}

// Abort ends the session with an HTTP/3 stream error: both directions of
// the stream are reset with code (e.g. ErrCodeMessage for a malformed
// capsule, RFC 9297 section 3.3), and its datagrams stop.
func (s *Session) Abort(code quic.ApplicationErrorCode) {
	s.closeOnce.Do(func() {
		s.conn.removeSession(s)
		s.str.CancelRead(quic.StreamErrorCode(code))
		s.smu.Lock()
		s.str.CancelWrite(quic.StreamErrorCode(code))
		s.smu.Unlock()
	})
}

// Close ends the session: the stream's both directions and its datagrams.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		s.conn.removeSession(s)
		s.str.CancelRead(quic.StreamErrorCode(ErrCodeNoError))
		s.smu.Lock()
		_ = s.str.Close()
		s.smu.Unlock()
	})
	return nil
}

// bodyReader reads the content of the message on a request stream: the
// payloads of its DATA frames. Frames of unknown types are skipped (RFC
// 9114 section 9); trailers (a HEADERS frame) end the content.
type bodyReader struct {
	r    *bufio.Reader
	left uint64 // of the current DATA frame
	err  error
}

func (b *bodyReader) next() error {
	for b.left == 0 {
		if b.err != nil {
			return b.err
		}
		typ, n, err := readFrameHeader(b.r)
		if err != nil {
			b.err = err
			return err
		}
		switch {
		case typ == frameData:
			b.left = n
		case typ == frameHeaders:
			// Trailers: nothing may follow them (RFC 9114 4.1).
			if _, err := readPayload(b.r, typ, n, maxFieldSection); err != nil {
				b.err = err
				return err
			}
			b.err = io.EOF
		case typ == frameSettings || typ == frameGoAway || isHTTP2Frame(typ):
			b.err = h3err(ErrCodeFrameUnexpected, "frame type %#x on a request stream", typ)
		default:
			if _, err := io.CopyN(io.Discard, b.r, int64(min(n, 1<<62))); err != nil {
				b.err = noEOF(err)
			}
		}
	}
	return nil
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if err := b.next(); err != nil {
		return 0, err
	}
	if uint64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= uint64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF // inside a DATA frame
	}
	return n, err
}

func (b *bodyReader) ReadByte() (byte, error) {
	if err := b.next(); err != nil {
		return 0, err
	}
	c, err := b.r.ReadByte()
	if err != nil {
		return 0, noEOF(err)
	}
	b.left--
	return c, nil
}

// SetReadDeadline sets the deadline of ReadCapsule; a zero t clears it.
// A read that timed out leaves the stream mid-capsule: only WatchEnd may
// follow.
func (s *Session) SetReadDeadline(t time.Time) { _ = s.str.SetReadDeadline(t) }

// WatchEnd calls f once when the peer ends the stream (FIN or reset),
// for a caller that stops reading capsules. f runs in its own goroutine.
func (s *Session) WatchEnd(f func()) {
	s.str.SetReceiveFinalSizeCallback(func(int64) { go f() })
}
