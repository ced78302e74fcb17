// Package proxy is a small SOCKS5 (RFC 1928, with RFC 1929 password auth)
// and HTTP CONNECT proxy on one port, that opens every outbound connection
// through a caller-supplied Dial function. examples/socks plugs in the
// Underpass tunnel client, which makes it what ocproxy is for openconnect.
package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// handshakeTimeout bounds the SOCKS or HTTP CONNECT negotiation, so a
// client that connects and says nothing cannot hold a goroutine.
const handshakeTimeout = 10 * time.Second

// dialTimeout bounds one outbound dial through the tunnel.
const dialTimeout = 30 * time.Second

// Server is a SOCKS5 + HTTP CONNECT proxy.
type Server struct {
	// Dial opens outbound connections ("tcp", "host:port"). Required.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Username and Password, if set, are required from SOCKS5 clients
	// (RFC 1929) and HTTP clients (Proxy-Authorization: Basic).
	Username, Password string
	// Logger receives one line per connection. Default: silent.
	Logger *slog.Logger

	mu     sync.Mutex
	ls     map[net.Listener]struct{}
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("proxy: closed")

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Serve accepts connections on l until Close.
func (s *Server) Serve(l net.Listener) error {
	if s.Dial == nil {
		return errors.New("proxy: Server.Dial is required")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrClosed
	}
	if s.ls == nil {
		s.ls, s.conns = make(map[net.Listener]struct{}), make(map[net.Conn]struct{})
	}
	s.ls[l] = struct{}{}
	s.mu.Unlock()
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrClosed
			}
			return err
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return ErrClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.handle(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

// Close stops every listener and connection and waits for them. It is
// idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for l := range s.ls {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// handle serves one client connection: the first byte tells SOCKS5 (5)
// from HTTP (a method name).
func (s *Server) handle(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	br := bufio.NewReader(c)
	first, err := br.Peek(1)
	if err != nil {
		return
	}
	var (
		target string
		up     net.Conn
	)
	if first[0] == socksVersion {
		target, up, err = s.socks(c, br)
	} else {
		target, up, err = s.httpConnect(c, br)
	}
	if err != nil {
		s.log().Info("proxy: refused", "client", c.RemoteAddr(), "target", target, "err", err)
		return
	}
	defer up.Close()
	_ = c.SetDeadline(time.Time{})
	start := time.Now()
	upBytes, downBytes := relay(c, br, up)
	s.log().Info("proxy: done", "client", c.RemoteAddr(), "target", target, "up", upBytes, "down", downBytes,
		"seconds", time.Since(start).Seconds())
}

// dial opens the outbound connection with a bounded timeout.
func (s *Server) dial(target string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	return s.Dial(ctx, "tcp", target)
}

// relay copies both ways until both sides are done, half-closing as each
// direction ends. br holds bytes the client sent after the handshake.
func relay(c net.Conn, br *bufio.Reader, up net.Conn) (upBytes, downBytes int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		downBytes, _ = io.Copy(c, up)
		closeWrite(c)
	}()
	upBytes, _ = io.Copy(up, br)
	closeWrite(up)
	wg.Wait()
	return
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// SOCKS5 constants (RFC 1928, RFC 1929).
const (
	socksVersion     = 5
	authNone         = 0x00
	authPassword     = 0x02
	authNoAcceptable = 0xff
	cmdConnect       = 1
	atypIPv4         = 1
	atypDomain       = 3
	atypIPv6         = 4

	repSucceeded          = 0x00
	repGeneralFailure     = 0x01
	repNotAllowed         = 0x02
	repNetworkUnreachable = 0x03
	repHostUnreachable    = 0x04
	repConnRefused        = 0x05
	repTTLExpired         = 0x06
	repCmdNotSupported    = 0x07
	repAddrNotSupported   = 0x08
)

// RequestError is a malformed or unsupported SOCKS request; Rep is the
// reply code sent for it.
type RequestError struct {
	Rep    byte
	Reason string
}

func (e *RequestError) Error() string { return "socks: " + e.Reason }

// socks runs the SOCKS5 negotiation and dials the target.
func (s *Server) socks(c net.Conn, br *bufio.Reader) (string, net.Conn, error) {
	method, err := readGreeting(br, s.Username != "")
	if err != nil {
		if method == authNoAcceptable {
			_, _ = c.Write([]byte{socksVersion, authNoAcceptable})
		}
		return "", nil, err
	}
	if _, err := c.Write([]byte{socksVersion, method}); err != nil {
		return "", nil, err
	}
	if method == authPassword {
		u, p, err := readPasswordAuth(br)
		ok := err == nil && u == s.Username && p == s.Password
		status := byte(0)
		if !ok {
			status = 1
		}
		_, _ = c.Write([]byte{1, status})
		if err != nil {
			return "", nil, err
		}
		if !ok {
			return "", nil, errors.New("socks: bad username or password")
		}
	}
	target, err := ReadRequest(br)
	if err != nil {
		rep := byte(repGeneralFailure)
		var re *RequestError
		if errors.As(err, &re) {
			rep = re.Rep
		}
		writeReply(c, rep)
		return target, nil, err
	}
	up, err := s.dial(target)
	if err != nil {
		writeReply(c, replyFor(err))
		return target, nil, err
	}
	writeReply(c, repSucceeded)
	return target, up, nil
}

// readGreeting reads the method list and picks one.
func readGreeting(br *bufio.Reader, needPassword bool) (byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, err
	}
	if h[0] != socksVersion {
		return 0, fmt.Errorf("socks: version %d", h[0])
	}
	methods := make([]byte, h[1])
	if _, err := io.ReadFull(br, methods); err != nil {
		return 0, err
	}
	want := byte(authNone)
	if needPassword {
		want = authPassword
	}
	for _, m := range methods {
		if m == want {
			return want, nil
		}
	}
	return authNoAcceptable, errors.New("socks: no acceptable authentication method")
}

// readPasswordAuth reads an RFC 1929 username/password request.
func readPasswordAuth(br *bufio.Reader) (string, string, error) {
	ver, err := br.ReadByte()
	if err != nil {
		return "", "", err
	}
	if ver != 1 {
		return "", "", fmt.Errorf("socks: auth version %d", ver)
	}
	field := func() (string, error) {
		n, err := br.ReadByte()
		if err != nil {
			return "", err
		}
		b := make([]byte, n)
		_, err = io.ReadFull(br, b)
		return string(b), err
	}
	u, err := field()
	if err != nil {
		return "", "", err
	}
	p, err := field()
	return u, p, err
}

// ReadRequest reads a SOCKS5 request and returns its CONNECT target as
// "host:port". Other commands and malformed requests return a
// *RequestError carrying the reply code.
func ReadRequest(br *bufio.Reader) (string, error) {
	var h [4]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return "", err
	}
	if h[0] != socksVersion {
		return "", &RequestError{repGeneralFailure, fmt.Sprintf("version %d", h[0])}
	}
	var host string
	switch h[3] {
	case atypIPv4:
		var a [4]byte
		if _, err := io.ReadFull(br, a[:]); err != nil {
			return "", err
		}
		host = netip.AddrFrom4(a).String()
	case atypIPv6:
		var a [16]byte
		if _, err := io.ReadFull(br, a[:]); err != nil {
			return "", err
		}
		host = netip.AddrFrom16(a).String()
	case atypDomain:
		n, err := br.ReadByte()
		if err != nil {
			return "", err
		}
		if n == 0 {
			return "", &RequestError{repAddrNotSupported, "empty domain name"}
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return "", err
		}
		host = string(b)
	default:
		return "", &RequestError{repAddrNotSupported, fmt.Sprintf("address type %d", h[3])}
	}
	var p [2]byte
	if _, err := io.ReadFull(br, p[:]); err != nil {
		return "", err
	}
	target := net.JoinHostPort(host, strconv.Itoa(int(p[0])<<8|int(p[1])))
	if h[1] != cmdConnect {
		return target, &RequestError{repCmdNotSupported, fmt.Sprintf("command %d not supported (CONNECT only)", h[1])}
	}
	return target, nil
}

// writeReply sends a reply with an all-zero bound address.
func writeReply(c net.Conn, rep byte) {
	_, _ = c.Write([]byte{socksVersion, rep, 0, atypIPv4, 0, 0, 0, 0, 0, 0})
}

// replyFor maps a dial error to a SOCKS reply code.
func replyFor(err error) byte {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED) || isRefused(err):
		return repConnRefused
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.ETIMEDOUT):
		return repTTLExpired
	case errors.Is(err, syscall.ENETUNREACH):
		return repNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH):
		return repHostUnreachable
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return repHostUnreachable
	}
	return repGeneralFailure
}

// isRefused recognises refusals reported as text (gVisor's "connection
// refused" through the tunnel is not a syscall errno).
func isRefused(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if e.Error() == "connection was refused" || e.Error() == "connection refused" {
			return true
		}
	}
	return false
}

// maxHeaderBytes bounds an HTTP CONNECT request head.
const maxHeaderBytes = 16 << 10

// ReadConnect reads an HTTP proxy request head and returns its CONNECT
// target. Non-CONNECT requests return an error with HTTP status 405.
func ReadConnect(br *bufio.Reader) (*http.Request, error) {
	req, err := http.ReadRequest(bufio.NewReaderSize(io.LimitReader(br, maxHeaderBytes), 4096))
	if err != nil {
		return nil, fmt.Errorf("http proxy: %w", err)
	}
	if req.Method != http.MethodConnect {
		return req, fmt.Errorf("http proxy: method %s not supported (CONNECT only)", req.Method)
	}
	if _, _, err := net.SplitHostPort(req.Host); err != nil {
		return req, fmt.Errorf("http proxy: CONNECT target %q: want host:port", req.Host)
	}
	return req, nil
}

// httpConnect serves an HTTP CONNECT request and dials its target.
func (s *Server) httpConnect(c net.Conn, br *bufio.Reader) (string, net.Conn, error) {
	// A request head never spans more than maxHeaderBytes; reading through
	// a bounded reader keeps a client from feeding an endless header.
	head, err := readHead(br)
	if err != nil {
		_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
		return "", nil, err
	}
	req, err := ReadConnect(bufio.NewReader(head))
	if err != nil {
		status := "400 Bad Request"
		if req != nil && req.Method != http.MethodConnect {
			status = "405 Method Not Allowed"
		}
		_, _ = io.WriteString(c, "HTTP/1.1 "+status+"\r\nConnection: close\r\n\r\n")
		return "", nil, err
	}
	if s.Username != "" {
		u, p, ok := proxyAuth(req)
		if !ok || u != s.Username || p != s.Password {
			_, _ = io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"underpass\"\r\nConnection: close\r\n\r\n")
			return req.Host, nil, errors.New("http proxy: bad credentials")
		}
	}
	up, err := s.dial(req.Host)
	if err != nil {
		_, _ = io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n")
		return req.Host, nil, err
	}
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		up.Close()
		return req.Host, nil, err
	}
	return req.Host, up, nil
}

// readHead reads up to the blank line ending an HTTP request head.
func readHead(br *bufio.Reader) (io.Reader, error) {
	var head []byte
	for {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if len(head) > maxHeaderBytes {
			return nil, errors.New("http proxy: request head too large")
		}
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				continue
			}
			return nil, fmt.Errorf("http proxy: %w", err)
		}
		if len(line) <= 2 && (string(line) == "\r\n" || string(line) == "\n") {
			return bytes.NewReader(head), nil
		}
	}
}

func proxyAuth(r *http.Request) (string, string, bool) {
	h := r.Header.Get("Proxy-Authorization")
	if h == "" {
		return "", "", false
	}
	r2 := &http.Request{Header: http.Header{"Authorization": {h}}}
	return r2.BasicAuth()
}
