package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/netstack"
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
	// QUICCodeTakenOver: another connection presented this session's
	// cookie and took it over (R-P6); do not reconnect, or the two
	// clients would keep kicking each other out.
	QUICCodeTakenOver quic.ApplicationErrorCode = 0x5550_0004
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
		// A client runs one CONNECT-IP stream; a few more cover retries.
		MaxIncomingStreams: 16,
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
			Handler:         g.handler,
			TLSConfig:       tc,
			QUICConfig:      g.quicConfig(),
			EnableDatagrams: true,
			ConnContext:     QUICConnContext,
			Logger:          g.log,
		}
	}
	srv := g.h3
	g.udpPCs = append(g.udpPCs, pc)
	g.mu.Unlock()
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
	var err error
	if ln, lerr := tr.ListenEarly(http3.ConfigureTLSConfig(srv.TLSConfig), srv.QUICConfig); lerr != nil {
		err = lerr
	} else {
		err = srv.ServeListener(ln)
		ln.Close()
	}
	tr.Close()
	pc.Close()
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, quic.ErrServerClosed) || g.ctx.Err() != nil || g.isDraining() {
		return ErrClosed
	}
	return err
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
	s, cookie, rf := g.quicSession(r, ca)
	if rf != nil {
		if rf.status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer, Basic realm="underpass"`)
		}
		rf.write(w)
		return
	}
	addr, rf := g.prepare(s)
	if rf != nil {
		rf.write(w)
		return
	}
	if cookie != "" {
		http.SetCookie(w, &http.Cookie{Name: "webvpn", Value: cookie, Secure: true, HttpOnly: true})
	}
	w.Header().Set("Underpass-Session-Expires", s.expires.UTC().Format(time.RFC3339))
	conn, err := (&connectip.Proxy{}).Proxy(w, preq)
	if err != nil {
		g.log.Info("connect-ip: upgrade failed", "session", s.id, "err", err)
		return
	}
	q := &quicLink{conn: conn}
	// A datagram of the 1350-byte QUIC packets quicConfig starts with
	// carries a 1280-byte packet (RFC 9484 10.1); the client's stack uses
	// the same MTU (quicMTU).
	q.mtu = quicMTU
	q.qc, _ = r.Context().Value(quicConnKey{}).(*quic.Conn)
	q.s = s
	var sa netip.AddrPort
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		sa, _ = netip.ParseAddrPort(la.String())
	}
	if !g.register(q, "quic", ca, sa) {
		q.closeWith(QUICCodeSessionEnded, "session ended")
		return
	}
	s.mu.Lock()
	addr6 := s.addr6
	s.mu.Unlock()
	if err := g.configureConnectIP(conn, addr, addr6); err != nil {
		g.log.Warn("connect-ip: configure", "session", s.id, "err", err)
		q.closeWith(QUICCodeSessionEnded, "gateway configuration error")
		q.abort()
	} else {
		g.telemetry(&q.linkBase, "connect", endNone, nil)
	}
	q.run(q)
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
func (g *Gateway) configureConnectIP(conn *connectip.Conn, addr, addr6 netip.Addr) error {
	assign := []netip.Prefix{netip.PrefixFrom(addr, 32)}
	if addr6.IsValid() {
		assign = append(assign, netip.PrefixFrom(addr6, 128))
	}
	if err := conn.AssignAddresses(assign); err != nil {
		return fmt.Errorf("assign address: %w", err)
	}
	c := g.conf()
	inc, exc := g.policy.Load().Routes()
	extra := append([]netip.Addr{g.gwAddr}, c.DNS...)
	if err := conn.AdvertiseRoute(routeRanges(inc, exc, extra, addr6.IsValid())); err != nil {
		return fmt.Errorf("advertise routes: %w", err)
	}
	if len(c.DNS) == 0 {
		// An empty update: "no DNS here", so the client need not wait
		// for one (tunnel.Client waits dnsConfigWait for gateways that
		// send nothing).
		if err := conn.SendDNSConfiguration(nil); err != nil {
			return fmt.Errorf("dns configuration: %w", err)
		}
		return nil
	}
	// Priority 1: the only (so the most preferred) nameserver entry;
	// zero is reserved by the draft. Each address in its family's list.
	ns := connectip.DNSNameserver{ServicePriority: 1}
	for _, a := range c.DNS {
		if a.Is4() {
			ns.IPv4Addresses = append(ns.IPv4Addresses, a)
		} else {
			ns.IPv6Addresses = append(ns.IPv6Addresses, a)
		}
	}
	dc := connectip.DNSConfiguration{Nameservers: []connectip.DNSNameserver{ns}}
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

// quicLink is one CONNECT-IP stream of a session.
type quicLink struct {
	linkBase
	conn *connectip.Conn
	qc   *quic.Conn // nil when hosted by a server without QUICConnContext
}

// abort stops the connection at once.
func (q *quicLink) abort() {
	q.stopWith(EndConnLost)
	q.conn.Close()
}

// closeWith ends the QUIC connection with a reason code the client acts on.
func (q *quicLink) closeWith(code quic.ApplicationErrorCode, reason string) {
	if q.qc != nil {
		_ = q.qc.CloseWithError(code, reason)
	}
	q.conn.Close()
}

// quicResetKeyPurpose names the stateless reset key derived from the site
// key (auth.Sealer.DeriveKey).
const quicResetKeyPurpose = "quic stateless reset"

// quicReadBuf fits the largest QUIC datagram (a 1500-byte path MTU) and
// more: connect-ip-go copies each packet into it.
const quicReadBuf = 2048

// read feeds the client's datagrams into the stack until the stream ends.
func (q *quicLink) read() (EndReason, error) {
	s := q.s
	err := pumpDatagrams(q.conn.ReadPacket, func(p []byte) {
		q.heard()
		s.bytesIn.Add(uint64(len(p)))
		_ = q.port.Inject(p) // rejects are answered or counted by the stack
	})
	if q.qc != nil {
		// The stream error may arrive a moment before the connection's
		// own close reason.
		select {
		case <-q.qc.Context().Done():
		case <-time.After(100 * time.Millisecond):
		}
		var ae *quic.ApplicationError
		if errors.As(context.Cause(q.qc.Context()), &ae) && ae.Remote && ae.ErrorCode == QUICCodeLogoff {
			return EndLogoff, nil
		}
	}
	if errors.Is(err, net.ErrClosed) {
		err = nil
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
	_, err := q.conn.WritePacket(p)
	pk.Release()
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
	switch {
	case r == EndTakenOver:
		q.closeWith(QUICCodeTakenOver, r.String())
	case r.tellsClientToStop():
		q.closeWith(QUICCodeSessionEnded, r.String())
	default:
		q.closeWith(QUICCodeGoingAway, "gateway going away; reconnect")
	}
}
