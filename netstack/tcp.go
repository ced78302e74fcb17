package netstack

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// tcpFlow relays one client TCP connection to its upstream connection.
//
// An idle flow parks no goroutine and holds no buffer: it costs the gVisor
// endpoint, the host socket and this struct. Each direction starts a
// goroutine per burst of data and ends it when its source has nothing more
// to read, so a busy flow's goroutines keep running while data keeps
// coming:
//   - client -> upstream: a waiter callback starts the drain (upstream)
//     when the endpoint becomes readable;
//   - upstream -> client: the stack's poller (poller_linux.go) starts the
//     reader (downstream) when the host socket becomes readable, and the
//     reader re-arms it when the socket is empty. Without a poller (not
//     Linux) or for a custom Dialer's connection (no raw descriptor), the
//     reader waits in the socket's Read instead: one parked goroutine.
type tcpFlow struct {
	s        *Stack
	port     *Port
	src, dst netip.AddrPort
	start    time.Time
	g        epSide   // client side, in gVisor
	h        hostSide // upstream side
	up, down uint64   // bytes client->upstream (drain), upstream->client (reader)

	entry  waiter.Entry
	drain  atomic.Int32 // upstream: drainIdle, drainRunning or drainDone
	reader atomic.Int32 // downstream: the same states
	pollID uint32       // the poller's id for the host socket; 0: not watched
	halves atomic.Int32 // directions still running; the last one tears down

	once sync.Once
	err  error
}

const (
	drainIdle int32 = iota
	drainRunning
	drainDone
)

// handleTCP runs (in a goroutine gVisor starts) for each new client SYN the
// forwarder accepts. It dials upstream first and completes the client's
// handshake only on success, so failures become a prompt RST. It then hands
// the flow to a fresh reader goroutine (small stack) and returns.
func (s *Stack) handleTCP(r *tcp.ForwarderRequest) {
	if !s.track() {
		r.Complete(true)
		return
	}
	id := r.ID()
	src := netip.AddrPortFrom(netipAddr(id.RemoteAddress), id.RemotePort)
	dst := netip.AddrPortFrom(netipAddr(id.LocalAddress), id.LocalPort)
	port := s.lookup(src.Addr())
	if port == nil || dst.Addr() == s.cfg.Addr {
		// No session (port closed since), or the gateway's own address
		// on a port nothing listens on: refuse, never forward.
		r.Complete(true)
		s.wg.Done()
		return
	}
	if !reserve(&port.tcpFlows, s.cfg.MaxTCPFlowsPerPort, &s.stats.tcpFlowsCapped) {
		// This client holds its share of flows: refuse at once, as a
		// full table would, rather than let it crowd out the others.
		r.Complete(true)
		s.wg.Done()
		return
	}
	reserved := true
	defer func() {
		if reserved { // every exit before the flow's own teardown takes it
			port.tcpFlows.Add(-1)
		}
	}()
	if !reserve(&port.dialing, s.cfg.MaxInFlightPerPort, &s.stats.tcpDialCapped) {
		// Over this client's share of the dial slots: ignore the SYN, as
		// the global cap does (the client retransmits).
		r.Complete(false)
		s.wg.Done()
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	conn, err := s.cfg.Dialer.DialContext(ctx, "tcp", dst.String())
	cancel()
	port.dialing.Add(-1)
	if err != nil {
		s.stats.tcpDialFailed.Add(1)
		s.log.Debug("netstack: tcp dial failed", "src", src, "dst", dst, "err", err)
		s.dialFailed("tcp", err)
		// ICMP unreachable where a router would send one (dialerr.go),
		// else a RST.
		r.Complete(!s.answerDialFailure(port, src, dst, err))
		s.flowLog("tcp", src, dst, time.Now(), 0, 0, err)
		s.wg.Done()
		return
	}
	port.takeSYN(src, dst) // only a failure quotes it
	f := &tcpFlow{s: s, port: port, src: src, dst: dst, start: time.Now()}
	f.g.wEntry, f.g.wCh = waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	f.g.wq.EventRegister(&f.g.wEntry)
	ep, terr := r.CreateEndpoint(&f.g.wq)
	if terr != nil {
		r.Complete(true)
		f.g.wq.EventUnregister(&f.g.wEntry)
		conn.Close()
		s.log.Debug("netstack: tcp handshake failed", "src", src, "dst", dst, "err", terr)
		s.wg.Done()
		return
	}
	r.Complete(false)
	f.g.ep = ep
	f.h.init(conn)
	if !port.addFlow(f) {
		f.g.wq.EventUnregister(&f.g.wEntry)
		ep.Abort()
		conn.Close()
		s.wg.Done()
		return
	}
	s.stats.tcpFlows.Add(1)
	s.stats.tcpActive.Add(1)
	reserved = false // halfDone releases it
	f.halves.Store(2)
	// Upstream -> client first, while nothing else runs for the flow: its
	// reader may start (and fail, and abort) as soon as watch returns, and
	// the drain started below then reads the aborted endpoint's error.
	f.watch()
	f.entry = waiter.NewFunctionEntry(readMask, func(waiter.EventMask) { f.kick() })
	f.g.wq.EventRegister(&f.entry)
	f.kick() // data may have arrived with the handshake
}

// watch hands the upstream -> client direction to the stack's poller, or
// starts a reader that waits in Read where there is none. Nothing else may
// run for the flow yet: it sets the reader's mode.
func (f *tcpFlow) watch() {
	if !f.s.watch(&f.h, f, &f.pollID, f.src, f.dst) {
		f.reader.Store(drainRunning)
		go f.downstream()
	}
}

// kick starts a drain goroutine unless one is running or the direction is
// finished. Called from gVisor's notification path: it must not block.
func (f *tcpFlow) kick() {
	if f.drain.CompareAndSwap(drainIdle, drainRunning) {
		go f.upstream()
	}
}

// ready starts a reader goroutine unless one is running or the direction
// is finished. Called by the poller (the host socket is readable) and by
// abort (the socket is closed, which the poller no longer reports): it
// must not block.
func (f *tcpFlow) ready() {
	if f.reader.CompareAndSwap(drainIdle, drainRunning) {
		go f.downstream()
	}
}

// halfDone ends one direction; the last one tears the flow down.
func (f *tcpFlow) halfDone() {
	if f.halves.Add(-1) != 0 {
		return
	}
	s := f.s
	f.g.wq.EventUnregister(&f.entry)
	f.g.wq.EventUnregister(&f.g.wEntry)
	if f.pollID != 0 {
		s.poller.remove(f.h.rc, f.pollID)
	}
	f.port.removeFlow(f)
	f.port.tcpFlows.Add(-1)
	f.g.ep.Close()
	f.h.conn.Close()
	s.stats.tcpActive.Add(-1)
	f.once.Do(func() {}) // orders a concurrent abort's f.err before the read
	s.flowLog("tcp", f.src, f.dst, f.start, f.up, f.down, f.err)
	s.wg.Done()
}

// abort resets both sides (Port.Close, errors, a reset from either
// side): the client gets a RST from the stack, and the upstream a RST
// from the host socket (SO_LINGER 0), as a router would pass a reset on.
// A client's reset must not reach the server as an orderly close: a
// database or RPC server would take a half-sent request for a whole one.
func (f *tcpFlow) abort(err error) {
	f.once.Do(func() {
		f.err = err
		f.g.ep.Abort()
		if l, ok := f.h.conn.(interface{ SetLinger(sec int) error }); ok {
			_ = l.SetLinger(0) // close sends RST (a custom Dialer's conn may not offer this: it then closes)
		}
		f.h.conn.Close()
	})
	// An idle watched reader has no goroutine to see the close, and the
	// poller reports nothing for a closed socket: start one.
	f.ready()
}

// upstream drains client -> upstream until the receive queue is empty
// (then exits, to be kicked again), the client's FIN (propagated as
// CloseWrite) or an error (both sides reset).
func (f *tcpFlow) upstream() {
	for {
		for f.g.ep.Readiness(readMask) != 0 {
			b, n, terr := f.g.read()
			if terr != nil {
				switch terr.(type) {
				case *tcpip.ErrWouldBlock:
					continue
				case *tcpip.ErrClosedForReceive:
					closeWrite(f.h.conn)
				default:
					f.abort(errors.New(terr.String()))
				}
				f.drain.Store(drainDone)
				f.halfDone()
				return
			}
			_, err := f.h.conn.Write((*b)[:n])
			putBuf(b)
			if err != nil {
				f.abort(err)
				f.drain.Store(drainDone)
				f.halfDone()
				return
			}
			f.up += uint64(n)
		}
		f.drain.Store(drainIdle)
		// A notification between the last Readiness and the Store found
		// the drain running and did nothing: look again.
		if f.g.ep.Readiness(readMask) == 0 || !f.drain.CompareAndSwap(drainIdle, drainRunning) {
			return
		}
	}
}

// downstream copies upstream -> client until upstream EOF (propagated as a
// FIN) or an error (both sides reset). A watched flow's reader (h.nowait)
// also returns when the socket has nothing more to read, after re-arming
// the poller; the next readability (or abort) starts a new one.
func (f *tcpFlow) downstream() {
	ctx := f.s.ctx
	for {
		b, n, err := f.h.read()
		if err == syscall.EAGAIN {
			f.reader.Store(drainIdle)
			aerr := f.s.poller.arm(f.h.rc, f.pollID)
			if aerr != nil {
				// The socket is closing (abort has run, and its ready
				// may have found this reader still running), or the
				// poller failed: end the flow either way. abort's ready
				// starts the reader that reads the close, unless one
				// has started already.
				f.abort(aerr)
			}
			return // the poller (or abort) starts the next reader
		}
		if err != nil {
			if err == io.EOF {
				f.g.ep.Shutdown(tcpip.ShutdownWrite)
			} else {
				f.abort(err)
			}
			f.reader.Store(drainDone)
			f.halfDone()
			return
		}
		err = f.g.write(ctx, (*b)[:n])
		putBuf(b)
		if err != nil {
			f.abort(err)
			f.reader.Store(drainDone)
			f.halfDone()
			return
		}
		f.down += uint64(n)
	}
}

func (s *Stack) flowLog(proto string, src, dst netip.AddrPort, start time.Time, up, down uint64, err error) {
	if s.cfg.FlowLog == nil {
		return
	}
	s.cfg.FlowLog(FlowRecord{Proto: proto, Src: src, Dst: dst, BytesUp: up, BytesDown: down,
		Start: start, Duration: time.Since(start), Err: err})
}
