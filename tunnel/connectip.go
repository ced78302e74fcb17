package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"

	"github.com/underpass/underpass/auth"
)

// ConnectIPPath is where the gateway serves CONNECT-IP (RFC 9484): the
// fixed form of the RFC's default template, because connect-ip-go (and so
// this gateway) does not support IP flow forwarding (template variables).
// Clients use the template "https://<gateway>/.well-known/masque/ip/".
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
)

// quicConnKey carries the *quic.Conn of a request in its context.
type quicConnKey struct{}

// QUICConnContext is an http3.Server ConnContext that lets the gateway's
// CONNECT-IP handler close the QUIC connection with a reason code. An
// embedding HTTP/3 server should set it (or call it from its own).
func QUICConnContext(ctx context.Context, c *quic.Conn) context.Context {
	return context.WithValue(ctx, quicConnKey{}, c)
}

// quicConfig is the QUIC configuration for the gateway's listener.
func (g *Gateway) quicConfig() *quic.Config {
	c := g.conf()
	return &quic.Config{
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
		// A client runs one CONNECT-IP stream; a few more cover retries.
		MaxIncomingStreams: 16,
	}
}

// ConnectIPHandler returns the HTTP/3 handler for CONNECT-IP, for mounting
// in an existing http3.Server (with EnableDatagrams and, ideally,
// ConnContext: QUICConnContext). Other requests are answered 404.
func (g *Gateway) ConnectIPHandler() http.Handler { return g.newHandler(nil) }

// ServeQUIC serves HTTP/3 with CONNECT-IP on pc until Close or Shutdown,
// then returns ErrClosed. It closes pc.
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
	if g.h3 == nil {
		tc := g.tlsConf.Clone()
		tc.MinVersion = tls.VersionTLS13 // QUIC is TLS 1.3 only
		tc.NextProtos = []string{http3.NextProtoH3}
		g.h3 = &http3.Server{
			Handler:         g.ConnectIPHandler(),
			TLSConfig:       tc,
			QUICConfig:      g.quicConfig(),
			EnableDatagrams: true,
			ConnContext:     QUICConnContext,
			Logger:          g.log,
		}
	}
	srv := g.h3
	g.quicPCs = append(g.quicPCs, pc)
	g.mu.Unlock()
	err := srv.Serve(pc)
	pc.Close()
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, quic.ErrServerClosed) || g.ctx.Err() != nil || g.isDraining() {
		return ErrClosed
	}
	return err
}

// Ready reports whether the gateway accepts new sessions: nil, or why not
// (for readiness probes).
func (g *Gateway) Ready() error {
	if g.isDraining() {
		return fmt.Errorf("%w: draining or stopped", ErrClosed)
	}
	return nil
}

func (g *Gateway) isDraining() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.draining || g.closed
}

// serveConnectIP authenticates a CONNECT-IP request, attaches the session
// to the stack and relays its packets until the session or connection ends.
func (g *Gateway) serveConnectIP(w http.ResponseWriter, r *http.Request) {
	tmpl, err := uritemplate.New("https://" + r.Host + r.URL.Path)
	if err != nil {
		http.Error(w, "bad authority", http.StatusBadRequest)
		return
	}
	preq, err := connectip.ParseProxyRequest(r, tmpl)
	if err != nil {
		status := http.StatusBadRequest
		var perr *connectip.ProxyRequestParseError
		if errors.As(err, &perr) {
			status = perr.HTTPStatus
		}
		http.Error(w, err.Error(), status)
		return
	}
	ca := clientAddr(r)
	if ra, ok := r.Context().Value(http3.RemoteAddrContextKey).(net.Addr); ok {
		ca, _ = netip.ParseAddrPort(ra.String())
		ca = netip.AddrPortFrom(ca.Addr().Unmap(), ca.Port())
	}
	c := g.conf()
	if c.Bans != nil && c.Bans.Banned(ca.Addr()) {
		refuse(w, http.StatusTooManyRequests, "too many failed sign-ins from this address; try later")
		return
	}
	if g.isDraining() {
		refuse(w, http.StatusServiceUnavailable, "gateway is shutting down")
		return
	}
	s, cookie, status, reason := g.quicSession(r, ca)
	if s == nil {
		if status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer, Basic realm="underpass"`)
		}
		refuse(w, status, reason)
		return
	}
	addr, err := g.leaseAddr(s)
	if err != nil {
		g.log.Warn("no address for session", "session", s.id, "err", err)
		refuse(w, http.StatusServiceUnavailable, "no address available")
		return
	}
	s.mu.Lock()
	old := s.tun
	s.mu.Unlock()
	if old != nil { // the client came back before we noticed it had gone
		old.close()
		<-old.base().finished
	}
	port, err := g.stack.Attach(addr, 0, 0)
	if err != nil {
		g.log.Warn("attach failed", "session", s.id, "addr", addr, "err", err)
		refuse(w, http.StatusServiceUnavailable, "address busy")
		return
	}
	if cookie != "" {
		http.SetCookie(w, &http.Cookie{Name: "webvpn", Value: cookie, Secure: true, HttpOnly: true})
	}
	w.Header().Set("Underpass-Session-Expires", s.expires.UTC().Format(time.RFC3339))
	conn, err := (&connectip.Proxy{}).Proxy(w, preq)
	if err != nil {
		port.Close()
		g.log.Info("connect-ip: upgrade failed", "session", s.id, "err", err)
		return
	}
	q := &quicConn{conn: conn}
	q.qc, _ = r.Context().Value(quicConnKey{}).(*quic.Conn)
	q.s, q.port, q.transport = s, port, "quic"
	if !g.register(q) {
		port.Close()
		conn.Close()
		return
	}
	s.mu.Lock()
	s.clientAddr = ca
	s.mu.Unlock()
	q.clientAddr = ca
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		q.serverAddr, _ = netip.ParseAddrPort(la.String())
	}
	if err := g.configureConnectIP(conn, addr); err != nil {
		g.log.Warn("connect-ip: configure", "session", s.id, "err", err)
		q.closeWith(QUICCodeSessionEnded, "gateway configuration error")
		q.close()
	} else {
		g.telemetry(&q.linkBase, "connect", "")
	}
	q.run()
}

// refuse answers a request the gateway will not tunnel, with a reason a
// client can show.
func refuse(w http.ResponseWriter, status int, reason string) {
	w.Header().Set("X-Reason", reason)
	http.Error(w, reason, status)
}

// quicSession finds or creates the session for a CONNECT-IP request: a
// session cookie resumes (keeping the address), else a bearer token, basic
// credentials or a client certificate sign in. It returns the new cookie
// for a fresh session, or the HTTP status and reason for a refusal.
func (g *Gateway) quicSession(r *http.Request, ca netip.AddrPort) (*session, string, int, string) {
	c := g.conf()
	if _, err := r.Cookie("webvpn"); err == nil {
		s, err := g.resumeChecked(r)
		switch {
		case errors.Is(err, errBadCookie):
			return nil, "", http.StatusUnauthorized, err.Error()
		case err != nil:
			return nil, "", http.StatusForbidden, err.Error()
		}
		return s, "", 0, ""
	}
	creds := auth.Credentials{RemoteAddr: ca.Addr(), UserAgent: r.UserAgent(), DeviceID: r.Header.Get("Underpass-Device-Id")}
	var a auth.Authenticator = c.Authenticator
	if tok := bearerToken(r); tok != "" {
		creds.BearerToken = tok
	} else if u, p, ok := r.BasicAuth(); ok {
		creds.Username, creds.Password = u, p
	} else if c.ClientCerts != nil && r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		creds.PeerCertificates = r.TLS.PeerCertificates
		a = c.ClientCerts
	} else {
		return nil, "", http.StatusUnauthorized, "credentials required (Authorization: Bearer or Basic, or a client certificate)"
	}
	id, err := g.authenticate(r.Context(), a, creds, ca)
	if err != nil {
		status := http.StatusUnauthorized
		var denied *auth.DeniedError
		if errors.As(err, &denied) {
			status = http.StatusForbidden
		}
		return nil, "", status, err.Error()
	}
	s, cookie, err := g.newSession(id, r.UserAgent(), ca)
	if errors.Is(err, ErrFull) {
		g.log.Warn("sign-in refused: gateway full", "client_ip", ca.Addr(), "user", id.User)
		return nil, "", http.StatusServiceUnavailable, "the gateway is full; try again later"
	}
	if err != nil {
		g.log.Error("session", "err", err)
		return nil, "", http.StatusInternalServerError, "internal error"
	}
	g.log.Info("sign-in", "session", s.id, "client_ip", ca.Addr(), "user", id.User, "method", id.Method, "transport", "quic")
	return s, cookie, 0, ""
}

// configureConnectIP sends the session's address, routes and DNS
// configuration capsules.
func (g *Gateway) configureConnectIP(conn *connectip.Conn, addr netip.Addr) error {
	if err := conn.AssignAddresses([]netip.Prefix{netip.PrefixFrom(addr, 32)}); err != nil {
		return fmt.Errorf("assign address: %w", err)
	}
	c := g.conf()
	inc, exc := g.policy.Load().Routes()
	extra := append([]netip.Addr{g.gwAddr}, c.DNS...)
	if err := conn.AdvertiseRoute(routeRanges(inc, exc, extra)); err != nil {
		return fmt.Errorf("advertise routes: %w", err)
	}
	if len(c.DNS) == 0 {
		return nil
	}
	dc := connectip.DNSConfiguration{
		// Priority 1: the only (so the most preferred) nameserver entry;
		// zero is reserved by the draft.
		Nameservers: []connectip.DNSNameserver{{ServicePriority: 1, IPv4Addresses: slices.Clone(c.DNS)}},
	}
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
	if err := conn.SendDNSConfiguration([]connectip.DNSConfiguration{dc}); err != nil {
		return fmt.Errorf("dns configuration: %w", err)
	}
	return nil
}

// quicConn is one CONNECT-IP stream of a session.
type quicConn struct {
	linkBase
	conn *connectip.Conn
	qc   *quic.Conn // nil when hosted by a server without QUICConnContext
}

// close stops the connection at once.
func (q *quicConn) close() {
	q.stop()
	q.conn.Close()
}

// closeWith ends the QUIC connection with a reason code the client acts on.
func (q *quicConn) closeWith(code quic.ApplicationErrorCode, reason string) {
	if q.qc != nil {
		_ = q.qc.CloseWithError(code, reason)
	}
	q.conn.Close()
}

// quicReadBuf fits the largest QUIC datagram (a 1500-byte path MTU) and
// more: connect-ip-go copies each packet into it.
const quicReadBuf = 2048

// run relays packets until the connection or session ends.
func (q *quicConn) run() {
	g, s := q.g, q.s
	readerDone := make(chan error, 1)
	go func() {
		readerDone <- pumpDatagrams(q.conn.ReadPacket, func(p []byte) {
			s.bytesIn.Add(uint64(len(p)))
			_ = q.port.Inject(p) // rejects are answered or counted by the stack
		})
	}()
	tick := time.NewTicker(q.cfg.DPD / 2) // idle checks at the DPD pace, like the TLS path
	defer tick.Stop()
	expiry := time.NewTimer(time.Until(s.expires))
	defer expiry.Stop()
	var (
		reason string
		end    bool
		idle   = newIdleWatch(s)
		pkts   = q.port.Packets()
	)
loop:
	for {
		select {
		case pk, ok := <-pkts:
			if !ok {
				reason = "port closed"
				break loop
			}
			f := pk.Frame()
			s.bytesOut.Add(uint64(len(f)))
			// WritePacket blocks while QUIC's datagram queue is full: the
			// back-pressure reaches the stack. A packet too big for a
			// datagram gets an ICMP answer we drop: the client's MSS keeps
			// TCP under it, and UDP senders see the loss.
			_, err := q.conn.WritePacket(f)
			pk.Release()
			if err != nil {
				reason = "write: " + err.Error()
				break loop
			}
		case err := <-readerDone:
			readerDone <- err
			var ae *quic.ApplicationError
			if q.qc != nil {
				// The stream error may arrive a moment before the
				// connection's own close reason.
				select {
				case <-q.qc.Context().Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
			if q.qc != nil && errors.As(context.Cause(q.qc.Context()), &ae) && ae.Remote && ae.ErrorCode == QUICCodeLogoff {
				reason, end = "client logged off", true
				break loop
			}
			reason = "connection lost"
			if err != nil && !errors.Is(err, net.ErrClosed) {
				reason += ": " + err.Error()
			}
			break loop
		case now := <-tick.C:
			if idle.expired(now, q.cfg.IdleTimeout) {
				reason, end = "idle timeout", true
				q.closeWith(QUICCodeSessionEnded, reason)
				break loop
			}
		case <-expiry.C:
			reason, end = "session timeout", true
			q.closeWith(QUICCodeSessionEnded, reason)
			break loop
		case <-q.done:
			reason = "closed"
			if q.bye.Load() {
				q.closeWith(QUICCodeSessionEnded, "session ended")
			} else {
				q.closeWith(QUICCodeGoingAway, "gateway going away; reconnect")
			}
			break loop
		}
	}
	q.close()
	<-readerDone
	q.port.Close()
	for pk := range pkts {
		pk.Release()
	}
	g.unregister(q, reason, end)
}
