package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/underpass/underpass/internal/core/authxml"
	"github.com/underpass/underpass/internal/core/cstp"
)

// refusedError is a sign-in or CONNECT the gateway refused for the
// credentials or the cookie.
type refusedError struct{ reason string }

func (e *refusedError) Error() string { return "sign-in refused: " + e.reason }

// endpoint is the gateway's address and the TLS settings every light
// session shares.
type endpoint struct {
	host, port, path string
	tls              *tls.Config
}

// newEndpoint parses cfg.Server and the pin.
func newEndpoint(cfg *Config) (*endpoint, error) {
	s := cfg.Server
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Hostname() == "" {
		return nil, &ConfigError{"Server", fmt.Sprintf("%q: want host:port or https://host:port/path", cfg.Server)}
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	tc := &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	if cfg.PinSHA256 != "" {
		pin, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(cfg.PinSHA256, "pin-sha256:"))
		if err != nil || len(pin) != sha256.Size {
			return nil, &ConfigError{"PinSHA256", fmt.Sprintf("%q: want pin-sha256:BASE64 of 32 bytes", cfg.PinSHA256)}
		}
		// The pin replaces chain verification, as openconnect's --servercert.
		tc.InsecureSkipVerify = true
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("gateway sent no certificate")
			}
			h := sha256.Sum256(cs.PeerCertificates[0].RawSubjectPublicKeyInfo)
			if !bytes.Equal(h[:], pin) {
				return errors.New("gateway certificate does not match the pin")
			}
			return nil
		}
	}
	return &endpoint{host: u.Hostname(), port: port, path: strings.TrimSuffix(u.Path, "/"), tls: tc}, nil
}

// light is an AnyConnect session with no IP stack: it answers the
// gateway's DPD requests and ignores every other frame.
type light struct {
	ep     *endpoint
	cfg    *Config
	tc     *tls.Config // the endpoint's, with this session's resumption cache
	cookie string
	addr   netip.Addr // the leased address, asked for again on reconnect
	// lost, when set (Config.Failover), is called instead of ending the
	// session when its connection ends without the gateway ending the
	// session: its server died or the connection was cut.
	lost func(*light)
	// failedOver is set when a failover gave up: the session is counted
	// as ReconnectFail, not as dropped.
	failedOver atomic.Bool

	mu      sync.Mutex
	conn    net.Conn
	readers sync.WaitGroup
	gone    chan struct{} // closed when the session has ended
	endOnce sync.Once
}

// dialLight signs session n in and brings its tunnel up; lost, if not
// nil, is light.lost.
func dialLight(ctx context.Context, ep *endpoint, cfg *Config, n int, lost func(*light)) (*light, error) {
	tc := ep.tls.Clone()
	// A reconnect resumes the TLS session, as tunnel.Client does; one
	// entry: one gateway.
	tc.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	s := &light{ep: ep, cfg: cfg, tc: tc, lost: lost, gone: make(chan struct{})}
	conn, br, err := s.dialTLS(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.signIn(ctx, conn, br, fmt.Sprintf("loadgen-%d", n)); err != nil {
		conn.Close()
		return nil, err
	}
	if err := s.connect(conn, br); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// dialTLS opens a TLS connection to the gateway; ctx bounds the exchange
// that follows too (its deadline is set on the connection).
func (s *light) dialTLS(ctx context.Context) (net.Conn, *bufio.Reader, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", net.JoinHostPort(s.ep.host, s.ep.port))
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	conn := tls.Client(raw, s.tc)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return conn, bufio.NewReader(conn), nil
}

func (s *light) request(method, path string, body []byte) *http.Request {
	return authxml.NewRequest(method, "https://"+net.JoinHostPort(s.ep.host, s.ep.port)+path, "AnyConnect-compatible underpass-loadtest", body)
}

// post sends an XML message and returns the reply and its body.
func (s *light) post(conn net.Conn, br *bufio.Reader, path string, body []byte) (*http.Response, []byte, error) {
	return authxml.RoundTrip(conn, br, s.request(http.MethodPost, path, body))
}

// signIn runs the AnyConnect XML exchange (init, then the form's reply)
// and keeps the session cookie.
func (s *light) signIn(ctx context.Context, conn net.Conn, br *bufio.Reader, device string) error {
	group := "https://" + net.JoinHostPort(s.ep.host, s.ep.port) + s.ep.path + "/"
	req := s.request(http.MethodPost, s.ep.path+"/", authxml.RenderInit(device, group))
	if s.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+s.cfg.Token)
	}
	resp, body, err := authxml.RoundTrip(conn, br, req)
	if err != nil {
		return fmt.Errorf("sign-in: %w", err)
	}
	if s.takeCookie(resp) {
		return nil
	}
	msg, err := authxml.ParseServer(body)
	if err != nil {
		return fmt.Errorf("sign-in: unexpected reply (%s): %w", resp.Status, err)
	}
	if s.cfg.Token != "" {
		return &refusedError{"token: " + orDefault(msg.Error, "no session cookie in the reply")}
	}
	action := msg.Action
	if action == "" {
		action = s.ep.path + "/"
	}
	resp, body, err = s.post(conn, br, action, authxml.RenderReply(device, msg.Opaque, s.cfg.Username, s.cfg.Password))
	if err != nil {
		return fmt.Errorf("sign-in: %w", err)
	}
	if s.takeCookie(resp) {
		return nil
	}
	reason := "no session cookie in the reply (" + resp.Status + ")"
	if m, err := authxml.ParseServer(body); err == nil && m.Error != "" {
		reason = m.Error
	}
	return &refusedError{reason}
}

// takeCookie keeps the session cookie the reply sets, if any.
func (s *light) takeCookie(resp *http.Response) bool {
	for _, c := range resp.Cookies() {
		if c.Name == "webvpn" && c.Value != "" {
			s.cookie = c.Value
			return true
		}
	}
	return false
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// connect sends CSTP CONNECT with the cookie on conn and, once the tunnel
// is up, starts answering DPD on it.
func (s *light) connect(conn net.Conn, br *bufio.Reader) error {
	req := s.request(http.MethodConnect, "/CSCOSSLC/tunnel", nil)
	req.Header.Set("Cookie", (&http.Cookie{Name: "webvpn", Value: s.cookie}).String())
	// No MTU asked for: the gateway's default. Light sessions send no
	// packets, so it only shapes what the gateway sets up.
	(&cstp.Request{IPv4: true, Address: s.addr}).SetHeaders(req.Header)
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("CONNECT: %w", err)
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return fmt.Errorf("CONNECT: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		reason := resp.Header.Get("X-Reason")
		if reason == "" {
			reason = resp.Status
		}
		if resp.StatusCode == http.StatusUnauthorized {
			return &refusedError{"CONNECT: " + reason}
		}
		return fmt.Errorf("CONNECT refused (%d): %s", resp.StatusCode, reason)
	}
	tun, err := cstp.ParseTunnel(resp.Header)
	if err != nil {
		return fmt.Errorf("CONNECT reply: %w", err)
	}
	if s.addr.IsValid() && tun.Address != s.addr {
		return fmt.Errorf("CONNECT: address changed from %v to %v on reconnect", s.addr, tun.Address)
	}
	s.addr = tun.Address
	_ = conn.SetDeadline(time.Time{})
	s.mu.Lock()
	s.conn = conn
	s.mu.Unlock()
	s.readers.Add(1)
	go s.serve(conn, br)
	return nil
}

// serve reads frames until conn ends and answers DPD requests. A
// DISCONNECT or TERMINATE from the gateway, or a connection lost while it
// is still the session's (not cut by reconnect or close), ends the
// session; a lost connection goes to lost instead when it is set.
func (s *light) serve(conn net.Conn, br *bufio.Reader) {
	defer s.readers.Done()
	r := cstp.NewReader(br, 0xffff) // the largest CSTP payload: a 16-bit length
	var err error
	byGateway := false
	for {
		var typ cstp.Type
		var p []byte
		if typ, p, err = r.Next(); err != nil {
			break
		}
		if typ == cstp.Disconnect || typ == cstp.Terminate {
			byGateway = true // the gateway ended the session
			break
		}
		if typ == cstp.DPDReq {
			s.mu.Lock()
			_ = conn.SetWriteDeadline(time.Now().Add(DefaultSetupTimeout)) // a stuck gateway must not hang the reader
			_, err = conn.Write(cstp.AppendFrame(nil, cstp.DPDResp, p))
			s.mu.Unlock()
			if err != nil {
				break
			}
		}
	}
	conn.Close()
	s.mu.Lock()
	ended := s.conn == conn
	if ended {
		s.conn = nil
	}
	s.mu.Unlock()
	switch {
	case ended && s.lost != nil && !byGateway:
		go s.lost(s)
	case ended:
		s.end()
	}
}

func (s *light) end() { s.endOnce.Do(func() { close(s.gone) }) }

func (s *light) done() <-chan struct{} { return s.gone }

// reconnect closes the connection without logging off and CONNECTs again
// with the cookie on a new one, keeping the address.
func (s *light) reconnect(ctx context.Context) error {
	s.mu.Lock()
	old := s.conn
	s.conn = nil // the reader's end is not a drop
	s.mu.Unlock()
	if old == nil {
		return errors.New("session already ended")
	}
	old.Close()
	err := s.redial(ctx)
	if err != nil {
		s.end() // the session is lost
	}
	return err
}

// redial CONNECTs with the cookie on a new connection, keeping the
// address.
func (s *light) redial(ctx context.Context) error {
	conn, br, err := s.dialTLS(ctx)
	if err == nil {
		if err = s.connect(conn, br); err != nil {
			conn.Close()
		}
	}
	return err
}

// close logs off: DISCONNECT with the user's reason, as openconnect
// sends it, then closes.
func (s *light) close() {
	s.mu.Lock()
	conn := s.conn
	s.conn = nil // the reader's end is not a loss
	if conn != nil {
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second)) // a logoff is best effort
		_, _ = conn.Write(cstp.AppendFrame(nil, cstp.Disconnect, cstp.DisconnectPayload(cstp.ReasonUserDisconnect, "logoff")))
	}
	s.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
	s.readers.Wait()
	s.end()
}
