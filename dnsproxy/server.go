package dnsproxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// ErrServerClosed is returned by the Serve methods after Close or Shutdown.
var ErrServerClosed = errors.New("dnsproxy: server closed")

const (
	// maxReaders bounds the UDP reader goroutines per PacketConn: one per
	// core answers cache hits inline; more only adds contention.
	maxReaders = 8
	// maxUDPRequest is the UDP read buffer: the largest datagram.
	maxUDPRequest = 0xffff
	// maxTCPConns bounds concurrent TCP client connections (file
	// descriptors and goroutines); beyond it new ones are closed at once.
	maxTCPConns = 256
	// tcpIdleTimeout closes idle TCP connections; RFC 7766 §6.2.3 asks for
	// timeouts of seconds, 10 s lets pipelining clients reuse one.
	tcpIdleTimeout = 10 * time.Second
	// tcpWriteTimeout bounds writing one answer to a slow TCP client.
	tcpWriteTimeout = 5 * time.Second
)

// Server is a DNS proxy. Create it with [New]; it is safe for concurrent
// use.
type Server struct {
	cfg      Config
	internal []string // lower-case FQDNs; "." means every name
	corp     *upstreamSet
	public   *upstreamSet // nil: refuse non-internal names
	cache    *cache       // nil: caching disabled
	base     time.Time    // origin of the monotonic server clock
	sem      chan struct{}
	tcpSem   chan struct{}

	ctx    context.Context // cancelled by Close: aborts upstream exchanges
	cancel context.CancelFunc

	flightMu sync.Mutex
	flights  map[string]*flight

	mu      sync.Mutex
	closed  bool
	closers map[io.Closer]struct{} // listeners and packet conns
	conns   map[net.Conn]struct{}  // TCP client connections
	wg      sync.WaitGroup

	stats struct {
		queries, cacheHits, cacheMisses, dedup     atomic.Uint64
		upstreamQueries, upstreamFailures, dropped atomic.Uint64
		formErr, servFail, refused, panics         atomic.Uint64
	}
}

// flight is one upstream lookup shared by identical concurrent questions.
type flight struct {
	done chan struct{}
	msg  *dns.Msg
	err  error
}

// New validates cfg and returns a Server. Every invalid field is reported
// as a *ConfigError, joined.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     cfg,
		corp:    newUpstreamSet("corporate", cfg.Upstreams),
		public:  newUpstreamSet("public", cfg.Public),
		base:    time.Now(),
		sem:     make(chan struct{}, cfg.MaxInFlight),
		tcpSem:  make(chan struct{}, maxTCPConns),
		flights: make(map[string]*flight),
		closers: make(map[io.Closer]struct{}),
		conns:   make(map[net.Conn]struct{}),
	}
	for _, d := range slices.Concat(cfg.Search, cfg.Domains) {
		if !slices.Contains(s.internal, d) {
			s.internal = append(s.internal, d)
		}
	}
	if cfg.CacheEntries > 0 {
		s.cache = newCache(cfg.CacheEntries, cfg.CacheBytes)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// now is the server's monotonic clock in nanoseconds.
func (s *Server) now() int64 { return int64(time.Since(s.base)) }

// spawn runs f in a goroutine that Close waits for; false once closed.
func (s *Server) spawn(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

// flight runs fn once for concurrent callers with the same key. fn runs in
// its own goroutine under the server's context, so one caller giving up
// does not fail the others; each caller waits at most until its ctx ends.
func (s *Server) flight(ctx context.Context, key string, fn func(context.Context) (*dns.Msg, error)) (*dns.Msg, error) {
	s.flightMu.Lock()
	f, ok := s.flights[key]
	if ok {
		s.stats.dedup.Add(1)
	} else {
		f = &flight{done: make(chan struct{})}
		s.flights[key] = f
		started := s.spawn(func() {
			fctx, cancel := context.WithTimeout(s.ctx, s.cfg.QueryTimeout)
			defer cancel()
			f.msg, f.err = fn(fctx)
			s.flightMu.Lock()
			delete(s.flights, key)
			s.flightMu.Unlock()
			close(f.done)
		})
		if !started {
			delete(s.flights, key)
			s.flightMu.Unlock()
			return nil, ErrServerClosed
		}
	}
	s.flightMu.Unlock()
	select {
	case <-f.done:
		return f.msg, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// track registers c to be closed by Close; false once closed.
func (s *Server) track(c io.Closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.closers[c] = struct{}{}
	return true
}

func (s *Server) untrack(c io.Closer) {
	s.mu.Lock()
	delete(s.closers, c)
	s.mu.Unlock()
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// ServePacket answers DNS over UDP on pc until pc fails or the server is
// closed (then it returns ErrServerClosed); it closes pc before
// returning. Cache hits are answered inline by one reader goroutine per
// core; other queries are resolved concurrently, at most MaxInFlight at a
// time (beyond that they are dropped and the client retries).
func (s *Server) ServePacket(pc net.PacketConn) error {
	if !s.track(pc) {
		pc.Close()
		return ErrServerClosed
	}
	defer s.untrack(pc)
	defer pc.Close()
	readers := min(runtime.GOMAXPROCS(0), maxReaders)
	errc := make(chan error, readers)
	var inflight sync.WaitGroup // slow-path answers still to be written to pc
	started := 0
	for range readers {
		if !s.spawn(func() { errc <- s.readPackets(pc, &inflight) }) {
			break
		}
		started++
	}
	var first error = ErrServerClosed
	for i := range started {
		err := <-errc
		if i == 0 {
			first = err
			pc.SetReadDeadline(time.Unix(1, 0)) // one reader failing stops the others
		}
	}
	inflight.Wait()
	if s.isClosed() {
		return ErrServerClosed
	}
	return first
}

// readPackets is one UDP reader loop.
func (s *Server) readPackets(pc net.PacketConn, inflight *sync.WaitGroup) error {
	uc, _ := pc.(*net.UDPConn) // fast path without net.Addr allocations
	buf := make([]byte, maxUDPRequest)
	out := make([]byte, 0, maxUDPSize)
	var q wireQuery
	for {
		var (
			n    int
			ap   netip.AddrPort
			addr net.Addr
			err  error
		)
		if uc != nil {
			n, ap, err = uc.ReadFromUDPAddrPort(buf)
		} else {
			n, addr, err = pc.ReadFrom(buf)
			if ua, ok := addr.(*net.UDPAddr); ok {
				ap = ua.AddrPort()
			}
		}
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			return err
		}
		if resp, ok := s.answerFast(out[:0], ap, UDP, buf[:n], &q); ok {
			writeUDP(pc, uc, resp, ap, addr)
			continue
		}
		select {
		case s.sem <- struct{}{}:
		default:
			s.stats.queries.Add(1)
			s.observe(ap, UDP, &outcome{rcode: RcodeDropped}, 0)
			continue
		}
		req := bytes.Clone(buf[:n])
		inflight.Add(1)
		if !s.spawn(func() {
			defer inflight.Done()
			defer func() { <-s.sem }()
			if resp := s.answerSlow(s.ctx, nil, ap, UDP, req); resp != nil {
				writeUDP(pc, uc, resp, ap, addr)
			}
		}) {
			inflight.Done()
			<-s.sem
			return ErrServerClosed
		}
	}
}

// writeUDP sends one answer; errors are the client's problem (it retries).
func writeUDP(pc net.PacketConn, uc *net.UDPConn, b []byte, ap netip.AddrPort, addr net.Addr) {
	if uc != nil {
		uc.WriteToUDPAddrPort(b, ap)
	} else {
		pc.WriteTo(b, addr)
	}
}

// Serve answers DNS over TCP (RFC 7766 length-prefixed messages) on
// connections accepted from l until l fails or the server is closed (then
// it returns ErrServerClosed). Close closes l.
func (s *Server) Serve(l net.Listener) error {
	if !s.track(l) {
		return ErrServerClosed
	}
	defer s.untrack(l)
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		select {
		case s.tcpSem <- struct{}{}:
		default:
			c.Close() // over the connection limit
			continue
		}
		if !s.spawn(func() {
			defer func() { <-s.tcpSem }()
			s.ServeConn(c)
		}) {
			<-s.tcpSem
			c.Close()
			return ErrServerClosed
		}
	}
}

// ServeConn answers length-prefixed DNS messages on one stream connection
// (a TCP connection from a listener or the gateway's userspace stack)
// until the client closes it, it idles for 10 s, or the server is closed.
// Queries are answered in order. ServeConn closes c.
func (s *Server) ServeConn(c net.Conn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
		s.wg.Done()
	}()

	var client netip.AddrPort
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		client = ta.AddrPort()
	}
	var (
		lenBuf [2]byte
		req    []byte
		out    []byte
		q      wireQuery
	)
	for {
		s.mu.Lock() // Shutdown's read deadline must not be overwritten
		closed := s.closed
		if !closed {
			c.SetReadDeadline(time.Now().Add(tcpIdleTimeout))
		}
		s.mu.Unlock()
		if closed {
			return
		}
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(lenBuf[:]))
		if cap(req) < n {
			req = make([]byte, n)
		}
		req = req[:n]
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		resp, ok := s.answerFast(append(out[:0], 0, 0), client, TCP, req, &q)
		if !ok {
			resp = s.answerSlow(s.ctx, append(out[:0], 0, 0), client, TCP, req)
		}
		if len(resp) <= 2 {
			continue // dropped
		}
		out = resp
		binary.BigEndian.PutUint16(out, uint16(len(out)-2))
		c.SetWriteDeadline(time.Now().Add(tcpWriteTimeout))
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// Close stops serving at once: listeners, packet conns and TCP
// connections are closed, upstream exchanges aborted, and Close waits for
// every goroutine of the server to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for c := range s.closers {
		c.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

// Shutdown stops accepting queries and waits for those being resolved to
// be answered, until ctx ends; then it closes like Close and returns
// ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for c := range s.closers {
		if pc, ok := c.(net.PacketConn); ok {
			// Stop reading but keep the socket: queries being resolved
			// still get their answers; ServePacket closes it after.
			pc.SetReadDeadline(time.Unix(1, 0))
		} else {
			c.Close()
		}
	}
	for c := range s.conns {
		c.SetReadDeadline(time.Unix(1, 0)) // finish the current query, read no more
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
}

// InternalDomains returns the domains whose names go to the corporate
// servers (the search suffixes, then Config.Domains), lower case without
// the trailing dot, for pushing as split-DNS domains (X-CSTP-Split-DNS).
// A "." entry (every name) is omitted: it means full-tunnel DNS.
func (s *Server) InternalDomains() []string {
	out := make([]string, 0, len(s.internal))
	for _, d := range s.internal {
		if d != "." {
			out = append(out, strings.TrimSuffix(d, "."))
		}
	}
	return out
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Queries:          s.stats.queries.Load(),
		CacheHits:        s.stats.cacheHits.Load(),
		CacheMisses:      s.stats.cacheMisses.Load(),
		Deduplicated:     s.stats.dedup.Load(),
		UpstreamQueries:  s.stats.upstreamQueries.Load(),
		UpstreamFailures: s.stats.upstreamFailures.Load(),
		Dropped:          s.stats.dropped.Load(),
		FormErr:          s.stats.formErr.Load(),
		ServFail:         s.stats.servFail.Load(),
		Refused:          s.stats.refused.Load(),
		Panics:           s.stats.panics.Load(),
	}
	if s.cache != nil {
		st.CacheEntries, st.CacheBytes = s.cache.size()
	}
	return st
}
