package masque

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// Conn is the HTTP/3 layer of one QUIC connection that carries CONNECT-IP
// sessions (RFC 9114 with RFC 9220 extended CONNECT and RFC 9297 HTTP
// datagrams). It sends its SETTINGS on a control stream, reads the peer's
// control stream's SETTINGS, accepts and drains QPACK streams
// (our dynamic table is 0 bytes, so they carry nothing we need), refuses
// other unidirectional streams, and demultiplexes HTTP datagrams to
// sessions by quarter stream ID (RFC 9297 section 2.1) without queueing
// them: ServeDatagrams hands each one to its session's handler in the
// goroutine that reads it from the QUIC connection.
type Conn struct {
	qc     *quic.Conn
	server bool
	log    *slog.Logger

	settingsIn chan struct{} // closed once the peer's SETTINGS arrived
	peer       Settings      // valid once settingsIn is closed
	ctl        *quic.SendStream
	peerCtl    *bufio.Reader // the peer's control stream, read up to SETTINGS
	ctlMu      sync.Mutex
	// nextRequest is the stream ID after the last request accepted (GOAWAY).
	nextRequest atomic.Uint64
	uniSeen     [4]atomic.Bool

	mu       sync.Mutex
	sessions map[uint64]*Session // by quarter stream ID
	one      atomic.Pointer[Session]
}

// newConn starts the HTTP/3 layer on qc: it opens the control stream with
// our SETTINGS and accepts the peer's unidirectional streams in one
// goroutine (plus one per stream it keeps reading), which end with qc.
func newConn(qc *quic.Conn, server bool, log *slog.Logger) (*Conn, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !qc.ConnectionState().SupportsDatagrams.Local {
		return nil, errors.New("masque: the QUIC connection has datagrams disabled (quic.Config.EnableDatagrams)")
	}
	c := &Conn{qc: qc, server: server, log: log, settingsIn: make(chan struct{}), sessions: map[uint64]*Session{}}
	ctl, err := qc.OpenUniStream()
	if err != nil {
		return nil, fmt.Errorf("masque: open control stream: %w", err)
	}
	b := quicvarint.Append(nil, streamControl)
	if _, err := ctl.Write(appendSettings(b, server)); err != nil {
		return nil, fmt.Errorf("masque: send SETTINGS: %w", err)
	}
	// The control stream stays open for the connection's life (closing it
	// is H3_CLOSED_CRITICAL_STREAM); GOAWAY is written to it later.
	c.ctl = ctl
	go c.acceptUni()
	return c, nil
}

// QUIC returns the QUIC connection.
func (c *Conn) QUIC() *quic.Conn { return c.qc }

// fail closes the connection with an HTTP/3 error.
func (c *Conn) fail(err error) {
	var he *Error
	if !errors.As(err, &he) {
		he = &Error{Code: ErrCodeGeneralProtocol, Reason: err.Error()}
	}
	if c.qc.Context().Err() == nil {
		c.log.Debug("masque: closing the connection on a protocol error", "code", uint64(he.Code), "err", he.Reason)
	}
	_ = c.qc.CloseWithError(he.Code, he.Reason)
}

// uniTypeWait bounds the wait for a new unidirectional stream's type and,
// on the control stream, the SETTINGS frame: a peer sends both with the
// stream's first bytes, and until they arrive no other stream is accepted.
const uniTypeWait = 10 * time.Second

// acceptUni accepts the peer's unidirectional streams until the
// connection ends: the only goroutine the HTTP/3 layer keeps per
// connection. It reads the control stream up to SETTINGS and then only
// watches for its end (SetReceiveFinalSizeCallback): what may follow is
// GOAWAY, about new requests, which neither side makes once a session is
// open, and frames of unknown types, which RFC 9114 section 9 tells us to
// ignore; the stream's flow-control window bounds what waits unread.
func (c *Conn) acceptUni() {
	for {
		str, err := c.qc.AcceptUniStream(c.qc.Context())
		if err != nil {
			return
		}
		if err := c.handleUni(str); err != nil {
			c.fail(err)
			return
		}
	}
}

// handleUni reads a unidirectional stream's type and serves it (RFC 9114
// section 6.2).
func (c *Conn) handleUni(str *quic.ReceiveStream) error {
	_ = str.SetReadDeadline(time.Now().Add(uniTypeWait))
	r := bufio.NewReaderSize(str, 64)
	typ, err := quicvarint.Read(r)
	if err != nil {
		str.CancelRead(quic.StreamErrorCode(ErrCodeStreamCreation))
		return nil // reset, or too slow: no stream of consequence
	}
	switch typ {
	case streamControl, streamQPACKEncoder, streamQPACKDecoder:
		if c.uniSeen[typ].Swap(true) {
			return h3err(ErrCodeStreamCreation, "a second stream of type %#x", typ)
		}
	case streamPush:
		// A client never pushes; a server may push only once the client
		// raised MAX_PUSH_ID, which we never send.
		if c.server {
			return h3err(ErrCodeStreamCreation, "a push stream from a client")
		}
		return h3err(ErrCodeID, "a push stream though MAX_PUSH_ID was never sent")
	default:
		// Reserved and unknown types: abort reading (RFC 9114 6.2).
		str.CancelRead(quic.StreamErrorCode(ErrCodeStreamCreation))
		return nil
	}
	if typ != streamControl {
		// A QPACK stream: with our 0-byte dynamic table the peer's
		// instructions need no action (RFC 9204 4.2). Drain it; an end
		// before the connection's is a closed critical stream.
		_ = str.SetReadDeadline(time.Time{})
		go func() {
			var err error
			if typ == streamQPACKEncoder {
				err = readEncoderStream(r)
			} else {
				_, err = io.Copy(io.Discard, r)
			}
			c.criticalEnded(err)
		}()
		return nil
	}
	if err := c.readSettings(r); err != nil {
		if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
			return h3err(ErrCodeMissingSettings, "no SETTINGS within %v", uniTypeWait)
		}
		return err
	}
	_ = str.SetReadDeadline(time.Time{})
	str.SetReceiveFinalSizeCallback(func(int64) {
		// Called from quic-go's event loop, which must not block.
		go c.criticalEnded(nil)
	})
	return nil
}

// criticalEnded handles the end of a critical stream: unless the
// connection itself is ending, that is H3_CLOSED_CRITICAL_STREAM.
func (c *Conn) criticalEnded(err error) {
	if c.qc.Context().Err() != nil {
		return
	}
	var he *Error
	if errors.As(err, &he) {
		c.fail(he)
		return
	}
	c.fail(&Error{Code: ErrCodeClosedCriticalStream, Reason: errClosedCritical.Error()})
}

// readSettings reads the control stream's first frame, which must be
// SETTINGS (RFC 9114 section 6.2.1).
func (c *Conn) readSettings(r *bufio.Reader) error {
	typ, n, err := readFrameHeader(r)
	if err != nil {
		return noEOF(err)
	}
	if typ != frameSettings {
		return h3err(ErrCodeMissingSettings, "control stream starts with frame type %#x, not SETTINGS", typ)
	}
	p, err := readPayload(r, typ, n, maxControlFrame)
	if err != nil {
		return err
	}
	if c.peer, err = ParseSettings(p); err != nil {
		return err
	}
	if c.peer.Datagram && !c.qc.ConnectionState().SupportsDatagrams.Remote {
		return h3err(ErrCodeSettings, "SETTINGS_H3_DATAGRAM = 1 without the QUIC max_datagram_frame_size transport parameter (RFC 9297 2.1.1)")
	}
	c.peerCtl = r
	close(c.settingsIn)
	return nil
}

// readEncoderStream reads the peer's QPACK encoder stream until it ends.
// Our SETTINGS_QPACK_MAX_TABLE_CAPACITY is 0, so the only valid
// instruction is Set Dynamic Table Capacity to 0 (the byte 0x20, RFC 9204
// 4.3.1); any other, a capacity above 0 or an insertion, is
// QPACK_ENCODER_STREAM_ERROR (RFC 9204 4.3.1 and 6).
func readEncoderStream(r *bufio.Reader) error {
	for {
		b, err := r.ReadByte()
		if err != nil {
			return err
		}
		if b != 0x20 {
			return h3err(ErrCodeQPACKEncoderStream, "encoder instruction %#x, though our dynamic table capacity is 0", b)
		}
	}
}

// PeerSettings waits for the peer's SETTINGS (RFC 9114 section 7.2.4),
// until ctx or the connection ends.
func (c *Conn) PeerSettings(ctx context.Context) (Settings, error) {
	return c.awaitSettings(ctx)
}

// awaitSettings waits for the peer's SETTINGS.
func (c *Conn) awaitSettings(ctx context.Context) (Settings, error) {
	select {
	case <-c.settingsIn:
		return c.peer, nil
	case <-ctx.Done():
		return Settings{}, ctx.Err()
	case <-c.qc.Context().Done():
		return Settings{}, context.Cause(c.qc.Context())
	}
}

func (c *Conn) addSession(s *Session) {
	c.mu.Lock()
	c.sessions[s.qsid] = s
	if len(c.sessions) == 1 {
		c.one.Store(s)
	} else {
		c.one.Store(nil)
	}
	c.mu.Unlock()
}

func (c *Conn) removeSession(s *Session) {
	c.mu.Lock()
	if c.sessions[s.qsid] == s {
		delete(c.sessions, s.qsid)
	}
	c.one.Store(nil)
	for _, o := range c.sessions {
		if len(c.sessions) == 1 {
			c.one.Store(o)
		}
	}
	c.mu.Unlock()
}

func (c *Conn) session(qsid uint64) *Session {
	if s := c.one.Load(); s != nil && s.qsid == qsid {
		return s
	}
	c.mu.Lock()
	s := c.sessions[qsid]
	c.mu.Unlock()
	return s
}

// maxQuarterStreamID: a quarter stream ID above 2^60-1 cannot belong to a
// client-initiated bidirectional stream (RFC 9297 section 2.1).
const maxQuarterStreamID = 1<<60 - 1

// ServeDatagrams reads HTTP datagrams from the QUIC connection and hands
// each to its session's handler, in this goroutine, until the connection
// ends; it returns the connection's error. A datagram for no open session,
// with a context ID other than 0 (RFC 9484 section 6), or before the
// session set a handler is dropped; a malformed one closes the connection
// with H3_DATAGRAM_ERROR (RFC 9297 section 2.1).
func (c *Conn) ServeDatagrams() error {
	ctx := c.qc.Context()
	for {
		b, err := c.qc.ReceiveDatagram(ctx)
		if err != nil {
			if cause := context.Cause(ctx); cause != nil {
				err = cause
			}
			return err
		}
		qsid, n, err := quicvarint.Parse(b)
		if err != nil || qsid > maxQuarterStreamID {
			c.fail(h3err(ErrCodeDatagram, "malformed quarter stream ID"))
			continue
		}
		s := c.session(qsid)
		if s == nil {
			continue
		}
		s.handleDatagram(b[n:])
	}
}
