package tunnel

// The TCP listener's front door: the pre-TLS ban check and, behind a load
// balancer, the PROXY protocol (v1 and v2, HAProxy's specification), read
// with github.com/pires/go-proxyproto.

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pires/go-proxyproto"
)

// proxyHeaderTimeout bounds the wait for a PROXY protocol header. A
// balancer sends it with the connection's first segment, so this only
// limits how long a stalled connection holds a goroutine before it is
// refused; a client's TLS ClientHello (when no header is expected) is
// likewise sent at once.
const proxyHeaderTimeout = 5 * time.Second

// Reasons a connection is refused at the front door, before TLS.
var (
	errBannedPeer       = errors.New("tunnel: client address banned")
	errUntrustedHeader  = errors.New("tunnel: PROXY protocol header from an address not in Config.ProxyProtocolFrom")
	errMissingHeader    = errors.New("tunnel: no PROXY protocol header from a trusted balancer (Config.ProxyProtocolFrom)")
	errUnusableProxyHdr = errors.New("tunnel: PROXY protocol header without a usable client address")
)

// inPrefixes reports whether a lies in one of ps.
func inPrefixes(ps []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// banExempt reports whether failed sign-ins from a never earn ban points:
// Config.BanExempt, and the trusted balancers (their own address is only
// seen on their health checks).
func (c *Config) banExempt(a netip.Addr) bool {
	return inPrefixes(c.BanExempt, a) || inPrefixes(c.ProxyProtocolFrom, a)
}

// tlsListener wraps accepted connections in a batchConn under TLS, so the
// tunnel can batch records into few socket writes. Before that, a banned
// address is refused; a connection from a trusted balancer has its client
// address settled from the PROXY protocol header first (on the
// connection's own goroutine, at its first use, so a slow balancer never
// stalls Accept).
type tlsListener struct {
	net.Listener
	g    *Gateway
	conf *tls.Config
}

func (l *tlsListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true) // frames are already batched; never wait for more
		}
		cfg := l.g.conf()
		ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		peer := ap.Addr().Unmap()
		if len(cfg.ProxyProtocolFrom) == 0 {
			if cfg.Bans != nil && cfg.Bans.Banned(peer) {
				// Refused before any TLS work: a banned address costs one accept.
				l.g.log.Debug("refused banned client", "client_ip", peer)
				c.Close()
				continue
			}
			return tls.Server(newBatchConn(c), l.conf), nil
		}
		policy := proxyproto.REJECT
		if inPrefixes(cfg.ProxyProtocolFrom, peer) {
			policy = proxyproto.REQUIRE
		} else if cfg.Bans != nil && cfg.Bans.Banned(peer) {
			l.g.log.Debug("refused banned client", "client_ip", peer)
			c.Close()
			continue
		}
		pc := proxyproto.NewConn(c, proxyproto.WithPolicy(policy), proxyproto.SetReadHeaderTimeout(proxyHeaderTimeout))
		return tls.Server(newBatchConn(&peerConn{Conn: pc, pc: pc, peer: peer, cfg: cfg, log: l.g.log}), l.conf), nil
	}
}

// peerConn is an accepted connection whose client address is settled from
// its PROXY protocol header at the first Read or RemoteAddr: the header is
// required from a trusted balancer and refused from anyone else, and the
// client it names is checked against the bans. Until settled, and after a
// refusal, every Read fails, so the TLS handshake never starts.
type peerConn struct {
	net.Conn
	pc   *proxyproto.Conn
	peer netip.Addr // the socket's peer
	cfg  *Config
	log  *slog.Logger

	once   sync.Once
	err    error
	remote net.Addr
}

func (c *peerConn) settle() {
	c.remote = c.pc.Raw().RemoteAddr()
	// A zero-length read makes the library read (or rule out) the header
	// and report its error, without consuming the ClientHello behind it.
	_, err := c.pc.Read(nil)
	switch {
	case errors.Is(err, proxyproto.ErrSuperfluousProxyHeader):
		err = errUntrustedHeader
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		err = errMissingHeader
	case err != nil:
		err = fmt.Errorf("tunnel: PROXY protocol: %w", err)
	}
	if err == nil {
		switch h := c.pc.ProxyHeader(); {
		case h != nil && h.Command.IsProxy():
			src, ok := h.SourceAddr.(*net.TCPAddr)
			if !ok {
				err = errUnusableProxyHdr
			} else {
				c.remote = src
			}
		case h != nil: // LOCAL: the balancer's own connection; its address never earns ban points
			c.log.Debug("balancer health check", "peer_ip", c.peer)
		} // untrusted without a header: the socket's peer
	}
	if err == nil {
		ap, _ := netip.ParseAddrPort(c.remote.String())
		if b := c.cfg.Bans; b != nil && b.Banned(ap.Addr().Unmap()) {
			err = errBannedPeer
		}
	}
	if err != nil {
		c.err = err
		c.log.Info("connection refused", "peer_ip", c.peer, "client_ip", c.remote, "err", err)
		_ = c.Conn.Close()
	}
}

func (c *peerConn) Read(b []byte) (int, error) {
	c.once.Do(c.settle)
	if c.err != nil {
		return 0, c.err
	}
	return c.Conn.Read(b)
}

func (c *peerConn) Write(b []byte) (int, error) {
	c.once.Do(c.settle)
	if c.err != nil {
		return 0, c.err
	}
	return c.Conn.Write(b)
}

// RemoteAddr is the client's address: the one the PROXY protocol header
// carries, or the socket's peer.
func (c *peerConn) RemoteAddr() net.Addr {
	c.once.Do(c.settle)
	return c.remote
}
