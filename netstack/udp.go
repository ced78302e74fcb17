package netstack

import (
	"context"
	"errors"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// udpFlow relays one client UDP 4-tuple through a connected host socket.
//
// Like a tcpFlow, an idle one parks no goroutine and holds no buffer: a
// waiter callback starts the drain (client -> upstream) when the endpoint
// has datagrams, the stack's poller starts the reader (upstream -> client)
// when the host socket has, and a timer, which runs nothing until it
// fires, ends the flow after Config.UDPIdleTimeout without traffic either
// way. Without the poller the reader waits in Read, as for TCP.
type udpFlow struct {
	s        *Stack
	port     *Port
	src, dst netip.AddrPort
	start    time.Time
	g        epSide
	h        hostSide
	up, down atomic.Uint64
	last     atomic.Int64 // nanoseconds since start of the last datagram either way

	entry  waiter.Entry
	drain  atomic.Int32 // client -> upstream: drainIdle, drainRunning or drainDone
	reader atomic.Int32 // upstream -> client: the same states
	pollID uint32       // the poller's id for the host socket; 0: not watched
	halves atomic.Int32 // directions still running; the last one tears down
	idle   *time.Timer  // Config.UDPIdleTimeout (expire)

	once sync.Once
	err  error
}

// handleUDP runs synchronously in the injecting goroutine for the first
// datagram of a new 4-tuple. It creates the gVisor endpoint (which queues
// that datagram) and leaves the dial, which may be slow with a custom
// Dialer, to a goroutine that ends once the flow is set up.
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
	go f.run()
	return true
}

// run dials upstream and sets the flow going; the flow's teardown
// (halfDone) ends its s.wg count, or run does if the flow never starts.
func (f *udpFlow) run() {
	s := f.s
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	conn, err := s.cfg.Dialer.DialContext(ctx, "udp", f.dst.String())
	cancel()
	if err != nil {
		s.stats.udpDialFailed.Add(1)
		s.log.Debug("netstack: udp dial failed", "src", f.src, "dst", f.dst, "err", err)
		s.dialFailed("udp", err)
		f.g.ep.Close()
		f.g.unregister()
		f.port.udpFlows.Add(-1)
		s.flowLog("udp", f.src, f.dst, f.start, 0, 0, err)
		s.wg.Done()
		return
	}
	f.h.init(conn)
	if !f.port.addFlow(f) {
		f.g.ep.Close()
		conn.Close()
		f.g.unregister()
		f.port.udpFlows.Add(-1)
		s.wg.Done()
		return
	}
	s.stats.udpFlows.Add(1)
	s.stats.udpActive.Add(1)
	f.halves.Store(2)
	// Created unarmed (a duration no flow reaches), so that teardown may
	// stop it at any point, and armed last, once the flow is set up.
	f.idle = time.AfterFunc(math.MaxInt64, f.expire)
	// Upstream -> client first, while nothing else runs for the flow (as
	// for TCP): watch sets the reader's mode.
	if !s.watch(&f.h, f, &f.pollID, f.src, f.dst) {
		f.reader.Store(drainRunning)
		go f.downstream()
	}
	f.entry = waiter.NewFunctionEntry(readMask, func(waiter.EventMask) { f.kick() })
	f.g.wq.EventRegister(&f.entry)
	f.kick() // the first datagram is queued already
	f.idle.Reset(s.cfg.UDPIdleTimeout)
}

// expire ends the flow once it has been idle for Config.UDPIdleTimeout,
// else waits out the rest.
func (f *udpFlow) expire() {
	idle := f.s.cfg.UDPIdleTimeout
	if since := time.Since(f.start) - time.Duration(f.last.Load()); since < idle {
		f.idle.Reset(idle - since)
		return
	}
	f.abort(nil) // idle: a normal end
}

// abort closes both sides and makes sure each direction runs to see it:
// an idle one has no goroutine to notice (the poller reports nothing for a
// closed socket).
func (f *udpFlow) abort(err error) {
	f.once.Do(func() {
		f.err = err
		f.g.ep.Close()
		f.h.conn.Close()
	})
	f.kick()
	f.ready()
}

// kick starts a drain unless one is running or the direction is finished.
// Called from gVisor's notification path: it must not block.
func (f *udpFlow) kick() {
	if f.drain.CompareAndSwap(drainIdle, drainRunning) {
		go f.upstream()
	}
}

// ready starts a reader unless one is running or the direction is
// finished (the poller's watched.ready).
func (f *udpFlow) ready() {
	if f.reader.CompareAndSwap(drainIdle, drainRunning) {
		go f.downstream()
	}
}

// halfDone ends one direction; the last one tears the flow down. Both end
// only after abort, which closed both sides.
func (f *udpFlow) halfDone() {
	if f.halves.Add(-1) != 0 {
		return
	}
	s := f.s
	f.idle.Stop()
	f.g.wq.EventUnregister(&f.entry)
	f.g.unregister()
	if f.pollID != 0 {
		s.poller.remove(f.h.rc, f.pollID)
	}
	f.port.removeFlow(f)
	f.port.udpFlows.Add(-1)
	s.stats.udpActive.Add(-1)
	f.once.Do(func() {}) // orders abort's f.err before the read
	s.flowLog("udp", f.src, f.dst, f.start, f.up.Load(), f.down.Load(), f.err)
	s.wg.Done()
}

func (f *udpFlow) touch() { f.last.Store(int64(time.Since(f.start))) }

// upstream copies client -> upstream datagrams until the endpoint's queue
// is empty (then exits, to be kicked again) or an error; the endpoint's
// close (abort) is one.
func (f *udpFlow) upstream() {
	for {
		b, n, terr := f.g.read()
		if terr != nil {
			if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
				f.drain.Store(drainIdle)
				// A notification between the Read and the Store found
				// the drain running and did nothing: look again.
				if f.g.ep.Readiness(readMask) == 0 || !f.drain.CompareAndSwap(drainIdle, drainRunning) {
					return
				}
				continue
			}
			f.abort(errors.New(terr.String()))
			f.drain.Store(drainDone)
			f.halfDone()
			return
		}
		_, err := f.h.conn.Write((*b)[:n])
		putBuf(b)
		f.touch()
		if err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			f.abort(err)
			f.drain.Store(drainDone)
			f.halfDone()
			return
		}
		f.up.Add(uint64(n))
	}
}

// downstream copies upstream -> client datagrams until the socket is empty
// (a watched flow's reader re-arms the poller and exits) or an error; the
// socket's close (abort) is one. ECONNREFUSED (an ICMP port unreachable
// for an earlier datagram) is passed on to the client.
func (f *udpFlow) downstream() {
	for {
		b, n, err := f.h.read()
		if err == syscall.EAGAIN {
			f.reader.Store(drainIdle)
			if aerr := f.s.poller.arm(f.h.rc, f.pollID); aerr != nil {
				f.abort(aerr) // closing, or the poller failed (see tcpFlow.downstream)
			}
			return
		}
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				f.s.sendPortUnreachable(f.port, f.src, f.dst)
				continue
			}
			f.abort(err)
			f.reader.Store(drainDone)
			f.halfDone()
			return
		}
		f.touch()
		_ = f.g.write(f.s.ctx, (*b)[:n]) // a datagram that does not fit is dropped, as UDP may
		putBuf(b)
		f.down.Add(uint64(n))
	}
}
