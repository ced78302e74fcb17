package masque

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// NewServerConn starts the server's HTTP/3 layer on qc, a connection with
// the ALPN "h3" and datagrams enabled: it announces extended CONNECT and
// HTTP datagrams in its SETTINGS. log receives debug lines about the
// peer's protocol errors; nil discards them.
func NewServerConn(qc *quic.Conn, log *slog.Logger) (*Conn, error) {
	return newConn(qc, true, log)
}

// IncomingRequest is a request read from a client's request stream. Its
// stream gets exactly one answer: Accept or Refuse.
type IncomingRequest struct {
	Method    string // :method
	Protocol  string // :protocol (extended CONNECT, RFC 9220); "" without
	Scheme    string
	Authority string
	Path      string
	Header    http.Header

	conn *Conn
	str  *quic.Stream
	r    *bufio.Reader
}

// requestWait bounds the wait for a request's HEADERS once its stream is
// open: a client sends them at once.
const requestWait = 10 * time.Second

// AcceptRequest accepts the next request stream and reads its HEADERS
// (skipping frames of unknown types, RFC 9114 section 9). A malformed
// request is answered (a stream error: H3_MESSAGE_ERROR, or a 400 for a
// field section that decodes but is not a valid request) and the next one
// awaited; a frame that may not open a request stream closes the
// connection (H3_FRAME_UNEXPECTED). It returns an error when ctx or the
// connection ends; ctx's deadline also bounds the wait for HEADERS.
func (c *Conn) AcceptRequest(ctx context.Context) (*IncomingRequest, error) {
	for {
		str, err := c.qc.AcceptStream(ctx)
		if err != nil {
			return nil, err
		}
		c.nextRequest.Store(uint64(str.StreamID()) + 4)
		wait := time.Now().Add(requestWait)
		if d, ok := ctx.Deadline(); ok && d.Before(wait) {
			wait = d
		}
		req, err := c.readRequest(str, wait)
		if err == nil {
			return req, nil
		}
		var he *Error
		if !errors.As(err, &he) {
			str.CancelRead(quic.StreamErrorCode(ErrCodeRequestIncomplete))
			str.CancelWrite(quic.StreamErrorCode(ErrCodeRequestIncomplete))
			continue
		}
		if he.Code != ErrCodeMessage {
			c.fail(he)
			return nil, he
		}
		c.log.Debug("masque: malformed request", "err", he.Reason)
		str.CancelRead(quic.StreamErrorCode(ErrCodeMessage))
		str.CancelWrite(quic.StreamErrorCode(ErrCodeMessage))
	}
}

func (c *Conn) readRequest(str *quic.Stream, wait time.Time) (*IncomingRequest, error) {
	_ = str.SetReadDeadline(wait)
	r := bufio.NewReaderSize(str, 4096)
	fs, err := readHeadersFrame(r, ":method", ":protocol", ":scheme", ":authority", ":path")
	if err != nil {
		return nil, err
	}
	_ = str.SetReadDeadline(time.Time{})
	req := &IncomingRequest{
		Method: fs.pseudo[":method"], Protocol: fs.pseudo[":protocol"], Scheme: fs.pseudo[":scheme"],
		Authority: fs.pseudo[":authority"], Path: fs.pseudo[":path"], Header: fs.header,
		conn: c, str: str, r: r,
	}
	if req.Method == "" {
		return nil, h3err(ErrCodeMessage, "request without :method")
	}
	if req.Protocol != "" && req.Method != http.MethodConnect {
		return nil, h3err(ErrCodeMessage, ":protocol on a %s request (RFC 9220 3)", req.Method)
	}
	return req, nil
}

// RequestError is why a request is not a CONNECT-IP request this server
// serves, with the status to refuse it with.
type RequestError struct {
	Status int
	Reason string
}

func (e *RequestError) Error() string { return "masque: " + e.Reason }

// CheckConnectIP validates r as a CONNECT-IP request for path (RFC 9484
// section 4 with no template variables, RFC 9220 section 3, RFC 9297
// section 3.4): 405 for another method, 501 for another :protocol or
// none, 400 for a missing :scheme, :authority or Capsule-Protocol, or a
// :path other than path (with a query: template variables, which IP flow
// forwarding would need and this server does not offer).
func CheckConnectIP(r *IncomingRequest, path string) error {
	switch {
	case r.Method != http.MethodConnect:
		return &RequestError{http.StatusMethodNotAllowed, fmt.Sprintf("method %s, want CONNECT", r.Method)}
	case r.Protocol != ProtocolConnectIP:
		return &RequestError{http.StatusNotImplemented, fmt.Sprintf(":protocol %q, want %q", r.Protocol, ProtocolConnectIP)}
	case r.Scheme != "https":
		return &RequestError{http.StatusBadRequest, fmt.Sprintf(":scheme %q, want https", r.Scheme)}
	case r.Authority == "":
		return &RequestError{http.StatusBadRequest, "no :authority"}
	case r.Path != path:
		return &RequestError{http.StatusBadRequest, fmt.Sprintf(":path %q, want %q (no IP flow forwarding)", r.Path, path)}
	}
	if !capsuleProtocolTrue(r.Header.Values("Capsule-Protocol")) {
		return &RequestError{http.StatusBadRequest, "no Capsule-Protocol: ?1 (RFC 9297 3.4)"}
	}
	return nil
}

// capsuleProtocolTrue reads the Capsule-Protocol structured field: an
// item that is the boolean true, parameters allowed and ignored (RFC 9297
// section 3.4, RFC 8941 section 3.3.6).
func capsuleProtocolTrue(vs []string) bool {
	if len(vs) != 1 {
		return false
	}
	v := strings.TrimSpace(vs[0])
	if i := strings.IndexByte(v, ';'); i >= 0 {
		v = v[:i]
	}
	return v == "?1"
}

// Stream returns the request's QUIC stream.
func (r *IncomingRequest) Stream() *quic.Stream { return r.str }

// Refuse answers with status, the fields of h and body as the content,
// and ends the stream.
func (r *IncomingRequest) Refuse(status int, h http.Header, body string) error {
	b := appendHeadersFrame(nil, responseFields(status, h))
	if body != "" {
		b = appendFrame(b, frameData, []byte(body))
	}
	_, err := r.str.Write(b)
	r.str.CancelRead(quic.StreamErrorCode(ErrCodeNoError))
	if cerr := r.str.Close(); err == nil {
		err = cerr
	}
	return err
}

// Accept answers 200 with the fields of h and Capsule-Protocol, and
// returns the session on the stream.
func (r *IncomingRequest) Accept(h http.Header) (*Session, error) {
	fields := responseFields(http.StatusOK, h)
	fields = append(fields, qpack.HeaderField{Name: "capsule-protocol", Value: capsuleProtocol})
	s := newSession(r.conn, r.str, r.r)
	if _, err := r.str.Write(appendHeadersFrame(nil, fields)); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

func responseFields(status int, h http.Header) []qpack.HeaderField {
	return headerFields([]qpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}, h)
}

// GoAway sends GOAWAY (RFC 9114 section 5.2) on the control stream: the
// server processes no request stream from the next one a client could
// open on. The connection itself stays up until closed.
func (c *Conn) GoAway() error {
	if !c.server {
		return errors.New("masque: a client sends GOAWAY only about push, which it never enables")
	}
	// The ID after the last request stream accepted: the client may
	// retry any request from there on elsewhere.
	id := c.nextRequest.Load()
	c.ctlMu.Lock()
	defer c.ctlMu.Unlock()
	_, err := c.ctl.Write(appendFrame(nil, frameGoAway, quicvarint.Append(nil, id)))
	return err
}

// RejectRequests answers every request stream the client opens from now
// on with H3_REQUEST_REJECTED (RFC 9114 section 4.1.1: the request was
// not processed, the client may retry it elsewhere), until the
// connection ends, in this goroutine: for a server that takes no more
// requests on the connection (its one CONNECT-IP session runs), so that a
// second request does not wait unanswered.
func (c *Conn) RejectRequests() {
	for {
		str, err := c.qc.AcceptStream(c.qc.Context())
		if err != nil {
			return
		}
		str.CancelRead(quic.StreamErrorCode(ErrCodeRequestRejected))
		str.CancelWrite(quic.StreamErrorCode(ErrCodeRequestRejected))
	}
}
