package masque

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
)

// NewClientConn starts the client's HTTP/3 layer on qc, a connection with
// the ALPN "h3" and datagrams enabled. log receives debug lines about the
// peer's protocol errors; nil discards them.
func NewClientConn(qc *quic.Conn, log *slog.Logger) (*Conn, error) {
	return newConn(qc, false, log)
}

// Request is a CONNECT-IP request (RFC 9484 section 4.1): extended
// CONNECT with :protocol connect-ip to Authority and Path, the expansion
// of the proxy's URI template (this package sends no template variables:
// no IP flow forwarding).
type Request struct {
	Authority string
	Path      string
	// Header holds further fields (credentials, user agent).
	Header http.Header
}

// Response is the response to a Request: its status and fields.
type Response struct {
	Status int
	Header http.Header
}

// Dial sends req on a new request stream and reads the response. With a
// 2xx status it returns the open session; otherwise the response and an
// error. ctx bounds the wait for the peer's SETTINGS and the response; the
// session outlives it.
func (c *Conn) Dial(ctx context.Context, req Request) (*Session, *Response, error) {
	set, err := c.awaitSettings(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("masque: waiting for the server's SETTINGS: %w", err)
	}
	switch {
	case !set.ExtendedConnect:
		return nil, nil, errors.New("masque: the server does not enable extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL, RFC 9220)")
	case !set.Datagram:
		return nil, nil, errors.New("masque: the server does not enable HTTP datagrams (SETTINGS_H3_DATAGRAM, RFC 9297)")
	case !c.qc.ConnectionState().SupportsDatagrams.Remote:
		return nil, nil, errors.New("masque: the server does not support QUIC datagrams (RFC 9221)")
	}
	fields := requestFields(req.Authority, req.Path, req.Header)
	if n := fieldSectionSize(fields); set.MaxFieldSection != 0 && uint64(n) > set.MaxFieldSection {
		return nil, nil, fmt.Errorf("masque: the request's field section of %d bytes exceeds the server's SETTINGS_MAX_FIELD_SECTION_SIZE of %d (RFC 9114 4.2.2)", n, set.MaxFieldSection)
	}
	str, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("masque: open request stream: %w", err)
	}
	abort := func(err error) (*Session, *Response, error) {
		str.CancelRead(quic.StreamErrorCode(ErrCodeRequestCancelled))
		str.CancelWrite(quic.StreamErrorCode(ErrCodeRequestCancelled))
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() {
		str.CancelRead(quic.StreamErrorCode(ErrCodeRequestCancelled))
		str.CancelWrite(quic.StreamErrorCode(ErrCodeRequestCancelled))
	})
	defer stop()
	if _, err := str.Write(appendHeadersFrame(nil, fields)); err != nil {
		return abort(fmt.Errorf("masque: send request: %w", err))
	}
	r := bufio.NewReaderSize(str, 4096)
	rsp, err := readResponse(r)
	if err != nil {
		var he *Error
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case errors.As(err, &he) && he.Code != ErrCodeMessage:
			c.fail(he) // a connection error (RFC 9114 7.1, 8)
		}
		return abort(fmt.Errorf("masque: read response: %w", err))
	}
	if rsp.Status < 200 || rsp.Status > 299 {
		_, _, err := abort(fmt.Errorf("masque: CONNECT-IP refused with status %d", rsp.Status))
		return nil, rsp, err
	}
	if !stop() {
		return abort(ctx.Err())
	}
	return newSession(c, str, r), rsp, nil
}

// requestFields lists a CONNECT-IP request's fields (RFC 9484 4.1,
// RFC 9220 3, RFC 9297 3.4).
func requestFields(authority, path string, h http.Header) []qpack.HeaderField {
	fields := []qpack.HeaderField{
		{Name: ":method", Value: http.MethodConnect},
		{Name: ":protocol", Value: ProtocolConnectIP},
		{Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: authority},
		{Name: ":path", Value: path},
		{Name: "capsule-protocol", Value: capsuleProtocol},
	}
	return headerFields(fields, h)
}

// readResponse reads the final response's HEADERS, skipping interim (1xx)
// responses.
func readResponse(r *bufio.Reader) (*Response, error) {
	for {
		fs, err := readHeadersFrame(r, ":status")
		if err != nil {
			return nil, err
		}
		st, ok := fs.pseudo[":status"]
		if !ok {
			return nil, h3err(ErrCodeMessage, "response without :status")
		}
		status, err := statusOf(st)
		if err != nil {
			return nil, err
		}
		if status == http.StatusSwitchingProtocols {
			return nil, h3err(ErrCodeMessage, "status 101 in HTTP/3 (RFC 9114 4.5)")
		}
		if status >= 200 {
			return &Response{Status: status, Header: fs.header}, nil
		}
		// An interim response: the final one follows.
	}
}

// ProtocolConnectIP is the :protocol of a CONNECT-IP request (RFC 9484
// section 4.1).
const ProtocolConnectIP = "connect-ip"
