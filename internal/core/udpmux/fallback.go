package udpmux

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// queueLen is how many datagrams each fallback view buffers before the
	// reader goroutine drops. quic-go's own non-QUIC queue holds 32 and lost
	// 21% at 64 in flight; 1024 is 32 times that. At 1500 bytes per
	// datagram it absorbs a 1.5 MB burst, about 12 ms of a saturated
	// 1 Gbit/s link during which a consumer is descheduled or stopped by the
	// GC, while capping queued memory at queueLen*smallBufSize = 2 MiB per
	// view. It is not a power-of-two requirement, just a round number.
	queueLen = 1024

	// smallBufSize is the size of pooled datagram buffers. Every datagram
	// on a path with an MTU of up to 2 KiB fits, which covers QUIC (quic-go
	// sends at most 1452-byte packets, protocol.MaxPacketBufferSize) and
	// AnyConnect DTLS (sized to the tunnel MTU, at most the 1500-byte
	// Ethernet MTU). Larger datagrams (jumbo frames) get an exact-size
	// allocation instead of being truncated.
	smallBufSize = 2048

	// maxDatagram is the size of the reader's one scratch buffer: the
	// largest value of the 16-bit UDP length field, so no UDP payload is
	// ever truncated by the reader.
	maxDatagram = 65535
)

// Indexes of the two sides. On the kernel path they are also the reuseport
// group indexes the BPF program returns.
const (
	sideQUIC = 0
	sideDTLS = 1
)

// listenFallback binds one plain socket (no SO_REUSEPORT) and starts the
// dispatching reader.
func listenFallback(ctx context.Context, network, addr string) (*Mux, error) {
	var lc net.ListenConfig
	c, err := lc.ListenPacket(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	f := newFallback(c)
	return &Mux{quic: f.views[sideQUIC], dtls: f.views[sideDTLS], fb: f}, nil
}

// datagram is one queued datagram; *buf is exactly its payload.
type datagram struct {
	buf  *[]byte
	addr net.Addr
}

// fallback is the portable demultiplexer: one socket, one reader goroutine,
// two bounded queues.
type fallback struct {
	conn  net.PacketConn
	laddr net.Addr
	views [2]*view
	drops [2]atomic.Uint64
	pool  sync.Pool // of *[]byte with cap smallBufSize

	// done is closed when the reader goroutine has stopped; err (written
	// before done is closed) says why: an error wrapping net.ErrClosed
	// after Close, otherwise the socket's read error.
	done chan struct{}
	err  error
	wg   sync.WaitGroup
}

func newFallback(c net.PacketConn) *fallback {
	f := &fallback{conn: c, laddr: c.LocalAddr(), done: make(chan struct{})}
	f.pool.New = func() any {
		b := make([]byte, smallBufSize)
		return &b
	}
	for i := range f.views {
		f.views[i] = &view{
			f:      f,
			queue:  make(chan datagram, queueLen),
			closed: make(chan struct{}),
			rd:     NewDeadline(),
			wd:     NewDeadline(),
		}
	}
	f.wg.Add(1)
	go f.read()
	return f
}

// read dispatches datagrams until the socket fails or is closed. A read
// error ends it: on Linux and the BSDs an unconnected UDP socket reports no
// ICMP errors, and Go disables WSAECONNRESET reporting on Windows, so a
// read error means the socket is unusable; the views then report it.
func (f *fallback) read() {
	defer f.wg.Done()
	scratch := make([]byte, maxDatagram)
	for {
		n, addr, err := f.conn.ReadFrom(scratch)
		if err != nil {
			f.err = err
			close(f.done)
			return
		}
		side := sideQUIC
		if IsDTLS(scratch[:n]) {
			side = sideDTLS
		}
		v := f.views[side]
		if v.isClosed() {
			continue
		}
		bp := f.getBuf(n)
		copy(*bp, scratch[:n])
		select {
		case v.queue <- datagram{buf: bp, addr: addr}:
		default:
			f.drops[side].Add(1)
			f.putBuf(bp)
		}
	}
}

func (f *fallback) getBuf(n int) *[]byte {
	if n > smallBufSize {
		b := make([]byte, n)
		return &b
	}
	bp := f.pool.Get().(*[]byte)
	*bp = (*bp)[:n]
	return bp
}

func (f *fallback) putBuf(bp *[]byte) {
	if cap(*bp) != smallBufSize {
		return // an exact-size large buffer; let the GC have it
	}
	*bp = (*bp)[:smallBufSize]
	f.pool.Put(bp)
}

func (f *fallback) stats() Stats {
	return Stats{
		QUICDropped: f.drops[sideQUIC].Load(),
		DTLSDropped: f.drops[sideDTLS].Load(),
	}
}

// close closes the socket, which stops the reader and so unblocks every
// view's ReadFrom, and waits for the reader goroutine to exit.
func (f *fallback) close() error {
	err := f.conn.Close()
	f.wg.Wait()
	return err
}

// view is one side of the fallback: a net.PacketConn that reads from its
// queue and writes to the shared socket.
type view struct {
	f         *fallback
	queue     chan datagram
	closeOnce sync.Once
	closed    chan struct{}
	rd, wd    *Deadline
}

var _ net.PacketConn = (*view)(nil)

func (v *view) isClosed() bool { return isDone(v.closed) }

func (v *view) opErr(op string, addr net.Addr, err error) error {
	return &net.OpError{Op: op, Net: v.f.laddr.Network(), Source: v.f.laddr, Addr: addr, Err: err}
}

// ReadFrom returns the next datagram of this side, truncated to len(p) as a
// UDP socket would. Errors: os.ErrDeadlineExceeded (a timeout net.Error)
// after the read deadline, net.ErrClosed after Close of this view or of the
// Mux, or the socket's read error once the queued datagrams are consumed.
func (v *view) ReadFrom(p []byte) (int, net.Addr, error) {
	// Like a socket, fail once the deadline has passed even if data waits.
	select {
	case <-v.closed:
		return 0, nil, v.opErr("read", nil, net.ErrClosed)
	case <-v.rd.Expired():
		return 0, nil, v.opErr("read", nil, os.ErrDeadlineExceeded)
	default:
	}
	select {
	case d := <-v.queue:
		return v.deliver(p, d)
	case <-v.closed:
		return 0, nil, v.opErr("read", nil, net.ErrClosed)
	case <-v.rd.Expired():
		return 0, nil, v.opErr("read", nil, os.ErrDeadlineExceeded)
	case <-v.f.done:
		if errors.Is(v.f.err, net.ErrClosed) {
			return 0, nil, v.opErr("read", nil, net.ErrClosed)
		}
		// The socket failed: hand out what was queued first.
		select {
		case d := <-v.queue:
			return v.deliver(p, d)
		default:
			return 0, nil, v.f.err
		}
	}
}

func (v *view) deliver(p []byte, d datagram) (int, net.Addr, error) {
	n := copy(p, *d.buf)
	v.f.putBuf(d.buf)
	return n, d.addr, nil
}

// WriteTo sends p to addr through the shared socket. The view's write
// deadline is checked before sending; a send already blocked in the kernel
// (rare for UDP) is interrupted only by closing the Mux.
func (v *view) WriteTo(p []byte, addr net.Addr) (int, error) {
	select {
	case <-v.closed:
		return 0, v.opErr("write", addr, net.ErrClosed)
	case <-v.wd.Expired():
		return 0, v.opErr("write", addr, os.ErrDeadlineExceeded)
	default:
	}
	return v.f.conn.WriteTo(p, addr)
}

// Close closes this view only: its readers get net.ErrClosed and datagrams
// for it are discarded from then on. The socket stays open until the Mux is
// closed. A second Close returns an error wrapping net.ErrClosed.
func (v *view) Close() error {
	err := v.opErr("close", nil, net.ErrClosed)
	v.closeOnce.Do(func() {
		close(v.closed)
		err = nil
	})
	return err
}

func (v *view) LocalAddr() net.Addr { return v.f.laddr }

func (v *view) SetDeadline(t time.Time) error {
	v.rd.Set(t)
	v.wd.Set(t)
	return nil
}

func (v *view) SetReadDeadline(t time.Time) error {
	v.rd.Set(t)
	return nil
}

func (v *view) SetWriteDeadline(t time.Time) error {
	v.wd.Set(t)
	return nil
}

// SetReadBuffer, SetWriteBuffer and SyscallConn reach the shared socket.
// quic-go uses them to grow the socket buffers and to set the
// don't-fragment option needed for path MTU discovery; both sides share
// the socket, so such settings apply to both.

func (v *view) SetReadBuffer(n int) error {
	c, ok := v.f.conn.(interface{ SetReadBuffer(int) error })
	if !ok {
		return v.opErr("set", nil, errors.ErrUnsupported)
	}
	return c.SetReadBuffer(n)
}

func (v *view) SetWriteBuffer(n int) error {
	c, ok := v.f.conn.(interface{ SetWriteBuffer(int) error })
	if !ok {
		return v.opErr("set", nil, errors.ErrUnsupported)
	}
	return c.SetWriteBuffer(n)
}

func (v *view) SyscallConn() (syscall.RawConn, error) {
	c, ok := v.f.conn.(syscall.Conn)
	if !ok {
		return nil, v.opErr("raw", nil, errors.ErrUnsupported)
	}
	return c.SyscallConn()
}

func isDone(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
