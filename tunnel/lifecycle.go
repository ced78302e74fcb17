package tunnel

// The session core: what every transport (CSTP over TLS, DTLS, CONNECT-IP
// over QUIC) shares, so each gives one answer per situation. Sign-in
// itself differs by protocol (the XML form, HTTP auth on CONNECT-IP); from
// the cookie on, everything is here: admission of a resume, the address
// lease and the stack port (once per session, so flows outlive
// connections), takeover, registration, teardown and telemetry. This is
// ocserv's sec-mod side; the per-connection data loop (its worker) is
// link.go, its timers timers.go.

import (
	"errors"
	"net/http"
	"net/netip"
	"time"
)

// refusal is the answer to a connection the gateway will not tunnel: the
// HTTP status and a reason the client can show (X-Reason).
type refusal struct {
	status int
	reason string
}

// The refusals every transport gives alike. 401 tells openconnect its
// cookie is rejected and to stop (anyconnect-protocol.md §1.9), and
// tunnel.Client to sign in again; 503 to retry later.
var (
	refuseBadCookie = &refusal{http.StatusUnauthorized, "invalid or expired session cookie"}
	refuseBanned    = &refusal{http.StatusTooManyRequests, "too many failed sign-ins from this address; try later"}
	refuseDraining  = &refusal{http.StatusServiceUnavailable, "gateway is shutting down"}
	refuseFull      = &refusal{http.StatusServiceUnavailable, "the gateway is full; try again later"}
	refuseNoAddress = &refusal{http.StatusServiceUnavailable, "no address available"}
	// A resume whose address another live session holds on this server.
	// 503, not 401: the client keeps its cookie and retries (through the
	// balancer, possibly on another server); handing it another address
	// instead would make openconnect 9.01 abort ("Reconnect gave different
	// Legacy IP address").
	refuseAddrTaken = &refusal{http.StatusServiceUnavailable, "this session's address is held by another session on this server"}
	refuseInternal  = &refusal{http.StatusInternalServerError, "internal error"}
)

// write answers w with the refusal.
func (rf *refusal) write(w http.ResponseWriter) {
	w.Header().Set("X-Reason", rf.reason)
	http.Error(w, rf.reason, rf.status)
}

// admitResume resumes the session named by r's webvpn cookie, for a
// connection from ca on any transport. In order: a banned address, a
// draining gateway, a cookie naming no live session, and the access policy
// (conditional access holds on every resume, so a user removed from the
// allowed group is out at the next reconnect and the session ends).
func (g *Gateway) admitResume(r *http.Request, ca netip.AddrPort) (*session, *refusal) {
	if rf := g.admitFrom(ca); rf != nil {
		return nil, rf
	}
	c, err := r.Cookie("webvpn")
	if err != nil {
		return nil, refuseBadCookie
	}
	s, err := g.resume(c.Value)
	if errors.Is(err, ErrFull) {
		return nil, refuseFull
	}
	if s == nil || time.Now().After(s.expires) {
		return nil, refuseBadCookie
	}
	s.mu.Lock()
	if !s.clientAddr.IsValid() {
		s.clientAddr = ca // rebuilt from its cookie here: its site lease records where it is from
	}
	s.mu.Unlock()
	if end, err := g.renew(r.Context(), s); err != nil {
		g.log.Info("resume refused: sign-in renewal failed", "session", s.id, "user", s.ident.User, "reason", end.String(), "err", err)
		g.endSession(s, end)
		return nil, renewRefusal(end, err)
	}
	if p := g.conf().Policy; p != nil {
		if err := p.Check(r.Context(), s.identity()); err != nil {
			g.log.Info("resume denied", "session", s.id, "user", s.ident.User, "err", err)
			g.endSession(s, EndPolicyDenied)
			return nil, &refusal{http.StatusUnauthorized, err.Error()}
		}
	}
	return s, nil
}

// admitFrom refuses connections from a banned address and any while the
// gateway drains: the checks that come before credentials or cookies.
func (g *Gateway) admitFrom(ca netip.AddrPort) *refusal {
	if b := g.conf().Bans; b != nil && b.Banned(ca.Addr()) {
		return refuseBanned
	}
	if g.isDraining() {
		return refuseDraining
	}
	return nil
}

// errNoAddress: the pool has no address left for a new session.
var errNoAddress = errors.New("tunnel: no address available")

// prepare leases s's address (unless sign-in did) and attaches its stack
// port, once per session: later connections reuse both, so flows outlive
// connections. A session resumed from a sealed cookie claims the address
// the cookie carries, and is refused if that address is not free here.
// On a dual-stack gateway (Config.Pool6) the same holds for the IPv6
// address, and the port owns both; a cookie sealed before Pool6 was set
// gets any IPv6 address, and one that carries an IPv6 address on a
// gateway without Pool6 resumes IPv4-only. The port stays parked until a
// link registers. The IPv6 address is in s.addr6 (read under s.mu).
func (g *Gateway) prepare(s *session) (netip.Addr, *refusal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return netip.Addr{}, refuseBadCookie
	}
	if s.port != nil {
		return s.addr, nil
	}
	if !s.addr.IsValid() {
		a, rf := g.lease(s)
		if rf != nil {
			return netip.Addr{}, rf
		}
		s.addr = a
		g.sessions.setAddr(s, a)
	}
	if g.pool6 != nil && !s.addr6.IsValid() {
		a, rf := g.lease6(s)
		if rf != nil {
			// The IPv4 lease stays the session's: a retry (the client
			// keeps its cookie) needs it again, and endSession returns it.
			return netip.Addr{}, rf
		}
		s.addr6 = a
		g.sessions.setAddr(s, a)
	}
	addrs := []netip.Addr{s.addr}
	if s.addr6.IsValid() {
		addrs = append(addrs, s.addr6)
	}
	// Headroom for the longest frame header of any transport (CSTP's 8
	// bytes); DTLS and CONNECT-IP use less of it.
	p, err := g.stack.AttachAddrs(addrs, cstpHeaderLen, 0)
	if err != nil {
		g.log.Warn("attach failed", "session", s.id, "addr", s.addr, "addr6", s.addr6, "err", err)
		return netip.Addr{}, &refusal{http.StatusServiceUnavailable, "address busy"}
	}
	p.Park()
	s.port = p
	return s.addr, nil
}

// lease leases s's IPv4 address: the one its cookie carries (s.want), or
// any when the cookie carries none (sealed before addresses were sealed).
// With site-wide leases (Site.Store) the store confirms it.
func (g *Gateway) lease(s *session) (netip.Addr, *refusal) {
	if !s.want.IsValid() {
		if g.siteLeases() != nil && g.conf().Site.Strict && g.site.down.Load() {
			return netip.Addr{}, refuseSiteStrict
		}
		a, err := g.allocate(s, g.pool)
		if err != nil {
			g.log.Warn("no address for session", "session", s.id, "err", err)
			return netip.Addr{}, refuseNoAddress
		}
		return a, nil
	}
	if rf := g.claim(s, s.want); rf != nil {
		return netip.Addr{}, rf
	}
	return s.want, nil
}

// lease6 leases s's IPv6 address of Pool6: the one its cookie carries
// (s.want6), or any when the cookie carries none (sealed before Pool6 was
// set). With site-wide leases the store confirms it, as lease does the
// IPv4 address.
func (g *Gateway) lease6(s *session) (netip.Addr, *refusal) {
	if !s.want6.IsValid() {
		if g.siteLeases() != nil && g.conf().Site.Strict && g.site.down.Load() {
			return netip.Addr{}, refuseSiteStrict
		}
		a, err := g.allocate(s, g.pool6)
		if err != nil {
			g.log.Warn("no IPv6 address for session", "session", s.id, "err", err)
			return netip.Addr{}, refuseNoAddress
		}
		return a, nil
	}
	if rf := g.claim(s, s.want6); rf != nil {
		return netip.Addr{}, rf
	}
	return s.want6, nil
}

// register makes l the session's connection: a previous connection is
// taken over (its client told to stop, R-P6) and waited for. It returns
// false when the gateway is closed or the session ended meanwhile; l is
// then finished and the caller releases what it holds.
func (g *Gateway) register(l link, transport string, ca, sa netip.AddrPort) bool {
	b := l.base()
	s := b.s
	b.g, b.cfg, b.transport = g, g.conf(), transport
	b.clientAddr, b.serverAddr = ca, sa
	b.done, b.finished = make(chan struct{}), make(chan struct{})
	for {
		s.mu.Lock()
		old, ended := s.link, s.ended
		if old == nil && !ended {
			g.mu.Lock()
			if g.closed || g.draining { // Shutdown stops links once: none may start after
				g.mu.Unlock()
				s.mu.Unlock()
				close(b.finished)
				return false
			}
			g.links[l] = struct{}{}
			g.wg.Add(1)
			g.mu.Unlock()
			s.link = l
			s.clientAddr = ca // the client may have moved (roaming)
			b.port = s.port
			_ = b.port.SetMTU(b.mtu) // 0 or quicMTU: within [576, Config.MTU >= MinMTU]
			b.port.Unpark()
			b.start = time.Now()
			b.in0, b.out0 = s.bytesIn.Load(), s.bytesOut.Load()
			s.mu.Unlock()
			return true
		}
		s.mu.Unlock()
		if ended {
			close(b.finished)
			return false
		}
		g.log.Info("session taken over", "session", s.id, "user", s.ident.User,
			"old_client_ip", old.base().clientAddr.Addr(), "client_ip", ca.Addr(), "transport", transport)
		g.event(Event{Kind: EventTakeover, Session: s.id, User: s.ident.User, ClientAddr: ca.Addr(), Transport: transport, Reason: EndTakenOver})
		stopAndWait(old, EndTakenOver)
	}
}

// unregister detaches l after its data loop ended: the session's port is
// parked (its flows live on through the reconnect grace), the disconnect
// is logged, and the session ends if r says so. It marks l finished.
func (g *Gateway) unregister(l link, r EndReason, detail error) {
	b := l.base()
	s := b.s
	s.mu.Lock()
	if s.link == l {
		s.link = nil
		s.detached = time.Now()
		b.port.Park()
	}
	s.mu.Unlock()
	g.mu.Lock()
	delete(g.links, l)
	g.mu.Unlock()
	g.telemetry(b, "disconnect", r, detail)
	close(b.finished)
	if r.EndsSession() {
		g.endSession(s, r)
	}
	g.wg.Done()
}

// goodbyeTimeout is how long a connection's writer gets to tell its client
// why it ends before the connection is cut: a live client takes a frame in
// milliseconds; a dead peer or a stuck write never does.
const goodbyeTimeout = time.Second

// stopAndWait stops l for r and waits until it has finished, cutting it
// off if its goodbye takes longer than goodbyeTimeout.
func stopAndWait(l link, r EndReason) {
	b := l.base()
	b.stopWith(r)
	select {
	case <-b.finished:
	case <-time.After(goodbyeTimeout):
		l.abort()
		<-b.finished
	}
}

// endSession removes s for good: its connection is told why (when the
// reason says the client must stop), its cookie stops working unless the
// gateway is only going away, its flows are reset and its address returns
// to the pool.
func (g *Gateway) endSession(s *session, r EndReason) {
	// ended first: prepare refuses an ended session, so no address or
	// port is leased after the values read here.
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended = true
	l, port, addr, addr6 := s.link, s.port, s.addr, s.addr6
	s.mu.Unlock()
	// The session's DTLS counts leave the table (which Stats walks) and
	// enter the retired totals in one step, so no snapshot misses them.
	g.dtlsTraffic.Retire(&s.dtls, func() { g.sessions.remove(s) })
	if r != EndGoingAway {
		g.revoke(s, r)
	}
	if l != nil {
		stopAndWait(l, r)
	}
	if port != nil {
		port.Close() // resets the session's flows
	}
	if addr.IsValid() {
		g.release(s, addr, r)
	}
	if addr6.IsValid() {
		g.release(s, addr6, r)
	}
	g.log.Info("session ended", "session", s.id, "user", s.ident.User, "reason", r.String(),
		"bytes_in", s.bytesIn.Load(), "bytes_out", s.bytesOut.Load(),
		"duration", time.Since(s.created).Round(time.Second))
	g.event(Event{Kind: EventSessionEnd, Session: s.id, User: s.ident.User, Reason: r,
		BytesIn: s.bytesIn.Load(), BytesOut: s.bytesOut.Load()})
}

// telemetry logs a connect or disconnect event (R-O3) with the fields an
// operator's SIEM expects. Credentials never appear in it.
func (g *Gateway) telemetry(b *linkBase, op string, r EndReason, detail error) {
	s := b.s
	s.mu.Lock()
	assigned := s.addr
	s.mu.Unlock()
	attrs := []any{
		"op", op, "session", s.id, "client_ip", b.clientAddr.Addr(), "server_ip", b.serverAddr.Addr(),
		"gateway_ip", g.gwAddr, "assigned_ip", assigned, "user", s.ident.User, "device_id", s.ident.DeviceID,
		"user_agent", s.userAgent, "transport", b.transport,
	}
	e := Event{Kind: EventConnect, Session: s.id, User: s.ident.User, ClientAddr: b.clientAddr.Addr(), Transport: b.transport}
	if op == "disconnect" {
		reason := r.String()
		if detail != nil {
			reason += ": " + detail.Error()
		}
		e.Kind, e.Reason, e.Err = EventDisconnect, r, detail
		e.BytesIn, e.BytesOut = s.bytesIn.Load()-b.in0, s.bytesOut.Load()-b.out0
		attrs = append(attrs, "reason", reason, "bytes_in", e.BytesIn, "bytes_out", e.BytesOut,
			"duration", time.Since(b.start).Round(time.Millisecond))
	}
	g.log.Info("telemetry", attrs...)
	g.event(e)
}
