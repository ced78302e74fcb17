package netstack

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// udpFlow relays one client UDP 4-tuple through a connected host socket.
type udpFlow struct {
	s        *Stack
	port     *Port
	src, dst netip.AddrPort
	start    time.Time
	g        epSide
	h        hostSide
	up, down atomic.Uint64
	last     atomic.Int64 // nanoseconds since start of the last datagram either way

	once sync.Once
	err  error
}

// handleUDP runs synchronously in the injecting goroutine for the first
// datagram of a new 4-tuple. It creates the gVisor endpoint (which queues
// that datagram) and leaves the dial, which may be slow with a custom
// Dialer, to the flow's goroutine.
func (s *Stack) handleUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	src := netip.AddrPortFrom(netipAddr(id.RemoteAddress), id.RemotePort)
	dst := netip.AddrPortFrom(netipAddr(id.LocalAddress), id.LocalPort)
	if dst.Addr() == s.cfg.Addr {
		return false // nothing listens there: the stack answers port unreachable
	}
	port := s.lookup(src.Addr())
	if port == nil {
		return true // drop
	}
	if !reserve(&port.udpFlows, s.cfg.MaxUDPFlowsPerPort, &s.stats.udpFlowsCapped) {
		return true // drop, as a full conntrack table does
	}
	if !s.track() {
		port.udpFlows.Add(-1)
		return true
	}
	f := &udpFlow{s: s, port: port, src: src, dst: dst, start: time.Now()}
	f.g.register()
	ep, err := r.CreateEndpoint(&f.g.wq)
	if err != nil {
		port.udpFlows.Add(-1)
		f.g.unregister()
		s.wg.Done()
		s.log.Debug("netstack: udp endpoint", "src", src, "dst", dst, "err", err)
		return true
	}
	f.g.ep = ep
	go func() {
		defer s.wg.Done()
		f.run()
	}()
	return true
}

func (f *udpFlow) run() {
	s := f.s
	defer f.g.unregister()
	defer f.port.udpFlows.Add(-1)
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	conn, err := s.cfg.Dialer.DialContext(ctx, "udp", f.dst.String())
	cancel()
	if err != nil {
		s.stats.udpDialFailed.Add(1)
		s.log.Debug("netstack: udp dial failed", "src", f.src, "dst", f.dst, "err", err)
		s.dialFailed("udp", err)
		f.g.ep.Close()
		s.flowLog("udp", f.src, f.dst, f.start, 0, 0, err)
		return
	}
	f.h.init(conn)
	if !f.port.addFlow(f) {
		f.g.ep.Close()
		conn.Close()
		return
	}
	s.stats.udpFlows.Add(1)
	s.stats.udpActive.Add(1)

	s.wg.Add(1) // safe: this goroutine is already counted
	done := make(chan struct{})
	go func() {
		defer s.wg.Done()
		defer close(done)
		f.downstream()
	}()
	f.upstream()
	f.abort(nil) // idle or error: stop downstream too
	<-done

	f.port.removeFlow(f)
	s.stats.udpActive.Add(-1)
	f.once.Do(func() {})
	s.flowLog("udp", f.src, f.dst, f.start, f.up.Load(), f.down.Load(), f.err)
}

func (f *udpFlow) abort(err error) {
	f.once.Do(func() {
		f.err = err
		f.g.ep.Close()
		f.h.conn.Close()
	})
}

func (f *udpFlow) touch() { f.last.Store(int64(time.Since(f.start))) }

// upstream copies client -> upstream datagrams and enforces the idle
// timeout (traffic either way keeps the flow alive).
func (f *udpFlow) upstream() {
	idle := f.s.cfg.UDPIdleTimeout
	t := time.NewTimer(idle)
	defer t.Stop()
	for {
		err := f.g.waitReadable(f.s.ctx, t.C)
		if err == errTimeout {
			since := time.Since(f.start) - time.Duration(f.last.Load())
			if since >= idle {
				return
			}
			t.Reset(idle - since)
			continue
		}
		if err != nil {
			f.abort(err)
			return
		}
		b, n, terr := f.g.read()
		if terr != nil {
			if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
				continue
			}
			f.abort(errors.New(terr.String()))
			return
		}
		_, err = f.h.conn.Write((*b)[:n])
		putBuf(b)
		f.touch()
		if err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			f.abort(err)
			return
		}
		f.up.Add(uint64(n))
	}
}

// downstream copies upstream -> client datagrams. ECONNREFUSED (an ICMP
// port unreachable for an earlier datagram) is passed on to the client.
func (f *udpFlow) downstream() {
	for {
		b, n, err := f.h.read()
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				f.s.sendPortUnreachable(f.port, f.src, f.dst)
				continue
			}
			f.abort(err)
			return
		}
		f.touch()
		_ = f.g.write(f.s.ctx, (*b)[:n]) // a datagram that does not fit is dropped, as UDP may
		putBuf(b)
		f.down.Add(uint64(n))
	}
}
