package tunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/authxml"
)

// maxAuthBody bounds a sign-in request body: openconnect's XML messages are
// well under 4 KiB; 64 KiB leaves room for large certificates in form fields.
const maxAuthBody = 64 << 10

// authTimeout bounds one authenticator call (an IdP round trip at most).
const authTimeout = 20 * time.Second

// formAction is where the sign-in form posts back to.
const formAction = "/auth"

func (g *Gateway) newHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodConnect && (r.URL.Path == "/CSCOSSLC/tunnel" || r.URL.Path == "/CSTP/tunnel"):
			g.serveConnect(w, r)
		case r.Method == http.MethodPost:
			g.serveAuth(w, r)
		default:
			http.NotFound(w, r)
		}
	})
}

func clientAddr(r *http.Request) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(r.RemoteAddr)
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// serveAuth answers the XML sign-in exchange (config-auth).
func (g *Gateway) serveAuth(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxAuthBody+1))
	if err != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	if len(body) > maxAuthBody {
		http.Error(w, "request too large", http.StatusRequestEntityTooLarge)
		return
	}
	msg, err := authxml.ParseClient(body)
	if err != nil {
		// Not an AnyConnect client: look like an ordinary web server.
		http.NotFound(w, r)
		return
	}
	switch msg.Type {
	case "init":
		g.writeForm(w, "")
	case "auth-reply":
		g.signIn(w, r, msg)
	case "logout":
		if c, err := r.Cookie("webvpn"); err == nil {
			if s := g.sessions.byCookieValue(c.Value); s != nil {
				g.endSession(s, "logged out")
			}
		}
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		_, _ = w.Write(authxml.RenderLogout())
	default:
		g.writeForm(w, "")
	}
}

func (g *Gateway) writeForm(w http.ResponseWriter, errMsg string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.Header().Set("X-Transcend-Version", "1")
	_, _ = w.Write(authxml.RenderAuthRequest(authxml.Form{
		Title:   "Underpass sign-in",
		Message: "Please enter your username and password.",
		Error:   errMsg,
		Action:  formAction,
		Inputs: []authxml.Input{
			{Type: "text", Name: "username", Label: "Username:"},
			{Type: "password", Name: "password", Label: "Password:"},
		},
	}))
}

func (g *Gateway) signIn(w http.ResponseWriter, r *http.Request, msg *authxml.ClientMessage) {
	ca := clientAddr(r)
	creds := auth.Credentials{
		Username:   msg.Username(),
		Password:   msg.Password(),
		RemoteAddr: ca.Addr(),
		DeviceID:   msg.DeviceID,
		UserAgent:  r.UserAgent(),
	}
	ctx, cancel := context.WithTimeout(r.Context(), authTimeout)
	defer cancel()
	id, err := g.cfg.Authenticator.Authenticate(ctx, creds)
	if err != nil {
		reason := "Login failed."
		if !errors.Is(err, auth.ErrInvalidCredentials) && !errors.Is(err, auth.ErrNotApplicable) {
			reason = "Login failed: " + err.Error()
		}
		g.log.Info("sign-in failed", "client", ca, "user", creds.Username, "err", err)
		g.writeForm(w, reason)
		return
	}
	if id.DeviceID == "" {
		id.DeviceID = msg.DeviceID
	}
	s, cookie := g.newSession(id, r.UserAgent(), ca)
	g.log.Info("sign-in", "session", s.id, "client", ca, "user", id.User, "method", id.Method)
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.Header().Set("X-Transcend-Version", "1")
	http.SetCookie(w, &http.Cookie{Name: "webvpn", Value: cookie, Secure: true, HttpOnly: true})
	_, _ = w.Write(authxml.RenderSuccess(g.cfg.Banner, ""))
}

func (g *Gateway) newSession(id *auth.Identity, ua string, ca netip.AddrPort) (*session, string) {
	cookie, key := newCookie()
	now := time.Now()
	exp := now.Add(g.cfg.SessionTimeout)
	if !id.Expiry.IsZero() && id.Expiry.Before(exp) {
		exp = id.Expiry
	}
	s := &session{
		id: newSessionID(), cookieKey: key, ident: id, userAgent: ua,
		created: now, expires: exp, clientAddr: ca, detached: now,
	}
	g.sessions.add(s)
	return s, cookie
}

// serveConnect turns the connection into a CSTP tunnel.
func (g *Gateway) serveConnect(w http.ResponseWriter, r *http.Request) {
	c, err := r.Cookie("webvpn")
	var s *session
	if err == nil {
		s = g.sessions.byCookieValue(c.Value)
	}
	if s == nil || time.Now().After(s.expires) {
		http.Error(w, "invalid or expired session cookie", http.StatusUnauthorized)
		return
	}
	g.mu.Lock()
	stopping := g.closed || g.draining
	g.mu.Unlock()
	if stopping {
		w.Header().Set("X-Reason", "gateway is shutting down")
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	addr, err := g.leaseAddr(s)
	if err != nil {
		g.log.Warn("no address for session", "session", s.id, "err", err)
		w.Header().Set("X-Reason", "no address available")
		http.Error(w, "no address available", http.StatusServiceUnavailable)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "tunnel needs HTTP/1.1", http.StatusHTTPVersionNotSupported)
		return
	}
	// A resumed session takes over: the previous connection (if the
	// client lost it without us noticing) is closed first, so the address
	// can be attached to this one.
	s.mu.Lock()
	old := s.tun
	s.mu.Unlock()
	if old != nil {
		old.close()
		<-old.finished
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	_ = conn.SetDeadline(time.Time{})
	port, err := g.stack.Attach(addr, cstpHeaderLen, 0)
	if err != nil {
		g.log.Warn("attach failed", "session", s.id, "addr", addr, "err", err)
		_, _ = io.WriteString(conn, "HTTP/1.1 503 Service Unavailable\r\nX-Reason: address busy\r\nContent-Length: 0\r\n\r\n")
		conn.Close()
		return
	}
	t := g.newTunnelConn(s, conn, brw.Reader, port)
	if t == nil {
		return
	}
	s.mu.Lock()
	s.clientAddr = clientAddr(r) // the client may have moved (roaming)
	s.mu.Unlock()
	if _, err := conn.Write(g.connectResponse(s, addr, r)); err != nil {
		t.close() // run cleans up at once
	} else {
		g.log.Info("tunnel up", "session", s.id, "user", s.ident.User, "addr", addr, "client", clientAddr(r))
	}
	t.run()
}

// leaseAddr returns the session's address, leasing one on first use. A
// session keeps its address for its whole life, across reconnects.
func (g *Gateway) leaseAddr(s *session) (netip.Addr, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.addr.IsValid() {
		return s.addr, nil
	}
	a, err := g.pool.Allocate(s.id)
	if err != nil {
		return netip.Addr{}, err
	}
	s.addr = a
	g.sessions.setAddr(s, a)
	return a, nil
}

// connectResponse builds the CONNECT reply and its X-CSTP-* headers. It is
// sent as one write, so it travels in its own TLS record ahead of the first
// frame, as openconnect expects.
func (g *Gateway) connectResponse(s *session, addr netip.Addr, r *http.Request) []byte {
	var b strings.Builder
	h := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	b.WriteString("HTTP/1.1 200 CONNECTED\r\n")
	h("X-CSTP-Version", "1")
	h("X-CSTP-Server-Name", "underpass")
	h("X-CSTP-Address", addr.String())
	h("X-CSTP-Netmask", netmask(g.cfg.Pool.Bits()))
	for _, d := range g.cfg.DNS {
		h("X-CSTP-DNS", d.String())
	}
	if len(g.cfg.SearchDomains) > 0 {
		h("X-CSTP-Default-Domain", strings.Join(g.cfg.SearchDomains, " "))
	}
	inc, exc := g.policy.Routes()
	for _, p := range inc {
		h("X-CSTP-Split-Include", routeString(p))
	}
	for _, p := range exc {
		h("X-CSTP-Split-Exclude", routeString(p))
	}
	if len(inc) == 0 {
		h("X-CSTP-Tunnel-All-DNS", "true")
	} else if g.dns != nil && len(g.cfg.DNSProxy.Public) == 0 {
		// Split tunnel without a public resolver: the proxy refuses other
		// names, so tell clients to send only the internal domains here.
		for _, d := range g.dns.InternalDomains() {
			h("X-CSTP-Split-DNS", d)
		}
	}
	h("X-CSTP-Keepalive", strconv.Itoa(int(g.cfg.Keepalive/time.Second)))
	h("X-CSTP-DPD", strconv.Itoa(int(g.cfg.DPD/time.Second)))
	if g.cfg.IdleTimeout > 0 {
		h("X-CSTP-Idle-Timeout", strconv.Itoa(int(g.cfg.IdleTimeout/time.Second)))
	} else {
		h("X-CSTP-Idle-Timeout", "none")
	}
	h("X-CSTP-Session-Timeout", strconv.Itoa(int(time.Until(s.expires)/time.Second)))
	h("X-CSTP-Disconnected-Timeout", strconv.Itoa(int(g.cfg.ReconnectGrace/time.Second)))
	h("X-CSTP-Rekey-Method", "none")
	h("X-CSTP-MTU", strconv.Itoa(g.cfg.MTU))
	h("X-CSTP-Base-MTU", strconv.Itoa(g.cfg.MTU))
	if g.cfg.Banner != "" {
		h("X-CSTP-Banner", g.cfg.Banner)
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

// routeString formats an IPv4 route as openconnect likes it (a.b.c.d/m.m.m.m).
func routeString(p netip.Prefix) string {
	if p.Addr().Is4() {
		return p.Addr().String() + "/" + netmask(p.Bits())
	}
	return p.String()
}

func netmask(bits int) string {
	m := net.CIDRMask(bits, 32)
	return net.IP(m).String()
}

// bufReader is what the tunnel reads frames from: the hijacked connection's
// buffered reader, which may already hold bytes read past the request.
type bufReader = *bufio.Reader
