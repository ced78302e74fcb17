package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/masque"
	"github.com/underpass/underpass/netstack"
)

// ConnectIPPath is where the gateway serves CONNECT-IP (RFC 9484): the
// fixed form of the RFC's default template, because the gateway does not
// offer IP flow forwarding (template variables). Clients use the template
// "https://<gateway>/.well-known/masque/ip/" (after Config.SecretPath).
const ConnectIPPath = "/.well-known/masque/ip/"

// QUIC application error codes the gateway closes a connection with. They
// tell the client whether to reconnect with its cookie or sign in again.
// The values sit outside HTTP/3's registered range (0x100-0x110).
const (
	// QUICCodeGoingAway: the gateway is draining; reconnect (to another
	// server) with the session cookie.
	QUICCodeGoingAway quic.ApplicationErrorCode = 0x5550_0001
	// QUICCodeSessionEnded: the session is over (timeout, logout, operator,
	// policy); sign in again.
	QUICCodeSessionEnded quic.ApplicationErrorCode = 0x5550_0002
	// QUICCodeLogoff, sent by a client: end my session now (AnyConnect's
	// DISCONNECT), instead of holding it for a reconnect.
	QUICCodeLogoff quic.ApplicationErrorCode = 0x5550_0003
	// QUICCodeTakenOver: another connection presented this session's
	// cookie and took it over (R-P6); do not reconnect, or the two
	// clients would keep kicking each other out.
	QUICCodeTakenOver quic.ApplicationErrorCode = 0x5550_0004
)

// quicConfig is the QUIC configuration for the gateway's listener.
func (g *Gateway) quicConfig() *quic.Config {
	c := g.conf()
	qc := &quic.Config{
		EnableDatagrams: true, // CONNECT-IP carries packets as HTTP datagrams
		// QUIC's own liveness replaces CSTP's DPD: a silent peer is gone
		// after the same 2.5 DPD intervals the TLS path allows.
		MaxIdleTimeout:  c.DPD*2 + c.DPD/2,
		KeepAlivePeriod: c.Keepalive,
		// Room for a 1280-byte inner packet (the IPv6 minimum MTU that
		// RFC 9484 clients assume) plus QUIC and datagram framing.
		InitialPacketSize: 1350,
		// Flow-control windows sized like the TLS path's TCP buffers: a
		// single session can move gigabits without unbounded memory.
		InitialConnectionReceiveWindow: 1 << 20,
		MaxConnectionReceiveWindow:     16 << 20,
		// A client runs one CONNECT-IP stream at a time: 2 leaves room for
		// the next request while a refused one (a 401 before credentials)
		// is still closing, or for a second request beside the session,
		// which is rejected (masque.Conn.RejectRequests). quic-go grants a
		// new stream as each one closes; every stream allowed beyond these
		// could only hold up to streamWindow of data unread (M1 of the
		// HTTP/3 review).
		MaxIncomingStreams: 2,
		// Its control stream and at most two QPACK streams (RFC 9114
		// 6.2); a stream of another type is aborted, which frees its slot.
		MaxIncomingUniStreams: 3,
		// Streams carry only HTTP/3 control data, headers and capsules,
		// a few KiB at most: what a client sends that the gateway does
		// not read (its control stream after SETTINGS, see masque's
		// package doc) stays within this per stream.
		InitialStreamReceiveWindow: streamWindow,
		MaxStreamReceiveWindow:     streamWindow,
	}
	// Banned addresses, and every new connection once the gateway drains,
	// are refused at the first packet, before any TLS work: as the TCP
	// listener refuses them (at accept, or closed). quic-go uses its defaults (no datagrams) when the callback returns
	// a nil config, so it returns this one, without the callback.
	accept := qc.Clone()
	qc.GetConfigForClient = func(info *quic.ClientInfo) (*quic.Config, error) {
		if g.isDraining() {
			return nil, ErrClosed
		}
		if b := g.conf().Bans; b != nil {
			if ap, err := netip.ParseAddrPort(info.RemoteAddr.String()); err == nil && b.Banned(ap.Addr().Unmap()) {
				return nil, errBanned
			}
		}
		return accept, nil
	}
	return qc
}

var errBanned = errors.New("tunnel: address banned for failed sign-ins")

// ServeQUIC serves CONNECT-IP over HTTP/3 on pc until Close or Shutdown,
// then returns ErrClosed. It closes pc. The HTTP/3 layer is the gateway's
// own (internal/core/masque): it serves nothing but CONNECT-IP at
// Config.SecretPath + ConnectIPPath, and answers any other request 404.
func (g *Gateway) ServeQUIC(pc net.PacketConn) error {
	if g.conf().DisableUDP {
		pc.Close()
		return errors.New("tunnel: UDP is disabled in the configuration")
	}
	if c := g.conf(); c.GetCertificate == nil && c.Certificate == nil {
		pc.Close()
		return errors.New("tunnel: no TLS certificate configured")
	}
	g.mu.Lock()
	if g.closed || g.draining {
		g.mu.Unlock()
		pc.Close()
		return ErrClosed
	}
	g.udpPCs = append(g.udpPCs, pc)
	g.mu.Unlock()
	tc := g.tlsConf.Clone()
	tc.MinVersion = tls.VersionTLS13 // QUIC is TLS 1.3 only
	tc.NextProtos = []string{masque.ALPN}
	tr := &quic.Transport{Conn: pc}
	if sl := g.conf().Sealer; sl != nil {
		// Stateless resets (RFC 9000 10.3) from a key every server of the
		// site derives alike: a restarted gateway (or another one behind
		// the same address) tells a client its old connection is gone at
		// its next packet, instead of letting it wait out the idle
		// timeout.
		k := quic.StatelessResetKey(sl.DeriveKey(quicResetKeyPurpose))
		tr.StatelessResetKey = &k
	}
	// Listen, not ListenEarly: a request carries credentials, and 0-RTT
	// data can be replayed (RFC 9001 9.2).
	ln, err := tr.Listen(tc, g.quicConfig())
	if err == nil {
		for {
			qc, aerr := ln.Accept(g.ctx)
			if aerr != nil {
				err = aerr
				break
			}
			go g.serveQUICConn(qc)
		}
		ln.Close()
	}
	tr.Close()
	pc.Close()
	if errors.Is(err, quic.ErrServerClosed) || errors.Is(err, net.ErrClosed) || g.ctx.Err() != nil || g.isDraining() {
		return ErrClosed
	}
	return err
}

// serveQUICConn serves one QUIC connection: its requests, one at a time,
// until one becomes a CONNECT-IP session, which this goroutine then runs
// (linkBase.run) until it ends and closes the connection. A client opens
// one session per connection; a refused request may be retried on it.
//
// Until a request becomes a session the connection is unauthenticated:
// like the TLS path's ReadHeaderTimeout, it has DefaultHandshakeTimeout
// from its handshake to send an acceptable request (refused ones retried
// within it), or it is closed with H3_NO_ERROR (RFC 9114 5.2: a graceful
// close; the reason says why). Without that bound, QUIC keepalives would
// keep a silent, credential-less connection (and what it buffered) up
// forever.
func (g *Gateway) serveQUICConn(qc *quic.Conn) {
	mc, err := masque.NewServerConn(qc, g.log)
	if err != nil {
		g.log.Debug("connect-ip: HTTP/3 set-up", "err", err)
		_ = qc.CloseWithError(masque.ErrCodeInternal, "")
		return
	}
	ctx, cancel := context.WithTimeout(g.ctx, DefaultHandshakeTimeout)
	defer cancel()
	for {
		req, err := mc.AcceptRequest(ctx)
		if err != nil {
			switch {
			case g.ctx.Err() != nil:
				_ = qc.CloseWithError(QUICCodeGoingAway, "gateway going away; reconnect")
			case ctx.Err() != nil:
				g.log.Debug("connect-ip: no session request in time", "client", qc.RemoteAddr(), "timeout", DefaultHandshakeTimeout)
				_ = qc.CloseWithError(masque.ErrCodeNoError, fmt.Sprintf("no CONNECT-IP request accepted within %v", DefaultHandshakeTimeout))
			}
			return
		}
		if g.serveConnectIP(ctx, mc, req) {
			return
		}
	}
}

// Ready reports whether the gateway accepts new sessions: nil, or why not
// (for readiness probes).
func (g *Gateway) Ready() error {
	g.mu.Lock()
	unready := g.unready || g.draining || g.closed
	g.mu.Unlock()
	if unready {
		return fmt.Errorf("%w: draining or stopped", ErrClosed)
	}
	return nil
}

func (g *Gateway) isDraining() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.draining || g.closed
}

// h3Reply collects a refusal written through the http.ResponseWriter
// interface (refusal.write, http.Error) for IncomingRequest.Refuse.
type h3Reply struct {
	h      http.Header
	status int
	body   bytes.Buffer
}

func (w *h3Reply) Header() http.Header { return w.h }
func (w *h3Reply) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}
func (w *h3Reply) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}

// serveConnectIP authenticates a CONNECT-IP request, attaches the session
// to the stack and relays its packets until the session or connection
// ends. It reports whether the request became a session (which has then
// ended, and closed the connection).
//
// HTTP datagrams go to a client only if its SETTINGS enabled them
// (SETTINGS_H3_DATAGRAM = 1) and QUIC datagrams were negotiated (RFC 9297
// 2.1.1); the client's SETTINGS are awaited (settingsWait, within ctx, the
// connection's request budget), and without both the request is refused
// with a 400 before any sign-in work.
func (g *Gateway) serveConnectIP(ctx context.Context, mc *masque.Conn, req *masque.IncomingRequest) bool {
	qc := mc.QUIC()
	w := &h3Reply{h: http.Header{}}
	refuse := func() bool {
		if w.status == 0 {
			w.status = http.StatusOK
		}
		w.h.Del("Content-Length")
		_ = req.Refuse(w.status, w.h, w.body.String())
		return false
	}
	path := g.conf().SecretPath + ConnectIPPath
	if req.Path != path {
		// Nothing else is served here: as the TCP side, a wrong path
		// (outside Config.SecretPath) reveals nothing.
		http.NotFound(w, nil)
		return refuse()
	}
	if err := masque.CheckConnectIP(req, path); err != nil {
		var re *masque.RequestError
		errors.As(err, &re)
		http.Error(w, re.Reason, re.Status)
		return refuse()
	}
	sctx, cancel := context.WithTimeout(ctx, settingsWait)
	st, err := mc.PeerSettings(sctx)
	cancel()
	if err != nil || !st.Datagram || !qc.ConnectionState().SupportsDatagrams.Remote {
		http.Error(w, "HTTP datagrams not enabled: CONNECT-IP needs SETTINGS_H3_DATAGRAM = 1 and QUIC datagrams (RFC 9297 2.1.1)", http.StatusBadRequest)
		return refuse()
	}
	cs := qc.ConnectionState().TLS
	r := (&http.Request{
		Method: http.MethodConnect, Proto: masque.ProtocolConnectIP, ProtoMajor: 3,
		URL: &url.URL{Scheme: "https", Host: req.Authority, Path: req.Path}, Host: req.Authority,
		Header: req.Header, TLS: &cs, RemoteAddr: qc.RemoteAddr().String(),
	}).WithContext(qc.Context())
	ca := clientAddr(r)
	s, cookie, rf := g.quicSession(r, ca)
	if rf != nil {
		if rf.status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer, Basic realm="underpass"`)
		}
		rf.write(w)
		return refuse()
	}
	addr, rf := g.prepare(s)
	if rf != nil {
		rf.write(w)
		return refuse()
	}
	if cookie != "" {
		http.SetCookie(w, &http.Cookie{Name: "webvpn", Value: cookie, Secure: true, HttpOnly: true})
	}
	w.Header().Set("Underpass-Session-Expires", s.expires.UTC().Format(time.RFC3339))
	sess, err := req.Accept(w.h)
	if err != nil {
		g.log.Info("connect-ip: upgrade failed", "session", s.id, "err", err)
		return false
	}
	q := &quicLink{mc: mc, sess: sess, qc: qc}
	// A datagram of the 1350-byte QUIC packets quicConfig starts with
	// carries a 1280-byte packet (RFC 9484 10.1); the client's stack uses
	// the same MTU (quicMTU).
	q.mtu = quicMTU
	q.s = s
	sa, _ := netip.ParseAddrPort(qc.LocalAddr().String())
	if !g.register(q, "quic", ca, sa) {
		q.closeWith(QUICCodeSessionEnded, "session ended")
		return true
	}
	s.mu.Lock()
	addr6 := s.addr6
	s.mu.Unlock()
	sess.OnPacket(q.deliver)
	// One goroutine reads the client's capsules (answering ADDRESS_REQUEST,
	// injecting DATAGRAM capsules) and ends the session at the stream's
	// end (RFC 9484 3); another rejects further requests on the
	// connection. Both end with the connection, which the session's end
	// closes.
	go q.readCapsules(addr, addr6)
	go mc.RejectRequests()
	if err := g.configureConnectIP(sess, addr, addr6); err != nil {
		g.log.Warn("connect-ip: configure", "session", s.id, "err", err)
		q.closeWith(QUICCodeSessionEnded, "gateway configuration error")
		q.abort()
	} else {
		g.telemetry(&q.linkBase, "connect", endNone, nil)
	}
	q.run(q)
	return true
}

// quicSession finds or creates the session for a CONNECT-IP request: a
// session cookie resumes (keeping the address), else a bearer token, basic
// credentials or a client certificate sign in. It returns the new cookie
// for a fresh session, or the refusal.
func (g *Gateway) quicSession(r *http.Request, ca netip.AddrPort) (*session, string, *refusal) {
	c := g.conf()
	if _, err := r.Cookie("webvpn"); err == nil {
		s, rf := g.admitResume(r, ca)
		return s, "", rf
	}
	if rf := g.admitFrom(ca); rf != nil {
		return nil, "", rf
	}
	creds := auth.Credentials{RemoteAddr: ca.Addr(), UserAgent: r.UserAgent(), DeviceID: r.Header.Get("Underpass-Device-Id")}
	if r.TLS != nil {
		creds.PeerCertificates = r.TLS.PeerCertificates // the device check in device mode
	}
	var a auth.Authenticator = c.Authenticator
	if tok := bearerToken(r); tok != "" {
		creds.BearerToken = tok
	} else if u, p, ok := r.BasicAuth(); ok {
		creds.Username, creds.Password = u, p
	} else if c.ClientCerts != nil && !c.ClientCerts.DeviceMode() && len(creds.PeerCertificates) > 0 {
		a = c.ClientCerts
	} else {
		return nil, "", &refusal{http.StatusUnauthorized, "credentials required (Authorization: Bearer or Basic, or a client certificate)"}
	}
	id, err := g.authenticate(r.Context(), a, creds, ca)
	if err != nil {
		status := http.StatusUnauthorized
		var denied *auth.DeniedError
		if errors.As(err, &denied) {
			status = http.StatusForbidden
		}
		return nil, "", &refusal{status, err.Error()}
	}
	s, cookie, err := g.newSession(id, r.UserAgent(), ca)
	if errors.Is(err, ErrFull) {
		g.log.Warn("sign-in refused: gateway full", "client_ip", ca.Addr(), "user", id.User)
		return nil, "", refuseFull
	}
	if errors.Is(err, errNoAddress) {
		return nil, "", refuseNoAddress
	}
	if err != nil {
		g.log.Error("session", "err", err)
		return nil, "", refuseInternal
	}
	g.log.Info("sign-in", "session", s.id, "client_ip", ca.Addr(), "user", id.User, "method", id.Method, "transport", "quic")
	g.event(Event{Kind: EventSignIn, Session: s.id, User: id.User, ClientAddr: ca.Addr(), Transport: "quic"})
	return s, cookie, nil
}

// configureConnectIP sends the session's address, routes and DNS
// configuration capsules. A dual-stack session (addr6 valid) is assigned
// its IPv6 address too (a /128, RFC 9484 4.7.1) and gets the IPv6 routes;
// a client that uses IPv4 only (tunnel.Client today) ignores both.
func (g *Gateway) configureConnectIP(sess *masque.Session, addr, addr6 netip.Addr) error {
	assign := []masque.AssignedAddress{{Prefix: netip.PrefixFrom(addr, 32)}}
	if addr6.IsValid() {
		assign = append(assign, masque.AssignedAddress{Prefix: netip.PrefixFrom(addr6, 128)})
	}
	c := g.conf()
	inc, exc := g.policy.Load().Routes()
	extra := append([]netip.Addr{g.gwAddr}, c.DNS...)
	routes := routeRanges(inc, exc, extra, addr6.IsValid())
	if err := masque.ValidateRoutes(routes); err != nil {
		return fmt.Errorf("advertise routes: %w", err)
	}
	b := masque.AppendAddressAssign(nil, assign)
	b = masque.AppendRouteAdvertisement(b, routes)
	// With no DNS servers an empty DNS_ASSIGN says "no DNS here", so the
	// client need not wait for one (tunnel.Client waits dnsConfigWait for
	// gateways that send nothing).
	var dcs []masque.DNSConfig
	if len(c.DNS) > 0 {
		// Priority 1: the only (so the most preferred) nameserver entry;
		// zero is reserved by the draft. Each address in its family's list.
		ns := masque.DNSNameserver{Priority: 1}
		for _, a := range c.DNS {
			if a.Is4() {
				ns.IPv4 = append(ns.IPv4, a)
			} else {
				ns.IPv6 = append(ns.IPv6, a)
			}
		}
		dc := masque.DNSConfig{Nameservers: []masque.DNSNameserver{ns}}
		for _, d := range c.SearchDomains {
			dc.SearchDomains = append(dc.SearchDomains, strings.TrimSuffix(d, "."))
		}
		switch {
		case len(inc) == 0:
			dc.InternalDomains = []string{""} // full tunnel: every name (the root)
		case g.dns != nil && len(c.DNSProxy.Public) == 0:
			for _, d := range g.dns.InternalDomains() {
				dc.InternalDomains = append(dc.InternalDomains, strings.TrimSuffix(d, "."))
			}
		}
		dcs = []masque.DNSConfig{dc}
	}
	b = masque.AppendDNSAssign(b, dcs)
	if err := sess.WriteCapsules(b); err != nil {
		return fmt.Errorf("configuration capsules: %w", err)
	}
	return nil
}

// quicLink is one CONNECT-IP stream of a session.
type quicLink struct {
	linkBase
	mc   *masque.Conn
	sess *masque.Session
	qc   *quic.Conn
}

// readCapsules reads the client's capsules on the session's stream until
// it ends, which ends the session (RFC 9484 section 3):
//   - ADDRESS_REQUEST is answered with ADDRESS_ASSIGN (RFC 9484 4.7.2),
//     see answerAddressRequest;
//   - DATAGRAM (RFC 9297 3.5) with context ID 0 carries an IP packet,
//     injected as an HTTP datagram's would be; other context IDs are
//     dropped (RFC 9484 6);
//   - other types are skipped (RFC 9297 3.2);
//   - a malformed capsule resets the stream with H3_MESSAGE_ERROR (RFC
//     9297 3.3), closes the connection with the same code and ends the
//     session.
//
// The ADDRESS_ASSIGN answer and configureConnectIP's capsules are written
// under the session's write lock, so they do not interleave.
func (q *quicLink) readCapsules(addr, addr6 netip.Addr) {
	want := func(t uint64) bool { return t == masque.CapsuleAddressRequest || t == masque.CapsuleDatagram }
	for {
		typ, p, err := q.sess.ReadCapsule(want)
		if err == nil {
			switch typ {
			case masque.CapsuleDatagram:
				if pk, ok := masque.IPPayload(p); ok && len(pk) > 0 {
					q.deliver(pk)
				}
			case masque.CapsuleAddressRequest:
				var rs []masque.AssignedAddress
				if rs, err = masque.ParseAddressRequest(p); err == nil {
					err = q.sess.WriteCapsules(masque.AppendAddressAssign(nil, answerAddressRequest(rs, addr, addr6)))
					if err != nil {
						q.stopWith(EndConnLost)
						return
					}
				}
			}
		}
		if err == nil {
			continue
		}
		var se *quic.StreamError
		var he *masque.Error
		switch {
		case connectionEnded(err) || q.qc.Context().Err() != nil:
			// read (ServeDatagrams) sees the same end and tells why: a
			// logoff, or a connection lost.
			return
		case err == io.EOF || errors.As(err, &se):
			// The client ended or reset the stream.
		case errors.As(err, &he) && he.Code != masque.ErrCodeMessage:
			// A frame that may not appear on a request stream: a
			// connection error (RFC 9114 7.2.8, 9).
			q.g.log.Info("connect-ip: HTTP/3 error on the session's stream", "session", q.s.id, "err", err)
			q.closeWith(he.Code, he.Reason)
		default:
			// The stream's reset says why; the connection, which served
			// only this session, closes with the same code and the reason.
			q.g.log.Info("connect-ip: malformed capsule", "session", q.s.id, "err", err)
			q.sess.Abort(masque.ErrCodeMessage)
			q.closeWith(masque.ErrCodeMessage, "malformed capsule: "+err.Error())
		}
		q.stopWith(EndConnLost)
		return
	}
}

// connectionEnded reports whether err is the end of the QUIC connection
// rather than of one stream.
func connectionEnded(err error) bool {
	var ae *quic.ApplicationError
	var ie *quic.IdleTimeoutError
	var re *quic.StatelessResetError
	var te *quic.TransportError
	return errors.As(err, &ae) || errors.As(err, &ie) || errors.As(err, &re) || errors.As(err, &te) || errors.Is(err, net.ErrClosed)
}

// answerAddressRequest answers an ADDRESS_REQUEST's entries (RFC 9484
// 4.7.2): each gets the session's address of its family, with its Request
// ID, when it asks for any address (the unspecified one) or a prefix that
// holds the session's; otherwise the rejection form 0.0.0.0/32 or ::/128.
// The session's addresses follow with Request ID 0, since each
// ADDRESS_ASSIGN lists every assigned address (RFC 9484 4.7.1).
func answerAddressRequest(rs []masque.AssignedAddress, addr, addr6 netip.Addr) []masque.AssignedAddress {
	var out []masque.AssignedAddress
	given4, given6 := false, false
	for _, r := range rs {
		a, bits, given := addr, 32, &given4
		if r.Prefix.Addr().Is6() {
			a, bits, given = addr6, 128, &given6
		}
		if a.IsValid() && (r.Prefix.Addr().IsUnspecified() || r.Prefix.Contains(a)) {
			out = append(out, masque.AssignedAddress{RequestID: r.RequestID, Prefix: netip.PrefixFrom(a, bits)})
			*given = true
			continue
		}
		none := netip.IPv4Unspecified()
		if bits == 128 {
			none = netip.IPv6Unspecified()
		}
		out = append(out, masque.AssignedAddress{RequestID: r.RequestID, Prefix: netip.PrefixFrom(none, bits)})
	}
	if !given4 {
		out = append(out, masque.AssignedAddress{Prefix: netip.PrefixFrom(addr, 32)})
	}
	if addr6.IsValid() && !given6 {
		out = append(out, masque.AssignedAddress{Prefix: netip.PrefixFrom(addr6, 128)})
	}
	return out
}

// deliver feeds one of the client's packets into the stack, in the
// connection's datagram reader (masque.Conn.ServeDatagrams).
func (q *quicLink) deliver(p []byte) {
	q.heard()
	q.s.bytesIn.Add(uint64(len(p)))
	_ = q.port.Inject(p) // rejects are answered or counted by the stack
}

// abort stops the connection at once: the session is the connection's
// only one, so closing the connection unblocks read.
func (q *quicLink) abort() {
	q.stopWith(EndConnLost)
	_ = q.qc.CloseWithError(quic.ApplicationErrorCode(masque.ErrCodeNoError), "")
}

// closeWith ends the QUIC connection with a reason code the client acts on.
func (q *quicLink) closeWith(code quic.ApplicationErrorCode, reason string) {
	_ = q.qc.CloseWithError(code, reason)
}

// streamWindow is the QUIC flow-control window of each stream: 64 KiB
// holds the largest HEADERS frame masque accepts (16 KiB) and a
// capsule of MaxCapsulePayload, and bounds what waits unread.
const streamWindow = 64 << 10

// settingsWait bounds the wait for a client's SETTINGS once its request
// arrived: a client sends them with its first packets, so this covers a
// few retransmissions of a lost packet, not a client that sends none.
const settingsWait = 3 * time.Second

// quicResetKeyPurpose names the stateless reset key derived from the site
// key (auth.Sealer.DeriveKey).
const quicResetKeyPurpose = "quic stateless reset"

// read delivers the client's datagrams into the stack until the
// connection ends (the session's handler, deliver, runs in this
// goroutine), and says whether the client logged off.
func (q *quicLink) read() (EndReason, error) {
	err := q.mc.ServeDatagrams()
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote && ae.ErrorCode == QUICCodeLogoff {
		return EndLogoff, nil
	}
	if errors.As(err, &ae) || errors.Is(err, net.ErrClosed) {
		err = nil // an orderly close, by either side
	}
	return EndConnLost, err
}

// writePacket sends one packet as an HTTP datagram. WritePacket blocks
// while QUIC's datagram queue is full: the back-pressure reaches the
// stack. A packet too big for a datagram gets an ICMP answer we drop: the
// client's MSS keeps TCP under it, and UDP senders see the loss.
func (q *quicLink) writePacket(pk *netstack.Packet) error {
	p := pk.IP()
	q.s.bytesOut.Add(uint64(len(p)))
	err := q.sess.WritePacket(p)
	pk.Release()
	if err != nil && datagramTooLarge(err) {
		return nil // the path's datagrams shrank below the MTU: a loss
	}
	return err
}

func (q *quicLink) writeControl([]byte) error { return nil } // no control frames
func (q *quicLink) flush() error              { return nil } // every datagram is sent as written

// probe: QUIC's own idle timeout (2.5 DPD, quicConfig) finds dead peers.
func (q *quicLink) probe(time.Duration) (EndReason, error) { return endNone, nil }

// goodbye closes the QUIC connection with the code that tells the client
// what to do: stop (taken over), sign in again (session ended) or
// reconnect (going away).
func (q *quicLink) goodbye(r EndReason) {
	if r == EndGoingAway {
		_ = q.mc.GoAway() // RFC 9114 5.2, then the code that says reconnect
	}
	switch {
	case r == EndTakenOver:
		q.closeWith(QUICCodeTakenOver, r.String())
	case r.tellsClientToStop():
		q.closeWith(QUICCodeSessionEnded, r.String())
	default:
		q.closeWith(QUICCodeGoingAway, "gateway going away; reconnect")
	}
}
