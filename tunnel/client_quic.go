package tunnel

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"

	"github.com/underpass/underpass/netstack"
)

// quicMTU is the inner MTU on QUIC: the IPv6 minimum, which RFC 9484
// clients can always carry in a datagram of a 1350-byte QUIC packet.
const quicMTU = 1280

// dnsConfigWait bounds the wait for the DNS configuration capsule, which
// Underpass sends right after the routes (empty without DNS); another
// CONNECT-IP server may send none.
const dnsConfigWait = 500 * time.Millisecond

// quicTransport is a CONNECT-IP session over QUIC.
type quicTransport struct {
	qc   *quic.Conn
	conn *connectip.Conn
	once sync.Once
}

func (t *quicTransport) name() string { return "quic" }

// connectQUIC dials the gateway over QUIC and opens a CONNECT-IP session.
func (c *Client) connectQUIC(ctx context.Context) (clientTransport, tunnelParams, error) {
	tc := c.tlsCfg.Clone()
	tc.NextProtos = []string{http3.NextProtoH3}
	tc.MinVersion = 0 // QUIC negotiates TLS 1.3 itself
	qconf := &quic.Config{
		EnableDatagrams:   true,
		InitialPacketSize: 1350,             // see the gateway's quicConfig
		KeepAlivePeriod:   10 * time.Second, // keeps NAT bindings for UDP warm (they expire after ~30 s)
		MaxIdleTimeout:    30 * time.Second, // a dead path is noticed within this
		// As the gateway: windows that let one session move gigabits.
		InitialConnectionReceiveWindow: 1 << 20,
		MaxConnectionReceiveWindow:     16 << 20,
	}
	addr := net.JoinHostPort(c.host, c.port)
	qc, err := quic.DialAddr(ctx, addr, tc, qconf)
	if err != nil {
		return nil, tunnelParams{}, fmt.Errorf("tunnel: quic dial %s: %w", addr, err)
	}
	fail := func(err error) (clientTransport, tunnelParams, error) {
		_ = qc.CloseWithError(0, "")
		return nil, tunnelParams{}, err
	}
	cc, err := (&connectip.Transport{}).NewClientConn(qc)
	if err != nil {
		return fail(err)
	}
	tmpl, err := uritemplate.New("https://" + addr + c.path + ConnectIPPath)
	if err != nil {
		return fail(err)
	}
	// The request lives as long as the client: its context must outlive
	// this call (cancelling it would reset the tunnel's stream). ctx bounds
	// only the wait for the response, by closing the connection.
	req, err := connectip.NewRequest(c.ctx, tmpl)
	if err != nil {
		return fail(err)
	}
	stop := context.AfterFunc(ctx, func() { _ = qc.CloseWithError(0, "timed out") })
	defer stop()
	h := req.Header()
	h.Set("User-Agent", "underpass-go")
	h.Set("Underpass-Device-Id", c.cfg.DeviceID)
	if ck := c.getCookie(); ck != "" {
		h.Set("Cookie", (&http.Cookie{Name: "webvpn", Value: ck}).String())
	} else if tok, err := c.token(ctx); err != nil {
		return fail(err)
	} else if tok != "" {
		h.Set("Authorization", "Bearer "+tok)
	} else if c.cfg.Username != "" {
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(c.cfg.Username+":"+c.cfg.Password)))
	}
	conn, rsp, err := cc.Dial(req)
	if rsp != nil && rsp.StatusCode != http.StatusOK {
		reason := rsp.Header.Get("X-Reason")
		if reason == "" {
			reason = rsp.Status
		}
		if rsp.StatusCode == http.StatusUnauthorized || rsp.StatusCode == http.StatusForbidden || rsp.StatusCode == http.StatusTooManyRequests {
			return fail(&AuthError{Status: rsp.StatusCode, Reason: reason})
		}
		return fail(fmt.Errorf("tunnel: CONNECT-IP refused (%d): %s", rsp.StatusCode, reason))
	}
	if err != nil {
		return fail(fmt.Errorf("tunnel: CONNECT-IP: %w", err))
	}
	for _, ck := range rsp.Cookies() {
		if ck.Name == "webvpn" && ck.Value != "" {
			c.setCookie(ck.Value)
		}
	}
	t := &quicTransport{qc: qc, conn: conn}
	p, err := receiveConfig(ctx, conn)
	if err == nil && !stop() {
		err = ctx.Err() // ctx ended just now and closed the connection
	}
	if err != nil {
		t.close(false)
		return nil, tunnelParams{}, err
	}
	return t, p, nil
}

// receiveConfig reads the address, routes and DNS capsules.
func receiveConfig(ctx context.Context, conn *connectip.Conn) (tunnelParams, error) {
	p := tunnelParams{mtu: quicMTU}
	as, err := conn.ReceiveAddressAssignment(ctx)
	if err != nil {
		return p, fmt.Errorf("tunnel: address assignment: %w", err)
	}
	for _, a := range as {
		switch ap := a.IPPrefix.Addr(); {
		case a.Rejected():
		case ap.Is4() && !p.addr.IsValid():
			p.addr = ap
		case ap.Is6() && !ap.Is4In6() && !p.addr6.IsValid():
			p.addr6 = ap // a dual-stack session
		}
	}
	if !p.addr.IsValid() {
		return p, errors.New("tunnel: the gateway assigned no IPv4 address")
	}
	routes, err := conn.Routes(ctx)
	if err != nil {
		return p, fmt.Errorf("tunnel: routes: %w", err)
	}
	for _, r := range routes {
		if r.StartIP.Is4() || p.addr6.IsValid() {
			p.include = append(p.include, r.Prefixes()...)
		}
	}
	full := len(p.include) > 0
	for _, i := range p.include {
		full = full && i.Bits() == 0
	}
	if full {
		p.include = nil // everything (of each family): a full tunnel
	}
	dctx, cancel := context.WithTimeout(ctx, dnsConfigWait)
	defer cancel()
	if dcs, err := conn.ReceiveDNSConfiguration(dctx); err == nil {
		for _, dc := range dcs {
			for _, ns := range dc.Nameservers {
				p.dns = append(p.dns, ns.IPv4Addresses...)
				if p.addr6.IsValid() {
					p.dns = append(p.dns, ns.IPv6Addresses...)
				}
			}
			p.search = append(p.search, dc.SearchDomains...)
		}
	}
	return p, nil
}

func (t *quicTransport) pump(ctx context.Context, st *netstack.ClientStack) error {
	readErr := make(chan error, 1)
	go func() {
		readErr <- pumpDatagrams(t.conn.ReadPacket, func(p []byte) { _ = st.Inject(p) })
	}()
	pkts := st.Packets()
	var err error
loop:
	for {
		select {
		case pk, ok := <-pkts:
			if !ok {
				err = net.ErrClosed
				break loop
			}
			_, werr := t.conn.WritePacket(pk.Frame()[cstpHeaderLen:])
			pk.Release()
			if werr != nil {
				err = werr
				break loop
			}
		case err = <-readErr:
			readErr <- err
			break loop
		case <-ctx.Done():
			err = ctx.Err()
			break loop
		}
	}
	t.close(false)
	<-readErr
	// The gateway's close code says whether the session is over.
	var ae *quic.ApplicationError
	if cerr := context.Cause(t.qc.Context()); errors.As(cerr, &ae) && ae.Remote &&
		(ae.ErrorCode == QUICCodeSessionEnded || ae.ErrorCode == QUICCodeTakenOver) {
		return &errSessionOver{reason: ae.ErrorMessage, takenOver: ae.ErrorCode == QUICCodeTakenOver}
	}
	return err
}

func (t *quicTransport) close(logoff bool) {
	t.once.Do(func() {
		t.conn.Close()
		// CONNECT-IP has no logoff message: the close code tells the
		// gateway to end the session rather than hold it for a reconnect.
		code := quic.ApplicationErrorCode(0)
		if logoff {
			code = QUICCodeLogoff
		}
		_ = t.qc.CloseWithError(code, "")
	})
}
