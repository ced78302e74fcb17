package netstack

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// tcpFlow relays one client TCP connection to its upstream connection.
type tcpFlow struct {
	s        *Stack
	port     *Port
	src, dst netip.AddrPort
	start    time.Time
	g        epSide   // client side, in gVisor
	h        hostSide // upstream side
	up, down uint64   // bytes client->upstream, upstream->client

	once sync.Once
	err  error
}

// handleTCP runs (in a goroutine gVisor starts) for each new client SYN the
// forwarder accepts. It dials upstream first and completes the client's
// handshake only on success, so failures become a prompt RST. The goroutine
// then carries the client->upstream half of the relay.
func (s *Stack) handleTCP(r *tcp.ForwarderRequest) {
	if !s.track() {
		r.Complete(true)
		return
	}
	defer s.wg.Done()
	id := r.ID()
	src := netip.AddrPortFrom(netipAddr(id.RemoteAddress), id.RemotePort)
	dst := netip.AddrPortFrom(netipAddr(id.LocalAddress), id.LocalPort)
	port := s.lookup(src.Addr())
	if port == nil || dst.Addr() == s.cfg.Addr {
		// No session (port closed since), or the gateway's own address
		// on a port nothing listens on: refuse, never forward.
		r.Complete(true)
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	conn, err := s.cfg.Dialer.DialContext(ctx, "tcp", dst.String())
	cancel()
	if err != nil {
		s.stats.tcpDialFailed.Add(1)
		s.log.Debug("netstack: tcp dial failed", "src", src, "dst", dst, "err", err)
		r.Complete(true)
		s.flowLog("tcp", src, dst, time.Now(), 0, 0, err)
		return
	}
	f := &tcpFlow{s: s, port: port, src: src, dst: dst, start: time.Now()}
	f.g.register()
	defer f.g.unregister()
	ep, terr := r.CreateEndpoint(&f.g.wq)
	if terr != nil {
		r.Complete(true)
		conn.Close()
		s.log.Debug("netstack: tcp handshake failed", "src", src, "dst", dst, "err", terr)
		return
	}
	r.Complete(false)
	f.g.ep = ep
	f.h.init(conn)
	if !port.addFlow(f) {
		ep.Abort()
		conn.Close()
		return
	}
	s.stats.tcpFlows.Add(1)
	s.stats.tcpActive.Add(1)

	s.wg.Add(1) // safe: this goroutine is already counted
	done := make(chan struct{})
	go func() {
		defer s.wg.Done()
		defer close(done)
		f.downstream()
	}()
	f.upstream()
	<-done

	port.removeFlow(f)
	ep.Close()
	conn.Close()
	s.stats.tcpActive.Add(-1)
	f.once.Do(func() {}) // orders a concurrent abort's f.err before the read
	s.flowLog("tcp", src, dst, f.start, f.up, f.down, f.err)
}

// abort resets both sides (Port.Close, errors).
func (f *tcpFlow) abort(err error) {
	f.once.Do(func() {
		f.err = err
		f.g.ep.Abort()
		f.h.conn.Close()
	})
}

// upstream copies client -> upstream until the client's FIN (propagated as
// CloseWrite) or an error (both sides reset).
func (f *tcpFlow) upstream() {
	ctx := f.s.ctx
	for {
		if err := f.g.waitReadable(ctx, nil); err != nil {
			f.abort(err)
			return
		}
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
			return
		}
		_, err := f.h.conn.Write((*b)[:n])
		putBuf(b)
		if err != nil {
			f.abort(err)
			return
		}
		f.up += uint64(n)
	}
}

// downstream copies upstream -> client until upstream EOF (propagated as a
// FIN) or an error (both sides reset).
func (f *tcpFlow) downstream() {
	ctx := f.s.ctx
	for {
		b, n, err := f.h.read()
		if err != nil {
			if err == io.EOF {
				f.g.ep.Shutdown(tcpip.ShutdownWrite)
			} else {
				f.abort(err)
			}
			return
		}
		err = f.g.write(ctx, (*b)[:n])
		putBuf(b)
		if err != nil {
			f.abort(err)
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
