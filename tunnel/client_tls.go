package tunnel

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	utls "github.com/refraction-networking/utls"

	"github.com/underpass/underpass/internal/core/authxml"
	"github.com/underpass/underpass/internal/core/cstp"
	"github.com/underpass/underpass/netstack"
)

// clientMTU is the tunnel MTU the client asks for on the TLS path: the
// gateway's default, big frames in one TLS record each.
const clientMTU = DefaultMTU

// tlsTransport is an AnyConnect CSTP connection.
type tlsTransport struct {
	conn net.Conn
	bc   *batchConn
	br   *bufio.Reader
	dpd  time.Duration
	ka   time.Duration
	wmu  sync.Mutex // serialises frame writes (packets, DPD replies, keepalives)
	once sync.Once

	lastRx atomic.Int64
}

func (t *tlsTransport) name() string { return "tls" }

// dialTLS opens a TCP connection and runs the TLS handshake with the
// configured ClientHello fingerprint.
func (c *Client) dialTLS(ctx context.Context) (net.Conn, *batchConn, error) {
	addr := net.JoinHostPort(c.host, c.port)
	var d netstack.Dialer = &net.Dialer{}
	if c.cfg.Dialer != nil {
		d = c.cfg.Dialer
	}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("tunnel: dial %s: %w", addr, err)
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true) // frames are batched by batchConn already
	}
	bc := newBatchConn(raw)
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	defer raw.SetDeadline(time.Time{})
	conn, err := c.handshake(ctx, bc)
	if err != nil {
		raw.Close()
		return nil, nil, fmt.Errorf("tunnel: TLS handshake with %s: %w", addr, err)
	}
	return conn, bc, nil
}

// helloIDs maps Fingerprint names to utls ClientHellos.
var helloIDs = map[string]utls.ClientHelloID{
	FingerprintChrome:  utls.HelloChrome_Auto,
	FingerprintFirefox: utls.HelloFirefox_Auto,
	FingerprintIOS:     utls.HelloIOS_Auto,
	FingerprintAndroid: utls.HelloAndroid_11_OkHttp,
}

func (c *Client) handshake(ctx context.Context, raw net.Conn) (net.Conn, error) {
	base := c.tlsCfg
	id, ok := helloIDs[c.cfg.Fingerprint]
	if !ok { // Go's own ClientHello
		tc := base.Clone()
		tc.NextProtos = []string{"http/1.1"}
		conn := tls.Client(raw, tc)
		return conn, conn.HandshakeContext(ctx)
	}
	uc := &utls.Config{
		ServerName:         base.ServerName,
		RootCAs:            base.RootCAs,
		InsecureSkipVerify: base.InsecureSkipVerify,
		NextProtos:         []string{"http/1.1"},
	}
	if base.VerifyConnection != nil {
		uc.VerifyConnection = func(cs utls.ConnectionState) error {
			return base.VerifyConnection(tls.ConnectionState{PeerCertificates: cs.PeerCertificates})
		}
	}
	for _, cert := range base.Certificates {
		uc.Certificates = append(uc.Certificates, utls.Certificate{Certificate: cert.Certificate, PrivateKey: cert.PrivateKey, Leaf: cert.Leaf})
	}
	conn := utls.UClient(raw, uc, id)
	return conn, conn.HandshakeContext(ctx)
}

// connectTLS signs in with the XML exchange (unless a cookie resumes) and
// opens the CSTP tunnel.
func (c *Client) connectTLS(ctx context.Context) (clientTransport, tunnelParams, error) {
	conn, bc, err := c.dialTLS(ctx)
	if err != nil {
		return nil, tunnelParams{}, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	br := bufio.NewReader(conn)
	if c.getCookie() == "" {
		if err := c.signInXML(ctx, conn, br); err != nil {
			conn.Close()
			return nil, tunnelParams{}, err
		}
	}
	p, err := c.cstpConnect(conn, br)
	if err != nil {
		conn.Close()
		return nil, tunnelParams{}, err
	}
	_ = conn.SetDeadline(time.Time{})
	t := &tlsTransport{conn: conn, bc: bc, br: br, dpd: p.dpd, ka: p.keepalive}
	return t, p.tunnelParams, nil
}

func (c *Client) newRequest(method, path string, body []byte) *http.Request {
	return authxml.NewRequest(method, "https://"+net.JoinHostPort(c.host, c.port)+path, "AnyConnect-compatible underpass-go", body)
}

// signInXML runs the AnyConnect sign-in and stores the session cookie.
func (c *Client) signInXML(ctx context.Context, conn net.Conn, br *bufio.Reader) error {
	req := c.newRequest(http.MethodPost, c.path+"/", authxml.RenderInit(c.cfg.DeviceID, "https://"+net.JoinHostPort(c.host, c.port)+c.path+"/"))
	tok, err := c.token(ctx)
	if err != nil {
		return err
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, body, err := authxml.RoundTrip(conn, br, req)
	if err != nil {
		return fmt.Errorf("tunnel: sign-in: %w", err)
	}
	if c.takeCookie(resp) {
		return nil
	}
	msg, err := authxml.ParseServer(body)
	if err != nil {
		return fmt.Errorf("tunnel: sign-in: unexpected reply (%s): %w", resp.Status, err)
	}
	if tok != "" || c.cfg.Username == "" {
		return &AuthError{Reason: orDefault(msg.Error, "the gateway did not accept the token or certificate")}
	}
	action := msg.Action
	if action == "" {
		action = c.path + "/"
	}
	req = c.newRequest(http.MethodPost, action, authxml.RenderReply(c.cfg.DeviceID, msg.Opaque, c.cfg.Username, c.cfg.Password))
	resp, body, err = authxml.RoundTrip(conn, br, req)
	if err != nil {
		return fmt.Errorf("tunnel: sign-in: %w", err)
	}
	if c.takeCookie(resp) {
		return nil
	}
	reason := "no session cookie in the reply"
	if msg, err := authxml.ParseServer(body); err == nil && msg.Error != "" {
		reason = msg.Error
	}
	return &AuthError{Reason: reason}
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func (c *Client) takeCookie(resp *http.Response) bool {
	for _, ck := range resp.Cookies() {
		if ck.Name == "webvpn" && ck.Value != "" {
			c.setCookie(ck.Value)
			return true
		}
	}
	return false
}

// cstpParams adds the CSTP timers to tunnelParams.
type cstpParams struct {
	tunnelParams
	dpd, keepalive time.Duration
}

// cstpConnect sends CONNECT and reads the X-CSTP-* configuration.
func (c *Client) cstpConnect(conn net.Conn, br *bufio.Reader) (cstpParams, error) {
	req := c.newRequest(http.MethodConnect, "/CSCOSSLC/tunnel", nil)
	req.Header.Set("Cookie", (&http.Cookie{Name: "webvpn", Value: c.getCookie()}).String())
	// IPv6 too: a dual-stack gateway (Config.Pool6) then gives an IPv6
	// address; any other gives the IPv4 reply it always gave.
	(&cstp.Request{MTU: clientMTU, IPv4: true, IPv6: true}).SetHeaders(req.Header)
	if err := req.Write(conn); err != nil {
		return cstpParams{}, fmt.Errorf("tunnel: CONNECT: %w", err)
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return cstpParams{}, fmt.Errorf("tunnel: CONNECT: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		reason := orDefault(resp.Header.Get("X-Reason"), resp.Status)
		if resp.StatusCode == http.StatusUnauthorized {
			return cstpParams{}, &AuthError{Status: resp.StatusCode, Reason: reason}
		}
		return cstpParams{}, fmt.Errorf("tunnel: CONNECT refused (%d): %s", resp.StatusCode, reason)
	}
	tun, err := cstp.ParseTunnel(resp.Header)
	if err != nil {
		return cstpParams{}, fmt.Errorf("tunnel: CONNECT reply: %w", err)
	}
	var p cstpParams
	p.addr, p.mtu = tun.Address, tun.MTU
	if tun.Address6.IsValid() {
		p.addr6 = tun.Address6.Addr()
	}
	p.dpd, p.keepalive = cmp.Or(tun.DPD, DefaultDPD), cmp.Or(tun.Keepalive, DefaultKeepalive)
	p.include, p.exclude = tun.SplitInclude, tun.SplitExclude
	p.dns, p.search, p.banner = tun.DNS, tun.DefaultDomain, tun.Banner
	return p, nil
}

func (t *tlsTransport) writeFrame(f []byte, flush bool) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if _, err := t.conn.Write(f); err != nil {
		return err
	}
	if flush {
		return t.flushLocked()
	}
	return nil
}

func (t *tlsTransport) flushLocked() error {
	_ = t.conn.SetWriteDeadline(time.Now().Add(2 * t.dpd)) // as the gateway: a stuck peer is dead after two DPD intervals
	return t.bc.Flush()
}

func (t *tlsTransport) pump(ctx context.Context, st *netstack.ClientStack) error {
	_ = t.bc.setBatching(true)
	t.lastRx.Store(time.Now().UnixNano())
	readErr := make(chan error, 1)
	go func() { readErr <- t.readLoop(st) }()
	tick := time.NewTicker(min(t.dpd, t.ka) / 2) // timers checked at twice their rate
	defer tick.Stop()
	pkts := st.Packets()
	lastTx := time.Now()
	var err error
loop:
	for {
		select {
		case pk, ok := <-pkts:
			if !ok {
				err = net.ErrClosed
				break loop
			}
			t.wmu.Lock()
			err = writeBatchFrom(pkts, pk, t.writePacketLocked)
			if err == nil {
				err = t.flushLocked()
			}
			t.wmu.Unlock()
			lastTx = time.Now()
			if err != nil {
				break loop
			}
		case err = <-readErr:
			readErr <- err
			break loop
		case now := <-tick.C:
			silent := now.Sub(time.Unix(0, t.lastRx.Load()))
			if silent > 2*t.dpd+t.dpd/2 {
				err = fmt.Errorf("dead peer: nothing received for %v", silent.Round(time.Second))
				break loop
			}
			if silent > t.dpd {
				err = t.writeFrame(cstp.AppendFrame(nil, cstp.DPDReq, nil), true)
			} else if now.Sub(lastTx) > t.ka {
				err = t.writeFrame(cstp.AppendFrame(nil, cstp.Keepalive, nil), true)
				lastTx = now
			}
			if err != nil {
				break loop
			}
		case <-ctx.Done():
			err = ctx.Err()
			break loop
		}
	}
	t.close(false)
	if rerr := <-readErr; rerr != nil {
		var over *errSessionOver
		if errors.As(rerr, &over) {
			return rerr
		}
	}
	return err
}

func (t *tlsTransport) writePacketLocked(pk *netstack.Packet) error {
	f := pk.Frame()
	cstp.PutHeader(f, cstp.Data, len(f)-cstpHeaderLen)
	_, err := t.conn.Write(f)
	pk.Release()
	return err
}

// readLoop feeds the gateway's frames to st until the connection ends.
func (t *tlsTransport) readLoop(st *netstack.ClientStack) error {
	r := cstp.NewReader(t.br, cstp.MaxRecordPayload)
	for {
		typ, payload, err := r.Next()
		if err != nil {
			return err
		}
		t.lastRx.Store(time.Now().UnixNano())
		switch typ {
		case cstp.Data:
			_ = st.Inject(payload)
		case cstp.DPDReq:
			if err := t.writeFrame(cstp.AppendFrame(nil, cstp.DPDResp, payload), true); err != nil {
				return err
			}
		case cstp.Disconnect, cstp.Terminate:
			reason := "disconnected by the gateway"
			if len(payload) > 1 {
				reason = string(payload[1:])
			}
			return &errSessionOver{reason: reason, takenOver: typ == cstp.Disconnect && len(payload) > 0 && payload[0] == cstp.ReasonTakenOver}
		}
	}
}

func (t *tlsTransport) close(logoff bool) {
	t.once.Do(func() {
		if logoff {
			_ = t.conn.SetWriteDeadline(time.Now().Add(time.Second))
			_ = t.writeFrame(cstp.AppendFrame(nil, cstp.Disconnect, cstp.DisconnectPayload(cstp.ReasonUserDisconnect, "")), true)
		}
		_ = t.conn.SetDeadline(time.Now())
		_ = t.conn.Close()
	})
}
