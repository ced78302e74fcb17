package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/underpass/underpass/dnsproxy"
	"github.com/underpass/underpass/internal/core/ippool"
	"github.com/underpass/underpass/internal/core/policy"
	"github.com/underpass/underpass/internal/core/tally"
	"github.com/underpass/underpass/internal/core/udpmux"
	"github.com/underpass/underpass/netstack"
	"github.com/underpass/underpass/tunnel/site"
)

// stallLimit is how long the stack may wait on a client's full packet
// queue: a healthy session writer frees a slot within milliseconds, so a
// queue full for 100 ms means the client is not reading; past that its
// packets are dropped (TCP backs off) rather than holding the stack's
// goroutines, which every other client's flows share.
const stallLimit = 100 * time.Millisecond

// ErrClosed is returned by Serve and ListenAndServe after Close or Shutdown.
var ErrClosed = errors.New("tunnel: gateway closed")

// ErrFull is returned when Config.MaxSessions sessions exist already.
var ErrFull = errors.New("tunnel: gateway full")

// ErrNoSession is returned for an unknown session id.
var ErrNoSession = errors.New("tunnel: no such session")

// leaser is what the session core needs of this server's pool
// (*ippool.Pool). The site-wide leases (siteleases.go: allocate, claim,
// release) wrap it with the site store's confirmation. Claim's errors
// wrap ippool.ErrTaken when another session holds the address.
type leaser interface {
	// Allocate leases any address to a session key (at sign-in).
	Allocate(key string) (netip.Addr, error)
	// Claim leases the given address to a session key (a resume).
	Claim(key string, a netip.Addr) error
	// Release returns an address at the session's end.
	Release(a netip.Addr)
	// Contains reports whether a is one of the pool's client addresses.
	Contains(a netip.Addr) bool
}

// Gateway terminates client sessions (AnyConnect over TLS with DTLS, and
// CONNECT-IP over QUIC) in one userspace TCP/IP stack and re-originates
// their flows with host sockets.
//
// Create one with New, then call ListenAndServe or ServeTCPAndUDP (or
// Serve, ServeQUIC and ServeDTLS for sockets of your own; several may be
// served at once), or mount Handler in an existing HTTPS server.
// Shutdown drains, Close stops at once; both are safe to call more than once.
type Gateway struct {
	// cur is the live configuration: Reload swaps it. Settings that need
	// a restart keep their startup values in every version (see Reload).
	cur    atomic.Pointer[Config]
	log    *slog.Logger
	gwAddr netip.Addr // the gateway's own in-tunnel address

	stack *netstack.Stack
	dns   *dnsproxy.Server // nil when disabled or no DNS addresses
	pool  leaser
	// pool6 leases dual-stack sessions' IPv6 addresses (Config.Pool6);
	// nil when IPv4 only.
	pool6    leaser
	policy   atomic.Pointer[policy.Policy] // swapped by Reload
	sessions *sessionTable
	tlsConf  *tls.Config
	tickets  ticketRotator // tlsConf's session ticket keys (tickets.go)
	httpSrv  *http.Server
	handler  http.Handler
	udpPCs   []net.PacketConn // served by ServeQUIC or the DTLS server; closed by Close

	dtlsMu   sync.Mutex
	dtlsIDs  map[string]*cstpLink // ClientHello session_id -> the CSTP connection that offered it
	dtlsPort atomic.Int32         // the first DTLS socket's port (X-DTLS-Port); 0: no DTLS served

	dtlsUp      atomic.Uint64 // DTLS handshakes completed
	dtlsDropped atomic.Uint64 // datagrams dropped before any state
	dtlsPeers   atomic.Int64  // source addresses with DTLS state now
	// dtlsTraffic holds ended sessions' DTLS packet counts (session.dtls):
	// endSession retires a session's into it together with its removal
	// from the table, so a Stats snapshot counts every packet once.
	dtlsTraffic tally.Totals

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // links and the reaper

	mu       sync.Mutex
	closed   bool
	draining bool                 // Shutdown stops accepting (after the drain delay)
	unready  bool                 // Shutdown has begun: Ready fails, the health record says draining
	links    map[link]struct{}    // live transport connections
	revoked  map[string]time.Time // sealed session ids ended here or revoked site-wide -> their expiry
	site     *siteSync            // nil without Site.Store
	started  time.Time

	signIns, signInFailures atomic.Uint64
	reloadMu                sync.Mutex // serialises Reload

	closeOnce sync.Once
	closeErr  error
}

// New validates cfg and builds a Gateway. It returns a *ConfigError listing
// every problem when cfg is invalid.
func New(cfg Config) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if cfg.HostAddrs == nil {
		cfg.HostAddrs = localAddrs()
	}
	gwAddr := cfg.Pool.Addr().Next() // first usable address of the pool
	strides, own := cfg.Site.stride()
	pool, err := ippool.NewStrided(cfg.Pool, strides, own, gwAddr)
	if err != nil {
		return nil, fmt.Errorf("tunnel: pool: %w", err)
	}
	pol, err := compilePolicy(cfg, gwAddr)
	if err != nil {
		return nil, err
	}
	var pool6 leaser
	if cfg.Pool6.IsValid() {
		// The first address is kept back, as the IPv4 pool's is for the
		// gateway: free for an in-tunnel IPv6 address of the gateway's own.
		p6, err := ippool.NewStrided(cfg.Pool6, strides, own, cfg.Pool6.Addr().Next())
		if err != nil {
			return nil, fmt.Errorf("tunnel: pool6: %w", err)
		}
		pool6 = p6
	}
	g := &Gateway{
		log: cfg.Logger, gwAddr: gwAddr, pool: pool, pool6: pool6, sessions: newSessionTable(),
		links: make(map[link]struct{}), revoked: make(map[string]time.Time), dtlsIDs: make(map[string]*cstpLink),
		started: time.Now(),
	}
	g.cur.Store(&cfg)
	g.policy.Store(pol)
	st, err := netstack.New(netstack.Config{
		Addr: gwAddr, MTU: cfg.MTU, Dialer: cfg.Dialer, Pinger: cfg.Pinger, Logger: cfg.Logger,
		// Read per packet, so a Reload's new routes bind live sessions too.
		Allow:          func(a netip.Addr) bool { return g.policy.Load().Allow(a) },
		FlowLog:        g.flowLog,
		MaxWriteBlock:  stallLimit,
		UDPIdleTimeout: cfg.UDPIdleTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("tunnel: netstack: %w", err)
	}
	g.stack = st
	ctx, cancel := context.WithCancel(context.Background())
	g.ctx, g.cancel = ctx, cancel
	g.tlsConf = &tls.Config{
		MinVersion: tls.VersionTLS12, // R-P4: TLS 1.3 preferred, 1.2 as fallback, nothing older
		// openconnect drops a CSTP frame whose TLS record is not exactly the
		// frame: no record splitting, ever.
		DynamicRecordSizingDisabled: true,
		NextProtos:                  []string{"http/1.1"},
		// Consulted per handshake, so Reload can rotate the certificate.
		GetCertificate: g.getCertificate,
	}
	if cfg.ClientCerts != nil {
		cfg.ClientCerts.ConfigureTLS(g.tlsConf)
	}
	g.tickets = ticketRotator{conf: g.tlsConf, sealer: cfg.Sealer}
	g.tickets.rotate(time.Now())
	if err := g.startDNSProxy(); err != nil {
		cancel()
		st.Close()
		return nil, err
	}
	g.handler = g.newHandler(nil)
	g.httpSrv = &http.Server{
		Handler:           g.handler,
		ReadHeaderTimeout: DefaultHandshakeTimeout,
		// Sign-in exchanges are small; a request body that trickles in for
		// longer than this is an attack, not a client.
		ReadTimeout: 30 * time.Second,
		IdleTimeout: 60 * time.Second, // between sign-in and CONNECT
		// net/http logs handshake failures of port scanners; route them to
		// our logger at debug level instead of stderr.
		ErrorLog:    slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	g.wg.Add(1)
	go g.reap()
	g.startSite(&cfg)
	return g, nil
}

// compilePolicy compiles cfg's routes into the enforcement policy.
func compilePolicy(cfg Config, gwAddr netip.Addr) (*policy.Policy, error) {
	pol, err := policy.New(policy.Config{
		Include: cfg.SplitInclude, Exclude: cfg.SplitExclude,
		Pool: cfg.Pool, Pool6: cfg.Pool6, Gateway: gwAddr, DNS: cfg.DNS, HostAddrs: cfg.HostAddrs,
	})
	if err != nil {
		return nil, fmt.Errorf("tunnel: policy: %w", err)
	}
	return pol, nil
}

// getCertificate serves the live configuration's certificate.
func (g *Gateway) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	c := g.conf()
	if c.GetCertificate != nil {
		return c.GetCertificate(hello)
	}
	if c.Certificate == nil {
		return nil, errors.New("tunnel: no TLS certificate configured")
	}
	return c.Certificate, nil
}

// conf returns the live configuration. Callers that need several fields
// consistent with each other take one snapshot.
func (g *Gateway) conf() *Config { return g.cur.Load() }

// Addr returns the gateway's own address inside the tunnel: clients reach
// services started with Listen there, and it answers ping.
func (g *Gateway) Addr() netip.Addr { return g.gwAddr }

// Mount returns a handler that serves the VPN's HTTPS endpoints
// (AnyConnect sign-in and CONNECT over HTTP/1.1) and passes every other
// request to next (nil: 404), so an existing website keeps its answers. It
// is the one way to get the gateway's http.Handler. Use it as the Handler
// of an HTTPS server (AnyConnect: TLS with DynamicRecordSizingDisabled and
// HTTP/1.1). CONNECT-IP (QUIC) is served by ServeQUIC on a UDP socket of
// its own, with the gateway's own HTTP/3 layer: not through an
// http3.Server, whose per-stream datagram queue drops bursts. Set
// Config.SecretPath to hide the VPN from anyone who does not know it.
func (g *Gateway) Mount(next http.Handler) http.Handler { return g.newHandler(next) }

// ListenAndServe listens on Config.ListenAddr (TCP) and serves with
// ServeTCPAndUDP until Close or Shutdown.
func (g *Gateway) ListenAndServe() error {
	l, err := net.Listen("tcp", g.conf().ListenAddr)
	if err != nil {
		return fmt.Errorf("tunnel: listen: %w", err)
	}
	return g.ServeTCPAndUDP(l)
}

// ServeTCPAndUDP serves AnyConnect over TLS on l and, unless DisableUDP,
// binds the same port number over UDP for QUIC (CONNECT-IP) and DTLS
// together (RFC 9443 first-byte demultiplexing: on Linux the kernel
// steers each datagram to its socket, so quic-go keeps its own socket and
// fast paths). DTLS is left out when Config.DTLS is DTLSOff, and gets a
// socket of its own at Config.DTLSPort when that is set. It returns
// ErrClosed after Close or Shutdown, or the first serving error; it closes
// l and the UDP sockets.
func (g *Gateway) ServeTCPAndUDP(l net.Listener) error {
	if g.conf().DisableUDP {
		return g.Serve(l)
	}
	c := g.conf()
	var (
		quicPC, dtlsPC net.PacketConn
		closers        []io.Closer
	)
	lport := 0
	if ta, ok := l.Addr().(*net.TCPAddr); ok {
		lport = ta.Port
	}
	if c.DTLS == DTLSOff || (c.DTLSPort != 0 && c.DTLSPort != lport) {
		pc, err := net.ListenPacket("udp", l.Addr().String())
		if err != nil {
			l.Close()
			return fmt.Errorf("tunnel: listen udp: %w", err)
		}
		quicPC, closers = pc, append(closers, pc)
		if c.DTLS != DTLSOff {
			host, _, _ := net.SplitHostPort(l.Addr().String())
			if dtlsPC, err = net.ListenPacket("udp", net.JoinHostPort(host, strconv.Itoa(c.DTLSPort))); err != nil {
				l.Close()
				pc.Close()
				return fmt.Errorf("tunnel: listen udp (Config.DTLSPort): %w", err)
			}
			closers = append(closers, dtlsPC)
		}
	} else {
		m, err := udpmux.Listen(g.ctx, "udp", l.Addr().String())
		if err != nil {
			l.Close()
			return fmt.Errorf("tunnel: listen udp: %w", err)
		}
		if !m.Kernel() {
			g.log.Info("udp: kernel steering unavailable; demultiplexing QUIC and DTLS in userspace")
		}
		quicPC, dtlsPC, closers = m.QUIC(), m.DTLS(), []io.Closer{m}
	}
	serve := []func() error{
		func() error { return g.Serve(l) },
		func() error { return g.ServeQUIC(quicPC) },
	}
	if dtlsPC != nil {
		serve = append(serve, func() error { return g.ServeDTLS(dtlsPC) })
	}
	closeUDP := func() {
		for _, c := range closers {
			c.Close()
		}
	}
	errc := make(chan error, len(serve))
	for _, f := range serve {
		go func() { errc <- f() }()
	}
	err := <-errc
	if !errors.Is(err, ErrClosed) { // a failure: stop the others too
		l.Close()
		closeUDP()
	} // else the gateway stops them in order (QUIC after its going-away codes)
	for range len(serve) - 1 {
		if err2 := <-errc; errors.Is(err, ErrClosed) {
			err = err2
		}
	}
	closeUDP()
	return err
}

// Serve accepts TCP connections on l, terminates TLS and serves the
// AnyConnect protocol until Close or Shutdown, then returns ErrClosed.
// Before TLS, a banned client is refused and, with
// Config.ProxyProtocolFrom set, the PROXY protocol header is read (see
// there). Serve closes l.
func (g *Gateway) Serve(l net.Listener) error {
	if c := g.conf(); c.GetCertificate == nil && c.Certificate == nil {
		l.Close()
		return errors.New("tunnel: no TLS certificate configured")
	}
	g.mu.Lock()
	closed := g.closed || g.draining
	g.mu.Unlock()
	if closed {
		l.Close()
		return ErrClosed
	}
	err := g.httpSrv.Serve(&tlsListener{Listener: l, g: g, conf: g.tlsConf})
	if errors.Is(err, http.ErrServerClosed) {
		return ErrClosed
	}
	return err
}

// Listen opens a listener for an in-tunnel service on the gateway's own
// address (Addr). network is "tcp" (or "tcp4"); address is ":port".
func (g *Gateway) Listen(network, address string) (net.Listener, error) {
	ap, err := g.localAddrPort(address)
	if err != nil {
		return nil, err
	}
	switch network {
	case "tcp", "tcp4":
		return g.stack.ListenTCP(ap)
	}
	return nil, fmt.Errorf("tunnel: Listen: unsupported network %q", network)
}

// ListenPacket is Listen for "udp" (or "udp4").
func (g *Gateway) ListenPacket(network, address string) (net.PacketConn, error) {
	ap, err := g.localAddrPort(address)
	if err != nil {
		return nil, err
	}
	switch network {
	case "udp", "udp4":
		return g.stack.ListenUDP(ap)
	}
	return nil, fmt.Errorf("tunnel: ListenPacket: unsupported network %q", network)
}

func (g *Gateway) localAddrPort(address string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("tunnel: %q: %w", address, err)
	}
	a := g.gwAddr
	if host != "" {
		if a, err = netip.ParseAddr(host); err != nil {
			return netip.AddrPort{}, fmt.Errorf("tunnel: %q: %w", address, err)
		}
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("tunnel: %q: bad port", address)
	}
	return netip.AddrPortFrom(a, uint16(p)), nil
}

// Sessions returns a snapshot of every session.
func (g *Gateway) Sessions() []SessionInfo {
	ss := g.sessions.all()
	out := make([]SessionInfo, 0, len(ss))
	for _, s := range ss {
		out = append(out, s.info())
	}
	return out
}

// WhoIs returns the session holding the in-tunnel address a (IPv4, or a
// dual-stack session's IPv6 address).
func (g *Gateway) WhoIs(a netip.Addr) (SessionInfo, bool) {
	s := g.sessions.lookupAddr(a.Unmap())
	if s == nil {
		return SessionInfo{}, false
	}
	return s.info(), true
}

// Disconnect ends session id: the client is told to disconnect and must
// sign in again. With Site.Store the session is revoked site-wide: a
// server of the site running it ends it, and none resumes its cookie.
//
// A session that does not run here is still revoked site-wide when a site
// store is configured (the operator may name a session of another server):
// its cookie is refused here at once and everywhere once published, for
// SessionTimeout (no cookie lives longer). Without a store that is
// ErrNoSession.
func (g *Gateway) Disconnect(id string) error {
	s := g.sessions.get(id)
	if s == nil {
		if g.site == nil || g.conf().Sealer == nil || id == "" {
			return ErrNoSession
		}
		until := time.Now().Add(g.conf().SessionTimeout)
		g.mu.Lock()
		g.revoked[id] = until
		g.mu.Unlock()
		g.log.Info("session revoked site-wide", "session", id)
		g.publish(site.Record{Kind: site.Revoked, Session: id, Until: until})
		return nil
	}
	g.endSession(s, EndOperator)
	return nil
}

// revoke remembers an ended session id until its cookie would have expired,
// so a sealed cookie cannot resume it here. An operator's disconnect and a
// logoff are published to the site store (a revocation that came from
// the store is already listed, and is not published again). A session
// that merely timed out here is not: its client may be live on another
// server of the site.
func (g *Gateway) revoke(s *session, r EndReason) {
	if g.conf().Sealer == nil {
		return
	}
	g.mu.Lock()
	_, had := g.revoked[s.id]
	g.revoked[s.id] = s.expires
	g.mu.Unlock()
	if !had && (r == EndOperator || r == EndLogoff) {
		g.publish(site.Record{Kind: site.Revoked, Session: s.id, Until: s.expires})
	}
}

func (g *Gateway) isRevoked(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.revoked[id]
	return ok
}

// pruneRevoked forgets revocations whose cookies have expired anyway.
func (g *Gateway) pruneRevoked(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for id, exp := range g.revoked {
		if now.After(exp) {
			delete(g.revoked, id)
		}
	}
}

// Shutdown drains the gateway (R-O4). Ready reports draining at once; after
// Config.DrainDelay (or when ctx ends, if sooner) it stops accepting
// connections, then closes every tunnel connection without logging the
// clients off, so they reconnect (through a load balancer, to another
// server). It then waits for the tunnels to end or ctx to expire, and
// closes the gateway.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	g.unready = true
	g.mu.Unlock()
	if d := g.conf().DrainDelay; d > 0 {
		// Serving as usual meanwhile: a client the balancer still sends
		// here signs in and is moved with the others.
		g.log.Info("draining: not ready; clients are told to reconnect after the drain delay", "drain_delay", d)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	g.mu.Lock()
	g.draining = true
	g.mu.Unlock()
	err := g.httpSrv.Shutdown(ctx)
	for _, l := range g.liveLinks() {
		l.base().stopWith(EndGoingAway)
	}
	done := make(chan struct{})
	go func() {
		for !g.noLinks() {
			select {
			case <-ctx.Done():
				close(done)
				return
			case <-time.After(10 * time.Millisecond): // poll: drain is rare and short
			}
		}
		close(done)
	}()
	<-done
	g.closeUDP() // after the tunnels, so QUIC clients got their going-away code
	if cerr := g.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = ctx.Err()
	}
	return err
}

// Close stops the gateway at once: it cancels every operation, stops
// accepting, ends every session, closes the stack and waits for all
// goroutines. It is safe to call more than once.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() {
		g.mu.Lock()
		g.closed = true
		g.mu.Unlock()
		g.cancel()
		err := g.httpSrv.Close()
		for _, l := range g.liveLinks() {
			l.base().stopWith(EndGoingAway)
			l.abort()
		}
		for _, s := range g.sessions.all() {
			g.endSession(s, EndGoingAway)
		}
		g.closeUDP()
		if g.dns != nil {
			_ = g.dns.Close()
		}
		g.wg.Wait()
		if serr := g.stack.Close(); err == nil {
			err = serr
		}
		g.closeErr = err
	})
	return g.closeErr
}

// closeUDP stops the QUIC and DTLS listeners. Live CONNECT-IP sessions are ended by
// the caller, with the code that tells clients what to do.
func (g *Gateway) closeUDP() {
	g.mu.Lock()
	pcs := g.udpPCs
	g.udpPCs = nil
	g.mu.Unlock()
	for _, pc := range pcs {
		_ = pc.Close()
	}
}

func (g *Gateway) liveLinks() []link {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]link, 0, len(g.links))
	for t := range g.links {
		out = append(out, t)
	}
	return out
}

func (g *Gateway) noLinks() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.links) == 0
}

// startDNSProxy serves the DNS proxy on every pushed DNS address inside the
// stack (R-D5), so clients' queries never leave as ordinary flows.
func (g *Gateway) startDNSProxy() error {
	if g.conf().DisableDNSProxy || len(g.conf().DNS) == 0 {
		return nil
	}
	dc := g.conf().DNSProxy
	if len(dc.Upstreams) == 0 {
		for _, a := range g.conf().DNS {
			dc.Upstreams = append(dc.Upstreams, netip.AddrPortFrom(a, 53).String())
		}
	}
	if dc.Search == nil {
		dc.Search = g.conf().SearchDomains
	}
	if len(g.conf().SplitInclude) == 0 && len(dc.Public) == 0 && len(dc.Domains) == 0 {
		// Full tunnel sends every query here (X-CSTP-Tunnel-All-DNS), so
		// with no public resolver the corporate servers answer every name.
		dc.Domains = []string{"."}
	}
	if dc.Dialer == nil && g.conf().Dialer != nil {
		dc.Dialer = g.conf().Dialer
	}
	if dc.Logger == nil {
		dc.Logger = g.log
	}
	dc.AccessLog = g.dnsLog(dc.AccessLog)
	srv, err := dnsproxy.New(dc)
	if err != nil {
		return fmt.Errorf("tunnel: dns proxy: %w", err)
	}
	for _, a := range g.conf().DNS {
		ap := netip.AddrPortFrom(a, 53)
		pc, err := g.stack.ListenUDP(ap)
		if err != nil {
			srv.Close()
			return fmt.Errorf("tunnel: dns proxy on %v/udp: %w", ap, err)
		}
		l, err := g.stack.ListenTCP(ap)
		if err != nil {
			pc.Close()
			srv.Close()
			return fmt.Errorf("tunnel: dns proxy on %v/tcp: %w", ap, err)
		}
		go func() { _ = srv.ServePacket(pc) }() // returns when srv closes
		go func() { _ = srv.Serve(l) }()
	}
	g.dns = srv
	return nil
}

// localAddrs lists the host's interface addresses.
func localAddrs() []netip.Addr {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, ia := range ifas {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}
