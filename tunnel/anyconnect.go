package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"html"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/authxml"
	"github.com/underpass/underpass/internal/core/cstp"
	"github.com/underpass/underpass/tunnel/site"
)

// maxAuthBody bounds a sign-in request body: openconnect's XML messages are
// well under 4 KiB; 64 KiB leaves room for large certificates in form fields.
const maxAuthBody = 64 << 10

// authTimeout bounds one authenticator call (an IdP round trip at most).
const authTimeout = 20 * time.Second

// formAction is where the sign-in form posts back to.
const formAction = "/auth"

// newHandler serves the VPN's endpoints and hands every other request to
// next: AnyConnect sign-in and CONNECT, and CONNECT-IP when the hosting
// server speaks HTTP/3. With Config.SecretPath set, nothing outside that
// path (and no CONNECT without a live session cookie) reveals the VPN.
func (g *Gateway) newHandler(next http.Handler) http.Handler {
	if next == nil {
		next = http.NotFoundHandler()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secret := g.conf().SecretPath
		inSecret := secret == "" || r.URL.Path == secret || strings.HasPrefix(r.URL.Path, secret+"/")
		switch {
		case r.Method == http.MethodConnect && r.Proto == "connect-ip":
			if r.URL.Path != secret+ConnectIPPath {
				next.ServeHTTP(w, r)
				return
			}
			// Only an HTTP/3 server hosting Mount's handler gets here:
			// CONNECT-IP runs on the gateway's own HTTP/3 layer.
			http.Error(w, "CONNECT-IP is served on the gateway's own QUIC listener (Gateway.ServeQUIC), not through Mount", http.StatusNotImplemented)
		case r.Method == http.MethodConnect && (r.URL.Path == "/CSCOSSLC/tunnel" || r.URL.Path == "/CSTP/tunnel"):
			if secret != "" && !g.liveCookie(r) {
				next.ServeHTTP(w, r)
				return
			}
			g.serveConnect(w, r)
		case g.conf().SSO != nil && r.Method != http.MethodPost && g.conf().SSO.Handles(r.URL.Path):
			// The browser's steps of an SSO sign-in.
			g.conf().SSO.ServeHTTP(w, r)
		case r.Method == http.MethodPost && inSecret:
			g.serveAuth(w, r, next)
		case r.Method == http.MethodGet && inSecret && isAnyConnectClient(r):
			// openconnect's fallback after a 401 it cannot answer (a
			// Bearer offer without a token): GET the form, then POST.
			g.writeForm(w, "")
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// liveCookie reports whether r carries the cookie of a session this
// gateway can resume.
func (g *Gateway) liveCookie(r *http.Request) bool {
	c, err := r.Cookie("webvpn")
	if err != nil {
		return false
	}
	s, _ := g.resume(c.Value)
	return s != nil
}

// isAnyConnectClient tells AnyConnect-protocol clients from browsers, so
// only they get the sign-in form on GET; everybody else sees a 404.
func isAnyConnectClient(r *http.Request) bool {
	return r.Header.Get("X-Transcend-Version") != "" || r.Header.Get("X-Aggregate-Auth") != "" ||
		strings.Contains(strings.ToLower(r.UserAgent()), "anyconnect")
}

func clientAddr(r *http.Request) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(r.RemoteAddr)
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// serveAuth answers the XML sign-in exchange (config-auth), the OIDC
// bearer flow and client-certificate sign-in.
func (g *Gateway) serveAuth(w http.ResponseWriter, r *http.Request, next http.Handler) {
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
		msg = formReply(r, body)
	}
	if msg == nil {
		// Not an AnyConnect client: the website's (by default a 404),
		// with the body we read put back.
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r)
		return
	}
	ca := clientAddr(r)
	creds := auth.Credentials{RemoteAddr: ca.Addr(), DeviceID: msg.DeviceID, UserAgent: r.UserAgent()}
	if r.TLS != nil {
		creds.PeerCertificates = r.TLS.PeerCertificates // the device check in device mode
	}
	switch {
	case msg.Type == "logout":
		if c, err := r.Cookie("webvpn"); err == nil {
			if s := g.sessions.byCookieValue(c.Value); s != nil {
				g.endSession(s, EndLogoff)
			}
		}
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		_, _ = w.Write(authxml.RenderLogout())
	case bearerToken(r) != "":
		creds.BearerToken = bearerToken(r)
		g.signIn(w, r, g.conf().Authenticator, creds)
	case msg.Type == "init" && g.conf().ClientCerts != nil && !g.conf().ClientCerts.DeviceMode() && len(creds.PeerCertificates) > 0:
		g.signIn(w, r, g.conf().ClientCerts, creds)
	case msg.Type == "init" && g.conf().OfferBearer && r.Header.Get("X-Support-HTTP-Auth") == "true":
		// openconnect 9 (http-auth.c): a client holding a token repeats
		// the request with Authorization: Bearer; "fallback" lets one
		// without a token retry and get the form.
		w.Header().Set("WWW-Authenticate", "Bearer")
		// openconnect matches this name case-sensitively, so it bypasses
		// Go's canonicalisation (which would send X-Http-Auth-Support).
		w.Header()["X-HTTP-Auth-Support"] = []string{"fallback"}
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusUnauthorized)
	case msg.Type == "init" && g.conf().SSO != nil && msg.HasAuthMethod(auth.SSOCapability) &&
		// After the Bearer offer: openconnect 9.01 sends
		// X-Support-HTTP-Auth only in --token-mode, and such a client
		// must get its 401 (the SSO form would start a browser).
		r.URL.Path != g.conf().SecretPath+passwordPath:
		g.writeSSOForm(w, r)
	case msg.Type == "auth-reply" && g.conf().SSO != nil && hasInput(msg, "sso-token"):
		g.finishSSO(w, r, msg, creds)
	case msg.Type == "auth-reply":
		creds.Username, creds.Password = msg.Username(), msg.Password()
		g.signIn(w, r, g.conf().Authenticator, creds)
	default:
		g.writeForm(w, "")
	}
}

// passwordPath (under SecretPath) always offers the password form, beside
// SSO at the root: openconnect 9.01 cannot choose between SSO and a
// password inside one form (sso.md §6).
const passwordPath = "/password"

// strapHeader carries the client's STRAP DH public key (sso.md §1).
const strapHeader = "X-AnyConnect-STRAP-DH-Pubkey"

func hasInput(m *authxml.ClientMessage, name string) bool {
	_, ok := m.Inputs[name]
	return ok
}

// writeSSOForm answers an SSO-capable init with the SSO v2 form. A client
// without a usable STRAP key cannot receive the token: it gets the
// password form.
func (g *Gateway) writeSSOForm(w http.ResponseWriter, r *http.Request) {
	key, err := auth.ParseSTRAPKey(r.Header.Get(strapHeader))
	if err != nil {
		g.log.Info("sso: init without a usable STRAP key; offering the password form", "client_ip", clientAddr(r).Addr(), "err", err)
		g.writeForm(w, "")
		return
	}
	f, err := g.conf().SSO.Begin(key)
	if err != nil {
		g.log.Error("sso: begin", "err", err)
		g.writeRefusal(w, "Login failed: internal error")
		return
	}
	writeAuthXML(w, authxml.RenderAuthRequest(authxml.Form{
		Title:   "Underpass sign-in",
		Message: "Sign in with your browser.",
		Banner:  g.conf().PreLoginBanner,
		Action:  g.conf().SecretPath + formAction,
		Opaque:  f.Opaque,
		SSO: &authxml.SSOForm{
			Login: f.LoginURL, LoginFinal: f.FinalURL,
			TokenCookieName: "underpass_sso_token", ErrorCookieName: "underpass_sso_error",
		},
	}))
}

// finishSSO completes an SSO sign-in at the auth-reply; failures end it
// with a refusal (no form), which openconnect prints before exiting.
func (g *Gateway) finishSSO(w http.ResponseWriter, r *http.Request, msg *authxml.ClientMessage, creds auth.Credentials) {
	sso := g.conf().SSO
	a := auth.AuthenticatorFunc(func(ctx context.Context, _ auth.Credentials) (*auth.Identity, error) {
		key, err := auth.ParseSTRAPKey(r.Header.Get(strapHeader))
		if err != nil {
			return nil, &auth.SSOError{Reason: "the client sent no usable STRAP key"}
		}
		return sso.Finish(ctx, key, html.UnescapeString(string(msg.Opaque)), msg.Inputs["sso-token"])
	})
	g.signInWith(w, r, a, creds, g.writeRefusal)
}

func (g *Gateway) writeRefusal(w http.ResponseWriter, reason string) {
	writeAuthXML(w, authxml.RenderRefusal("Underpass sign-in", reason))
}

// formReply reads the non-XML sign-in openconnect falls back to after an
// HTTP-auth offer it cannot use: the form's fields posted URL-encoded. It
// returns nil for anything else.
func formReply(r *http.Request, body []byte) *authxml.ClientMessage {
	ct := r.Header.Get("Content-Type")
	if !strings.HasPrefix(ct, "application/x-www-form-urlencoded") || !isAnyConnectClient(r) {
		return nil
	}
	v, err := url.ParseQuery(string(body))
	if err != nil || (v.Get("username") == "" && v.Get("password") == "") {
		return nil
	}
	return &authxml.ClientMessage{Type: "auth-reply", Inputs: map[string]string{
		"username": v.Get("username"), "password": v.Get("password"),
	}}
}

// bearerToken returns the token of an "Authorization: Bearer" header.
func bearerToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// writeAuthXML answers with a sign-in document.
func writeAuthXML(w http.ResponseWriter, doc []byte) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.Header().Set("X-Transcend-Version", "1")
	_, _ = w.Write(doc)
}

func (g *Gateway) writeForm(w http.ResponseWriter, errMsg string) {
	writeAuthXML(w, authxml.RenderAuthRequest(authxml.Form{
		Title:   "Underpass sign-in",
		Message: "Please enter your username and password.",
		Banner:  g.conf().PreLoginBanner,
		Error:   errMsg,
		Action:  g.conf().SecretPath + formAction,
		Inputs: []authxml.Input{
			{Type: "text", Name: "username", Label: "Username:"},
			{Type: "password", Name: "password", Label: "Password:"},
		},
	}))
}

// signIn checks creds with a, then the access policy, and on success
// creates the session and hands out its cookie. Failures are answered with
// the form and a readable reason (a 401 would make openconnect give up).
func (g *Gateway) signIn(w http.ResponseWriter, r *http.Request, a auth.Authenticator, creds auth.Credentials) {
	g.signInWith(w, r, a, creds, g.writeForm)
}

// signInWith is signIn with fail answering a refusal.
func (g *Gateway) signInWith(w http.ResponseWriter, r *http.Request, a auth.Authenticator, creds auth.Credentials, fail func(http.ResponseWriter, string)) {
	ca := clientAddr(r)
	id, err := g.authenticate(r.Context(), a, creds, ca)
	if err != nil {
		var denied *auth.DeniedError
		var ssoErr *auth.SSOError
		reason := "Login failed."
		switch {
		case errors.As(err, &denied):
			reason = "Access denied: " + denied.Reason
		case errors.As(err, &ssoErr):
			reason = "Login failed: " + ssoErr.Reason
		case errors.Is(err, auth.ErrDeviceCertificate):
			reason = "Login failed: a valid device certificate is required."
		case errors.Is(err, auth.ErrInvalidCredentials) || errors.Is(err, auth.ErrNotApplicable):
		default: // the IdP is unreachable or misconfigured
			reason = "Login failed: " + err.Error()
		}
		fail(w, reason)
		return
	}
	s, cookie, err := g.newSession(id, r.UserAgent(), ca)
	if errors.Is(err, ErrFull) {
		g.log.Warn("sign-in refused: gateway full", "client_ip", ca.Addr(), "user", id.User)
		fail(w, "Login failed: "+refuseFull.reason+".")
		return
	}
	if errors.Is(err, errNoAddress) {
		g.writeForm(w, "Login failed: "+refuseNoAddress.reason+".")
		return
	}
	if err != nil {
		g.log.Error("session", "err", err)
		fail(w, "Login failed: internal error")
		return
	}
	g.log.Info("sign-in", "session", s.id, "client_ip", ca.Addr(), "user", id.User, "method", id.Method)
	g.event(Event{Kind: EventSignIn, Session: s.id, User: id.User, ClientAddr: ca.Addr(), Transport: "tls"})
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.Header().Set("X-Transcend-Version", "1")
	http.SetCookie(w, &http.Cookie{Name: "webvpn", Value: cookie, Secure: true, HttpOnly: true})
	_, _ = w.Write(authxml.RenderSuccess(g.conf().Banner, ""))
}

// authenticate checks creds with a, then the access policy. Failed
// credentials earn the source address ban points; an IdP outage does not.
// Every failure is counted and logged (without secrets).
func (g *Gateway) authenticate(ctx context.Context, a auth.Authenticator, creds auth.Credentials, ca netip.AddrPort) (*auth.Identity, error) {
	c := g.conf()
	ctx, cancel := context.WithTimeout(ctx, authTimeout)
	defer cancel()
	id, err := a.Authenticate(ctx, creds)
	if err == nil && c.ClientCerts != nil && c.ClientCerts.DeviceMode() {
		// Device certificate AND user (R-A7): the certificate names the
		// device, the user signed in above.
		var dev string
		if dev, err = c.ClientCerts.Device(creds.PeerCertificates); err == nil {
			id.DeviceID = dev
		}
	}
	if err == nil && c.Policy != nil {
		err = c.Policy.Check(ctx, id)
	}
	if err != nil {
		if errors.Is(err, auth.ErrInvalidCredentials) || errors.Is(err, auth.ErrNotApplicable) {
			if c.Bans != nil && !c.banExempt(ca.Addr()) {
				was := c.Bans.Banned(ca.Addr())
				if c.Bans.AddFailure(ca.Addr(), 0) && !was {
					g.log.Warn("client banned", "client_ip", ca.Addr())
					g.event(Event{Kind: EventBanned, ClientAddr: ca.Addr()})
					if until, ok := c.Bans.BannedUntil(ca.Addr()); ok {
						g.publish(site.Record{Kind: site.Banned, Addr: ca.Addr().Unmap(), Until: until})
					}
				}
			}
		}
		g.signInFailures.Add(1)
		g.log.Info("sign-in failed", "client_ip", ca.Addr(), "user", creds.Username, "err", err)
		g.event(Event{Kind: EventSignInFailed, User: creds.Username, ClientAddr: ca.Addr(), Err: err})
		return nil, err
	}
	if id.DeviceID == "" {
		id.DeviceID = creds.DeviceID
	}
	g.signIns.Add(1)
	return id, nil
}

// newSession registers a signed-in identity, leases its address and
// returns its cookie: a sealed token carrying the address when a Sealer is
// configured (so any server of the site resumes the session with the same
// address), else 256 random bits. With Config.Pool6 the session leases an
// IPv6 address too, sealed next to the IPv4 one. It returns ErrFull at
// MaxSessions and errNoAddress when a pool is exhausted.
func (g *Gateway) newSession(id *auth.Identity, ua string, ca netip.AddrPort) (*session, string, error) {
	now := time.Now()
	exp := now.Add(g.conf().SessionTimeout)
	// A renewable sign-in (auth.Identity.Refresh) is renewed at its
	// token's expiry rather than ended there.
	if !id.Expiry.IsZero() && id.Expiry.Before(exp) && !g.conf().KeepSessionPastTokenExpiry && id.Refresh == "" {
		exp = id.Expiry
	}
	s := &session{id: newSessionID(), ident: id, userAgent: ua, created: now, expires: exp, clientAddr: ca, detached: now}
	var sc *auth.SessionClaims
	if g.conf().Sealer != nil {
		sc = auth.NewSessionClaims(id, g.claimNames(), now, exp)
		s.id = sc.ID
	}
	a, err := g.allocate(s, g.pool)
	if err != nil {
		g.log.Warn("no address for session", "session", s.id, "err", err)
		return nil, "", errNoAddress
	}
	s.addr = a
	if g.pool6 != nil {
		if s.addr6, err = g.allocate(s, g.pool6); err != nil {
			g.release(s, a, EndLogoff)
			g.log.Warn("no IPv6 address for session", "session", s.id, "err", err)
			return nil, "", errNoAddress
		}
	}
	release := func() {
		g.release(s, a, EndLogoff)
		if s.addr6.IsValid() {
			g.release(s, s.addr6, EndLogoff)
		}
	}
	var cookie string
	if sc != nil {
		sc.Address, sc.Address6 = a, s.addr6
		if cookie, err = g.conf().Sealer.Seal(sc); err != nil {
			release()
			return nil, "", err
		}
		s.cookieKey = sha256.Sum256([]byte(cookie))
	} else {
		cookie, s.cookieKey = newCookie()
	}
	if !g.sessions.add(s, g.conf().MaxSessions) {
		release()
		return nil, "", ErrFull
	}
	g.sessions.setAddr(s, a)
	if s.addr6.IsValid() {
		g.sessions.setAddr(s, s.addr6)
	}
	return s, cookie, nil
}

// claimNames lists the token claims a sealed cookie keeps for the policy
// re-check on resume.
func (g *Gateway) claimNames() []string {
	if cn, ok := g.conf().Policy.(interface{ ClaimNames() []string }); ok {
		return cn.ClaimNames()
	}
	return nil
}

// resume finds the session a cookie belongs to: a live one, or (with a
// Sealer) one sealed by any gateway of the site, which is re-created here
// unless that would exceed Config.MaxSessions (ErrFull); prepare then
// claims the address sealed in the cookie. It returns nil
// and no error for a cookie that names no session.
func (g *Gateway) resume(cookie string) (*session, error) {
	if s := g.sessions.byCookieValue(cookie); s != nil {
		return s, nil
	}
	if g.conf().Sealer == nil {
		return nil, nil
	}
	sc, err := g.conf().Sealer.Open(cookie)
	if err != nil || g.isRevoked(sc.ID) {
		return nil, nil
	}
	s := &session{
		id: sc.ID, cookieKey: sha256.Sum256([]byte(cookie)), ident: sc.Identity(),
		created: sc.IssuedAt, expires: sc.Expiry, detached: time.Now(),
		want:  sc.Address, // claimed by prepare: the address stays the session's on every server
		want6: sc.Address6,
	}
	got := g.sessions.addOrGet(s, g.conf().MaxSessions)
	if got == nil {
		g.log.Warn("resume refused: gateway full", "session", sc.ID, "user", s.ident.User)
		return nil, ErrFull
	}
	return got, nil
}

// serveConnect turns the connection into a CSTP tunnel.
func (g *Gateway) serveConnect(w http.ResponseWriter, r *http.Request) {
	ca := clientAddr(r)
	s, rf := g.admitResume(r, ca)
	if rf != nil {
		rf.write(w)
		return
	}
	addr, rf := g.prepare(s)
	if rf != nil {
		rf.write(w)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "tunnel needs HTTP/1.1", http.StatusHTTPVersionNotSupported)
		return
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	_ = conn.SetDeadline(time.Time{})
	var sa netip.AddrPort
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		sa, _ = netip.ParseAddrPort(la.String())
	}
	t := newCSTPLink(s, conn, brw.Reader)
	t.dtlsOffer = g.negotiateDTLS(r) // before register: abort reads it
	if !g.register(t, "tls", ca, sa) {
		_, _ = io.WriteString(conn, "HTTP/1.1 401 Unauthorized\r\nX-Reason: session ended\r\nContent-Length: 0\r\n\r\n")
		conn.Close()
		return
	}
	if t.dtlsOffer != nil {
		g.offerDTLS(t)
	}
	req := cstp.ParseRequest(r.Header)
	if _, err := conn.Write(g.connectResponse(s, addr, t.dtlsOffer, req.WantsIPv6())); err != nil {
		t.abort() // the data loop cleans up at once
	} else {
		g.telemetry(&t.linkBase, "connect", endNone, nil)
	}
	t.run(t)
}

// connectResponse builds the CONNECT reply and its X-CSTP-* (and, with a
// DTLS offer, X-DTLS-*) headers, through the one encoder the Go client's
// parser shares (internal/core/cstp). It is sent as one write, so it travels in
// its own TLS record ahead of the first frame, as openconnect expects.
// A dual-stack session's IPv6 address is offered (X-CSTP-Address-IP6, with
// its pool's prefix length) only to a client that asks for IPv6 (want6):
// one that does not gets the IPv4 reply it always got, though its port
// owns the IPv6 address too.
func (g *Gateway) connectResponse(s *session, addr netip.Addr, dtls *dtlsOffer, want6 bool) []byte {
	c := g.conf()
	inc, exc := g.policy.Load().Routes()
	var addr6 netip.Prefix
	if want6 {
		s.mu.Lock()
		if s.addr6.IsValid() {
			addr6 = netip.PrefixFrom(s.addr6, c.Pool6.Bits())
		}
		s.mu.Unlock()
	}
	if addr6.IsValid() {
		// IPv4 routes first, so every IPv6 one goes in the -IP6 headers
		// (cstp.Tunnel.Address6); the order of routes means nothing.
		byFamily := func(a, b netip.Prefix) int {
			switch {
			case a.Addr().Is4() == b.Addr().Is4():
				return 0
			case a.Addr().Is4():
				return -1
			}
			return 1
		}
		slices.SortStableFunc(inc, byFamily)
		slices.SortStableFunc(exc, byFamily)
	}
	t := &cstp.Tunnel{
		ServerName: "underpass", Address: addr, Netmask: c.Pool.Bits(), Address6: addr6,
		DNS: c.DNS, DefaultDomain: c.SearchDomains,
		SplitInclude: inc, SplitExclude: exc,
		// Full tunnel: every name resolves through the gateway.
		TunnelAllDNS: len(inc) == 0,
		Keepalive:    c.Keepalive, DPD: c.DPD, IdleTimeout: c.IdleTimeout,
		SessionTimeout: time.Until(s.expires), DisconnectedTimeout: c.ReconnectGrace,
		MTU: c.MTU, BaseMTU: c.MTU,
		Proxy:  cstp.Proxy{PACURL: c.Proxy.PACURL, Server: c.Proxy.Server, Exceptions: c.Proxy.Exclude},
		Banner: c.Banner,
	}
	if len(inc) > 0 && g.dns != nil && len(c.DNSProxy.Public) == 0 {
		// Split tunnel without a public resolver: the proxy refuses other
		// names, so tell clients to send only the internal domains here.
		t.SplitDNS = g.dns.InternalDomains()
	}
	if dtls != nil {
		// openconnect's tunnel MTU is the larger of the CSTP and DTLS
		// ones, and a packet over the DTLS MTU fails the DTLS write
		// (GnuTLS) and takes DTLS down: with DTLS the whole tunnel uses
		// the DTLS MTU, as ocserv does. Bigger packets from the corporate
		// side still fit CSTP.
		t.MTU, t.BaseMTU = min(c.MTU, dtls.mtu), dtls.base
		t.DTLS = g.dtlsHeaders(dtls)
	}
	return t.AppendResponse(nil)
}

// bufReader is what the tunnel reads frames from: the hijacked connection's
// buffered reader, which may already hold bytes read past the request.
type bufReader = *bufio.Reader
