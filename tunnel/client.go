package tunnel

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/underpass/underpass/netstack"
)

// TransportMode selects how a Client reaches the gateway.
type TransportMode int

const (
	// TransportAuto tries QUIC (CONNECT-IP) first and falls back to
	// AnyConnect over TLS when UDP is blocked or disabled.
	TransportAuto TransportMode = iota
	// TransportQUIC uses only QUIC.
	TransportQUIC
	// TransportTLS uses only AnyConnect (CSTP) over TLS.
	TransportTLS
)

func (m TransportMode) String() string {
	switch m {
	case TransportQUIC:
		return "quic"
	case TransportTLS:
		return "tls"
	}
	return "auto"
}

// Fingerprints a Client can present on the TLS path (Fingerprint field).
const (
	FingerprintGo      = "go"      // Go's crypto/tls ClientHello
	FingerprintChrome  = "chrome"  // current Chrome
	FingerprintFirefox = "firefox" // current Firefox
	FingerprintIOS     = "ios"     // iOS Safari / system TLS
	FingerprintAndroid = "android" // Android 11 OkHttp
)

// Client defaults, each with its reason.
const (
	// DefaultQUICFallback is how long Auto waits for QUIC before trying
	// TLS: a QUIC handshake on a working path takes one or two RTTs; three
	// seconds is past any sane RTT and short enough to fall back quickly
	// where UDP is silently dropped.
	DefaultQUICFallback = 3 * time.Second
	// DefaultReconnectTimeout is how long a Client keeps trying to
	// reconnect before giving up: openconnect's --reconnect-timeout default,
	// and the gateway's ReconnectGrace default.
	DefaultReconnectTimeout = 300 * time.Second
	// maxBackoff caps the wait between reconnect attempts.
	maxBackoff = 15 * time.Second
	// firstBackoff is the first wait: long enough not to hammer a gateway
	// that is restarting, short enough that a roaming client barely stalls.
	firstBackoff = 250 * time.Millisecond
)

// ClientConfig configures a Client. Server and one credential are
// required; every other zero value is a useful default.
type ClientConfig struct {
	// Server is the gateway: "host", "host:port" or "https://host:port".
	// The port defaults to 443 and is used for both TCP and UDP.
	Server string
	// Transport selects QUIC, TLS or QUIC-with-TLS-fallback (default).
	Transport TransportMode
	// QUICFallback is Auto's wait for QUIC. Default DefaultQUICFallback.
	QUICFallback time.Duration

	// TokenSource returns an access or ID token (sent as Authorization:
	// Bearer). It is called at each sign-in, so it can refresh.
	TokenSource func(context.Context) (string, error)
	// Username and Password sign in with a password.
	Username, Password string
	// Certificate is a client certificate for mutual TLS.
	Certificate *tls.Certificate
	// DeviceID identifies the device to the gateway (telemetry).
	DeviceID string

	// RootCAs verifies the gateway's certificate; nil: the system roots.
	RootCAs *x509.CertPool
	// ServerName overrides the name checked in the certificate.
	ServerName string
	// PinSHA256 accepts exactly the gateway certificate whose public key
	// hashes to this value ("pin-sha256:BASE64", as openconnect's
	// --servercert), instead of verifying it against RootCAs.
	PinSHA256 string
	// Fingerprint selects the TLS ClientHello on the TLS path (Fingerprint*
	// constants). Default FingerprintGo. QUIC always uses Go's TLS.
	Fingerprint string

	// ReconnectTimeout bounds reconnect attempts after the connection is
	// lost. Default DefaultReconnectTimeout.
	ReconnectTimeout time.Duration
	// Dialer opens the TCP connection of the TLS transport, at sign-in
	// and at every reconnect: to leave through a given interface or
	// network namespace, or a proxy. Default &net.Dialer{}. QUIC uses its
	// own UDP socket.
	Dialer netstack.Dialer
	// Logger receives the client's logs. Default: silent.
	Logger *slog.Logger

	// ignoreRoutes lets tests send outside the pushed routes, to check
	// that the gateway enforces them.
	ignoreRoutes bool
}

// ErrSessionEnded is returned (wrapped) when the gateway ended the session
// and a new sign-in was refused or impossible.
var ErrSessionEnded = errors.New("tunnel: session ended by the gateway")

// ErrTakenOver is returned (wrapped) when another connection presented
// this client's session cookie and the gateway gave it the session (R-P6):
// the client stops instead of taking it back, which would start a
// reconnect storm between the two.
var ErrTakenOver = errors.New("tunnel: session taken over by another connection")

// ErrNotRouted is returned by DialContext for destinations outside the
// routes the gateway pushed.
var ErrNotRouted = errors.New("tunnel: destination is not routed through the tunnel")

// AuthError is a sign-in the gateway refused; Reason is its message.
type AuthError struct {
	Status int // HTTP status, 0 when refused in the XML exchange
	Reason string
}

func (e *AuthError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("tunnel: sign-in refused (%d): %s", e.Status, e.Reason)
	}
	return "tunnel: sign-in refused: " + e.Reason
}

// tunnelParams is what the gateway pushed at connect.
type tunnelParams struct {
	addr    netip.Addr
	addr6   netip.Addr // a dual-stack session's IPv6 address, or zero
	mtu     int
	include []netip.Prefix // empty: everything
	exclude []netip.Prefix
	dns     []netip.Addr
	search  []string
	banner  string
}

// clientTransport is one connection to the gateway.
type clientTransport interface {
	// pump moves packets between st and the gateway until the connection
	// ends; it returns why (errSessionOver when the gateway ended the
	// session for good).
	pump(ctx context.Context, st *netstack.ClientStack) error
	// close ends the connection; logoff tells the gateway to end the session.
	close(logoff bool)
	name() string
}

// errSessionOver wraps reasons the gateway gave for ending the session.
type errSessionOver struct {
	reason    string
	takenOver bool // another connection took the session over: stop
}

func (e *errSessionOver) Error() string { return "session ended: " + e.reason }

// Client is a VPN client: it keeps a tunnel to a gateway (QUIC preferred,
// AnyConnect over TLS as fallback), runs a userspace TCP/IP stack on the
// leased address and offers DialContext, a Resolver and Ping to the
// corporate network. It reconnects by itself, keeping its address. It is
// safe for use by many goroutines.
type Client struct {
	cfg    ClientConfig
	log    *slog.Logger
	host   string // host for TLS/QUIC and the Host header
	port   string
	path   string // the gateway's SecretPath, from the Server URL
	tlsCfg *tls.Config

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	cookie    string
	params    tunnelParams
	st        *netstack.ClientStack
	cur       clientTransport
	err       error // why the client stopped
	closed    bool
	reconnect int // reconnects so far
}

// Dial signs in to the gateway and brings the tunnel up. It returns when
// the tunnel is up or ctx ends.
func Dial(ctx context.Context, cfg ClientConfig) (*Client, error) {
	c, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	t, p, err := c.connect(ctx)
	if err != nil {
		c.cancel()
		return nil, err
	}
	if err := c.install(t, p); err != nil {
		t.close(true)
		c.cancel()
		return nil, err
	}
	go c.run(t)
	return c, nil
}

func newClient(cfg ClientConfig) (*Client, error) {
	var errs fieldErrs
	host, port, path, err := parseServer(cfg.Server)
	if err != nil {
		errs.add("Server", "%v", err)
	}
	if cfg.TokenSource == nil && cfg.Username == "" && cfg.Certificate == nil {
		errs.add("Username", "no credentials: set TokenSource, Username and Password, or Certificate")
	}
	switch cfg.Fingerprint {
	case "", FingerprintGo, FingerprintChrome, FingerprintFirefox, FingerprintIOS, FingerprintAndroid:
	default:
		errs.add("Fingerprint", "%q: want go, chrome, firefox, ios or android", cfg.Fingerprint)
	}
	if cfg.Transport < TransportAuto || cfg.Transport > TransportTLS {
		errs.add("Transport", "%d: unknown", cfg.Transport)
	}
	var pin []byte
	if cfg.PinSHA256 != "" {
		if pin, err = parsePin(cfg.PinSHA256); err != nil {
			errs.add("PinSHA256", "%v", err)
		}
	}
	if len(errs) > 0 {
		return nil, &ConfigError{Errs: errs}
	}
	if cfg.QUICFallback <= 0 {
		cfg.QUICFallback = DefaultQUICFallback
	}
	if cfg.ReconnectTimeout <= 0 {
		cfg.ReconnectTimeout = DefaultReconnectTimeout
	}
	if cfg.DeviceID == "" {
		cfg.DeviceID = "underpass-go"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tc := &tls.Config{RootCAs: cfg.RootCAs, ServerName: cfg.ServerName, MinVersion: tls.VersionTLS12,
		// Reconnects resume the TLS session (RFC 8446 2.2): a reconnect
		// storm after a gateway restart costs the gateway no certificate
		// signature per client. A few entries: one gateway name, QUIC
		// and TLS.
		ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	if tc.ServerName == "" {
		tc.ServerName = host
	}
	if cfg.Certificate != nil {
		tc.Certificates = []tls.Certificate{*cfg.Certificate}
	}
	if pin != nil {
		// The pin replaces chain verification, as openconnect's --servercert.
		tc.InsecureSkipVerify = true
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tunnel: gateway sent no certificate")
			}
			h := sha256.Sum256(cs.PeerCertificates[0].RawSubjectPublicKeyInfo)
			if string(h[:]) != string(pin) {
				return fmt.Errorf("tunnel: gateway certificate pin-sha256:%s does not match the configured pin", base64.StdEncoding.EncodeToString(h[:]))
			}
			return nil
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{cfg: cfg, log: log, host: host, port: port, path: path, tlsCfg: tc, ctx: ctx, cancel: cancel, done: make(chan struct{})}, nil
}

// parseServer splits "host", "host:port" or "https://host:port/path" into
// host, port (default 443) and path (the gateway's secret path, or "").
func parseServer(s string) (host, port, path string, err error) {
	if s == "" {
		return "", "", "", errors.New("required")
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", "", "", err
		}
		if u.Scheme != "https" {
			return "", "", "", fmt.Errorf("%q: scheme must be https", s)
		}
		s, path = u.Host, strings.TrimSuffix(u.Path, "/")
	}
	if h, p, err := net.SplitHostPort(s); err == nil {
		return h, p, path, nil
	}
	return strings.Trim(s, "[]"), "443", path, nil
}

// parsePin reads "pin-sha256:BASE64" (or bare BASE64).
func parsePin(p string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(p, "pin-sha256:"))
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("%q: want pin-sha256:<base64 of a SHA-256>", p)
	}
	return b, nil
}

// connect signs in (or resumes with the cookie) over the configured
// transport(s).
func (c *Client) connect(ctx context.Context) (clientTransport, tunnelParams, error) {
	mode := c.cfg.Transport
	if mode == TransportTLS {
		return c.connectTLS(ctx)
	}
	qctx := ctx
	if mode == TransportAuto {
		var cancel context.CancelFunc
		qctx, cancel = context.WithTimeout(ctx, c.cfg.QUICFallback)
		defer cancel()
	}
	t, p, err := c.connectQUIC(qctx)
	if err == nil || mode == TransportQUIC {
		return t, p, err
	}
	var ae *AuthError
	if errors.As(err, &ae) || ctx.Err() != nil {
		return nil, tunnelParams{}, err // refused, not unreachable: TLS would be refused too
	}
	c.log.Info("QUIC unavailable; falling back to TLS", "err", err)
	return c.connectTLS(ctx)
}

// install makes p the tunnel's parameters, building the client stack on
// the first connect and rebuilding it if the address changed.
func (c *Client) install(t clientTransport, p tunnelParams) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return net.ErrClosed
	}
	if c.st == nil || c.st.Addr() != p.addr || c.st.Addr6() != p.addr6 || c.st.MTU() != p.mtu {
		if c.st != nil {
			c.log.Warn("tunnel address changed; open connections are lost", "old", c.st.Addr(), "new", p.addr, "old6", c.st.Addr6(), "new6", p.addr6)
			_ = c.st.Close()
		}
		st, err := netstack.NewClient(netstack.ClientConfig{Addr: p.addr, Addr6: p.addr6, MTU: p.mtu, Headroom: cstpHeaderLen})
		if err != nil {
			return err
		}
		c.st = st
	}
	c.params = p
	c.cur = t
	c.log.Info("tunnel up", "transport", t.name(), "address", p.addr, "address6", p.addr6, "mtu", p.mtu)
	return nil
}

// run pumps packets and reconnects until Close or a final error.
func (c *Client) run(t clientTransport) {
	defer close(c.done)
	for {
		c.mu.Lock()
		st := c.st
		c.mu.Unlock()
		err := t.pump(c.ctx, st)
		t.close(false)
		if c.ctx.Err() != nil {
			return
		}
		var over *errSessionOver
		var p tunnelParams
		switch {
		case errors.As(err, &over) && over.takenOver:
			t, err = nil, fmt.Errorf("%w: %s", ErrTakenOver, over.reason)
		case errors.As(err, &over):
			c.log.Info("gateway ended the session; signing in again", "reason", over.reason)
			c.mu.Lock()
			c.cookie = ""
			c.mu.Unlock()
			fallthrough
		default:
			if over == nil {
				c.log.Info("connection lost; reconnecting", "transport", t.name(), "err", err)
			}
			t, p, err = c.reconnectLoop()
			if err == nil {
				err = c.install(t, p)
			}
		}
		if err != nil {
			if t != nil {
				t.close(true)
			}
			c.mu.Lock()
			c.err = err
			st := c.st
			c.mu.Unlock()
			c.log.Warn("tunnel down for good", "err", err)
			c.cancel()
			if st != nil {
				_ = st.Close() // pending and future dials fail at once
			}
			return
		}
		c.mu.Lock()
		c.reconnect++
		c.mu.Unlock()
	}
}

// reconnectLoop retries connect with jittered exponential backoff until it
// works, the reconnect timeout passes, or the gateway refuses the sign-in.
func (c *Client) reconnectLoop() (clientTransport, tunnelParams, error) {
	deadline := time.Now().Add(c.cfg.ReconnectTimeout)
	wait := firstBackoff
	for {
		ctx, cancel := context.WithDeadline(c.ctx, deadline)
		t, p, err := c.connect(ctx)
		cancel()
		if err == nil {
			return t, p, nil
		}
		var ae *AuthError
		if errors.As(err, &ae) {
			c.mu.Lock()
			hadCookie := c.cookie != ""
			c.cookie = "" // a refused cookie: sign in afresh once
			c.mu.Unlock()
			if !hadCookie {
				return nil, tunnelParams{}, fmt.Errorf("%w: %w", ErrSessionEnded, err)
			}
			continue
		}
		if c.ctx.Err() != nil {
			return nil, tunnelParams{}, c.ctx.Err()
		}
		if time.Now().Add(wait).After(deadline) {
			return nil, tunnelParams{}, fmt.Errorf("tunnel: gave up reconnecting after %v: %w", c.cfg.ReconnectTimeout, err)
		}
		c.log.Debug("reconnect failed", "err", err, "retry_in", wait)
		select {
		case <-time.After(wait):
		case <-c.ctx.Done():
			return nil, tunnelParams{}, c.ctx.Err()
		}
		// Jitter (±25%) keeps a fleet of clients from reconnecting in step
		// after a gateway restart.
		wait = min(maxBackoff, time.Duration(float64(wait)*(1.5+rand.Float64())))
	}
}

// credentials returns the bearer token (from TokenSource) for a sign-in.
func (c *Client) token(ctx context.Context) (string, error) {
	if c.cfg.TokenSource == nil {
		return "", nil
	}
	tok, err := c.cfg.TokenSource(ctx)
	if err != nil {
		return "", fmt.Errorf("tunnel: token source: %w", err)
	}
	return tok, nil
}

func (c *Client) getCookie() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cookie
}

func (c *Client) setCookie(v string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cookie = v
}

// stack returns the current client stack, or an error after Close.
func (c *Client) stack() (*netstack.ClientStack, tunnelParams, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, tunnelParams{}, c.err
	}
	if c.closed || c.st == nil {
		return nil, tunnelParams{}, net.ErrClosed
	}
	return c.st, c.params, nil
}

// Addr returns the client's in-tunnel address.
func (c *Client) Addr() netip.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.params.addr
}

// Addr6 returns the client's in-tunnel IPv6 address when the gateway made
// the session dual-stack (tunnel.Config.Pool6), else the zero Addr.
func (c *Client) Addr6() netip.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.params.addr6
}

// Transport returns the transport in use: "quic" or "tls".
func (c *Client) Transport() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return ""
	}
	return c.cur.name()
}

// Routes returns the networks the gateway routes for this client (include
// minus exclude; an empty include means everything). DNS has the pushed
// DNS servers and search domains.
func (c *Client) Routes() (include, exclude []netip.Prefix) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.params.include), slices.Clone(c.params.exclude)
}

// DNS returns the pushed DNS servers and search domains.
func (c *Client) DNS() ([]netip.Addr, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.params.dns), slices.Clone(c.params.search)
}

// Reconnects returns how many times the tunnel was re-established.
func (c *Client) Reconnects() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reconnect
}

// Done is closed when the client stops (Close, or a final error: see Err).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the client stopped, or nil.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// routed reports whether p lets the client send to a.
func (p *tunnelParams) routed(a netip.Addr) bool {
	if a == p.addr || a == p.addr6 {
		return false
	}
	for _, e := range p.exclude {
		if e.Contains(a) {
			return false
		}
	}
	if len(p.include) == 0 || slices.Contains(p.dns, a) {
		return true
	}
	for _, i := range p.include {
		if i.Contains(a) {
			return true
		}
	}
	return false
}

// DialContext connects to address through the tunnel. network is "tcp",
// "tcp4", "udp" or "udp4", and "tcp6" or "udp6" on a dual-stack session
// (Addr6); a host name is resolved with the pushed DNS (LookupNetIP), and
// its addresses are tried in the resolver's order. An IPv6 address is
// refused without an IPv6 tunnel address.
func (c *Client) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	st, p, err := c.stack()
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a.Unmap()}
	} else if addrs, err = c.LookupNetIP(ctx, host); err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	var lastErr error
	for _, a := range addrs {
		if a.Is6() && !p.addr6.IsValid() {
			lastErr = fmt.Errorf("tunnel: %v: the gateway gave this session no IPv6 address (tunnel.Config.Pool6)", a)
			continue
		}
		if (a.Is4() && strings.HasSuffix(network, "6")) || (a.Is6() && strings.HasSuffix(network, "4")) {
			lastErr = fmt.Errorf("tunnel: %v is not a %s address", a, network)
			continue
		}
		if !c.cfg.ignoreRoutes && !p.routed(a) {
			lastErr = fmt.Errorf("%w: %v", ErrNotRouted, a)
			continue
		}
		conn, err := st.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return conn, nil
		}
		lastErr = err
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("tunnel: %s: no address", host)
	}
	return nil, &net.OpError{Op: "dial", Net: network, Err: lastErr}
}

// Resolver returns a resolver whose queries travel through the tunnel to
// the pushed DNS servers. The gateway's DNS proxy expands single-label
// names with the pushed search list; LookupNetIP applies the list here too.
func (c *Client) Resolver() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			st, p, err := c.stack()
			if err != nil {
				return nil, err
			}
			if len(p.dns) == 0 {
				return nil, errors.New("tunnel: the gateway pushed no DNS servers")
			}
			var lastErr error
			for _, d := range p.dns {
				conn, err := st.DialContext(ctx, network, netip.AddrPortFrom(d, 53).String())
				if err == nil {
					return conn, nil
				}
				lastErr = err
			}
			return nil, lastErr
		},
	}
}

// LookupNetIP resolves host with the pushed DNS servers, trying the pushed
// search domains for names without a dot: A records, and AAAA too on a
// dual-stack session.
func (c *Client) LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error) {
	_, p, err := c.stack()
	if err != nil {
		return nil, err
	}
	network := "ip4"
	if p.addr6.IsValid() {
		network = "ip"
	}
	r := c.Resolver()
	names := []string{host}
	if !strings.Contains(strings.TrimSuffix(host, "."), ".") {
		names = names[:0]
		for _, d := range p.search {
			names = append(names, host+"."+strings.TrimSuffix(d, ".")+".")
		}
		names = append(names, host+".")
	}
	var lastErr error
	for _, n := range names {
		addrs, err := r.LookupNetIP(ctx, network, n)
		if err == nil && len(addrs) > 0 {
			for i := range addrs {
				addrs[i] = addrs[i].Unmap()
			}
			return addrs, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// Ping sends one ICMP echo through the tunnel and returns the round-trip
// time.
func (c *Client) Ping(ctx context.Context, a netip.Addr) (time.Duration, error) {
	st, _, err := c.stack()
	if err != nil {
		return 0, err
	}
	return st.Ping(ctx, a)
}

// Close logs off and stops the client. It is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.done
		return nil
	}
	c.closed = true
	t := c.cur
	c.mu.Unlock()
	if t != nil {
		t.close(true)
	}
	c.cancel()
	<-c.done
	c.mu.Lock()
	st := c.st
	c.mu.Unlock()
	if st != nil {
		_ = st.Close()
	}
	return nil
}
