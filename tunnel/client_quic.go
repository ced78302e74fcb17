package tunnel

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/underpass/underpass/internal/core/masque"
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
	mc   *masque.Conn
	sess *masque.Session
	once sync.Once
}

func (t *quicTransport) name() string { return "quic" }

// connectQUIC dials the gateway over QUIC and opens a CONNECT-IP session.
func (c *Client) connectQUIC(ctx context.Context) (clientTransport, tunnelParams, error) {
	tc := c.tlsCfg.Clone()
	tc.NextProtos = []string{masque.ALPN}
	tc.MinVersion = 0 // QUIC negotiates TLS 1.3 itself
	qconf := &quic.Config{
		EnableDatagrams:   true,
		InitialPacketSize: 1350,             // see the gateway's quicConfig
		KeepAlivePeriod:   10 * time.Second, // keeps NAT bindings for UDP warm (they expire after ~30 s)
		MaxIdleTimeout:    30 * time.Second, // a dead path is noticed within this
		// As the gateway: windows that let one session move gigabits.
		InitialConnectionReceiveWindow: 1 << 20,
		MaxConnectionReceiveWindow:     16 << 20,
		// A server opens no request streams (RFC 9114 6.1); its control
		// stream and at most two QPACK streams are all it may open.
		MaxIncomingStreams:    -1,
		MaxIncomingUniStreams: 3,
		// As the gateway: streams carry a few KiB of control data.
		InitialStreamReceiveWindow: streamWindow,
		MaxStreamReceiveWindow:     streamWindow,
	}
	addr := net.JoinHostPort(c.host, c.port)
	qc, err := quic.DialAddr(ctx, addr, tc, qconf)
	if err != nil {
		return nil, tunnelParams{}, fmt.Errorf("tunnel: quic dial %s: %w", addr, err)
	}
	fail := func(err error) (clientTransport, tunnelParams, error) {
		_ = qc.CloseWithError(masque.ErrCodeNoError, "")
		return nil, tunnelParams{}, err
	}
	mc, err := masque.NewClientConn(qc, c.log)
	if err != nil {
		return fail(err)
	}
	h := http.Header{}
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
	// The fixed form of the RFC 9484 default template (ConnectIPPath).
	sess, rsp, err := mc.Dial(ctx, masque.Request{Authority: addr, Path: c.path + ConnectIPPath, Header: h})
	if rsp != nil && rsp.Status != http.StatusOK {
		reason := rsp.Header.Get("X-Reason")
		if reason == "" {
			reason = strconv.Itoa(rsp.Status) + " " + http.StatusText(rsp.Status)
		}
		if rsp.Status == http.StatusUnauthorized || rsp.Status == http.StatusForbidden || rsp.Status == http.StatusTooManyRequests {
			return fail(&AuthError{Status: rsp.Status, Reason: reason})
		}
		return fail(fmt.Errorf("tunnel: CONNECT-IP refused (%d): %s", rsp.Status, reason))
	}
	if err != nil {
		return fail(fmt.Errorf("tunnel: CONNECT-IP: %w", err))
	}
	for _, ck := range (&http.Response{Header: rsp.Header}).Cookies() {
		if ck.Name == "webvpn" && ck.Value != "" {
			c.setCookie(ck.Value)
		}
	}
	t := &quicTransport{qc: qc, mc: mc, sess: sess}
	p, err := receiveConfig(ctx, sess)
	if err != nil {
		t.close(false)
		return nil, tunnelParams{}, err
	}
	// The configuration read, the stream is only watched: capsules that
	// follow (updates) change nothing in a running tunnel.Client, and its
	// end ends the session (RFC 9484 3).
	sess.WatchEnd(func() { _ = qc.CloseWithError(masque.ErrCodeNoError, "CONNECT-IP stream ended") })
	return t, p, nil
}

// configCapsule reports the capsules receiveConfig reads.
func configCapsule(t uint64) bool {
	return t == masque.CapsuleAddressAssign || t == masque.CapsuleRouteAdvertisement || t == masque.CapsuleDNSAssign
}

// receiveConfig reads the address, routes and DNS capsules: the first two
// within ctx, the DNS configuration for at most dnsConfigWait more.
func receiveConfig(ctx context.Context, sess *masque.Session) (tunnelParams, error) {
	p := tunnelParams{mtu: quicMTU}
	stop := context.AfterFunc(ctx, func() { sess.SetReadDeadline(time.Now()) })
	defer stop()
	var haveAddr, haveRoutes, haveDNS, waiting bool
	var routes []masque.IPRoute
	var dns []masque.DNSConfig
	for !haveAddr || !haveRoutes || !haveDNS {
		if haveAddr && haveRoutes && !waiting {
			waiting = true
			if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > dnsConfigWait {
				sess.SetReadDeadline(time.Now().Add(dnsConfigWait))
			}
		}
		typ, b, err := sess.ReadCapsule(configCapsule)
		if err != nil && haveAddr && haveRoutes {
			break // no DNS configuration: another CONNECT-IP server
		}
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			what := "address assignment"
			if haveAddr {
				what = "routes"
			}
			return p, fmt.Errorf("tunnel: %s: %w", what, err)
		}
		switch typ {
		case masque.CapsuleAddressAssign:
			as, err := masque.ParseAddressAssign(b)
			if err != nil {
				return p, fmt.Errorf("tunnel: address assignment: %w", err)
			}
			haveAddr = true
			p.addr, p.addr6 = netip.Addr{}, netip.Addr{}
			for _, a := range as {
				switch ap := a.Prefix.Addr(); {
				case a.Rejected():
				case ap.Is4() && !p.addr.IsValid():
					p.addr = ap
				case ap.Is6() && !ap.Is4In6() && !p.addr6.IsValid():
					p.addr6 = ap // a dual-stack session
				}
			}
		case masque.CapsuleRouteAdvertisement:
			if routes, err = masque.ParseRouteAdvertisement(b); err != nil {
				return p, fmt.Errorf("tunnel: routes: %w", err)
			}
			haveRoutes = true
		case masque.CapsuleDNSAssign:
			if dns, err = masque.ParseDNSAssign(b); err != nil {
				return p, fmt.Errorf("tunnel: DNS configuration: %w", err)
			}
			haveDNS = true
		}
	}
	sess.SetReadDeadline(time.Time{})
	if !p.addr.IsValid() {
		return p, errors.New("tunnel: the gateway assigned no IPv4 address")
	}
	for _, r := range routes {
		if r.Start.Is4() || p.addr6.IsValid() {
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
	for _, dc := range dns {
		for _, ns := range dc.Nameservers {
			p.dns = append(p.dns, ns.IPv4...)
			if p.addr6.IsValid() {
				p.dns = append(p.dns, ns.IPv6...)
			}
		}
		p.search = append(p.search, dc.SearchDomains...)
	}
	return p, nil
}

// pump relays packets: the stack's to datagrams in this goroutine, and
// datagrams to the stack in ServeDatagrams' (no queue in between: quic-go's
// 128-deep receive queue absorbs a burst while Inject, which copies into
// the stack and does not block, catches up).
func (t *quicTransport) pump(ctx context.Context, st *netstack.ClientStack) error {
	t.sess.OnPacket(func(p []byte) { _ = st.Inject(p) })
	readErr := make(chan error, 1)
	go func() { readErr <- t.mc.ServeDatagrams() }()
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
			werr := t.sess.WritePacket(pk.Frame()[cstpHeaderLen:])
			pk.Release()
			if werr != nil && !datagramTooLarge(werr) {
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

// datagramTooLarge reports a packet that did not fit the path's datagrams:
// a loss, not the end of the connection. (A function of its own: the
// error target errors.As needs escapes, and would cost an allocation per
// packet if declared in the caller's loop.)
func datagramTooLarge(err error) bool {
	var e *quic.DatagramTooLargeError
	return errors.As(err, &e)
}

func (t *quicTransport) close(logoff bool) {
	t.once.Do(func() {
		// Closing the connection ends the session's stream with it.
		// CONNECT-IP has no logoff message: the close code tells the
		// gateway to end the session rather than hold it for a reconnect.
		code := masque.ErrCodeNoError
		if logoff {
			code = QUICCodeLogoff
		}
		_ = t.qc.CloseWithError(code, "")
	})
}
