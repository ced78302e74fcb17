package netstack

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// relayBufSize is the copy buffer a flow borrows while data moves: 64 KiB
// means one host syscall per 64 KiB in bulk transfers (and holds any UDP
// datagram), yet costs nothing while the flow is idle because it goes back
// to the pool before the flow waits again.
const relayBufSize = 64 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

func getBuf() *[]byte  { return relayBufs.Get().(*[]byte) }
func putBuf(b *[]byte) { relayBufs.Put(b) }

// hostSide reads an upstream connection without holding a buffer while it
// waits. For *net.TCPConn and *net.UDPConn it waits for readability in the
// runtime poller via syscall.RawConn and borrows a pooled buffer only for
// the read(2) itself. Any other net.Conn (a custom Dialer's) is read with a
// pooled buffer held across the blocking Read.
type hostSide struct {
	conn net.Conn
	rc   syscall.RawConn
	// results of rawRead, kept here so the callback (bound once per flow)
	// does not allocate per read.
	fn  func(uintptr) bool
	buf *[]byte
	n   int
	err error
	// nowait makes read return syscall.EAGAIN instead of waiting when
	// there is nothing to read (a flow the poller wakes).
	nowait bool
}

func (h *hostSide) init(c net.Conn) {
	h.conn = c
	var sc syscall.Conn
	switch c := c.(type) { // exact types only: a wrapper may buffer or transform
	case *net.TCPConn:
		sc = c
	case *net.UDPConn:
		sc = c
	}
	if sc != nil {
		if rc, err := sc.SyscallConn(); err == nil {
			h.rc = rc
			h.fn = h.rawRead
		}
	}
}

func (h *hostSide) rawRead(fd uintptr) bool {
	b := getBuf()
	for {
		h.n, h.err = syscall.Read(int(fd), *b)
		if h.err != syscall.EINTR {
			break
		}
	}
	if h.err == syscall.EAGAIN {
		putBuf(b)
		return h.nowait // else wait for readability, then call again
	}
	h.buf = b
	return true
}

// read returns data in a pooled buffer (release with putBuf) or an error;
// io.EOF at end of stream, syscall.EAGAIN for no data yet if h.nowait.
func (h *hostSide) read() (*[]byte, int, error) {
	if h.rc == nil {
		b := getBuf()
		n, err := h.conn.Read(*b)
		if n > 0 {
			return b, n, nil
		}
		putBuf(b)
		if err == nil {
			err = io.ErrNoProgress
		}
		return nil, 0, err
	}
	h.buf, h.n, h.err = nil, 0, nil
	if err := h.rc.Read(h.fn); err != nil {
		if h.buf != nil {
			putBuf(h.buf)
		}
		return nil, 0, err
	}
	b, n, err := h.buf, h.n, h.err
	h.buf = nil
	if err == syscall.EAGAIN { // nowait: rawRead kept no buffer
		return nil, 0, err
	}
	if err != nil || n < 0 {
		putBuf(b)
		return nil, 0, err
	}
	if n == 0 {
		if h.isStream() {
			putBuf(b)
			return nil, 0, io.EOF
		}
	}
	return b, n, nil
}

func (h *hostSide) isStream() bool {
	_, ok := h.conn.(*net.UDPConn)
	return !ok
}

// watch hands a flow's host socket to the stack's poller, armed: w.ready
// is then called when it turns readable (data the server sent first, a
// banner, included), and h.read returns syscall.EAGAIN rather than wait.
// It reports false, changing nothing, where there is no poller or no raw
// descriptor (a custom Dialer's connection): the caller then starts a
// reader that waits in Read. Nothing may run for the flow yet.
func (s *Stack) watch(h *hostSide, w watched, id *uint32, src, dst netip.AddrPort) bool {
	if s.poller == nil || h.rc == nil {
		return false
	}
	h.nowait = true
	if err := s.poller.add(h.rc, w, id); err != nil {
		h.nowait = false // not watched, so no reader started
		s.log.Debug("netstack: flow not watched", "src", src, "dst", dst, "err", err)
		return false
	}
	return true
}

// closeWrite half-closes the upstream connection if it can; otherwise it
// does nothing and the flow ends when the destination closes.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// epSide is the gVisor endpoint of a flow, with a write wait channel
// registered once for the flow's life.
type epSide struct {
	ep     tcpip.Endpoint
	wq     waiter.Queue
	wEntry waiter.Entry
	wCh    chan struct{}
	sw     tcpip.SliceWriter
	rd     bytes.Reader
}

const readMask = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr

// register registers the channel write waits on.
func (e *epSide) register() {
	e.wEntry, e.wCh = waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	e.wq.EventRegister(&e.wEntry)
}

func (e *epSide) unregister() { e.wq.EventUnregister(&e.wEntry) }

// read reads what is available into a pooled buffer (release with putBuf).
func (e *epSide) read() (*[]byte, int, tcpip.Error) {
	b := getBuf()
	e.sw = *b
	res, err := e.ep.Read(&e.sw, tcpip.ReadOptions{})
	e.sw = nil
	if err != nil {
		putBuf(b)
		return nil, 0, err
	}
	// Receive-buffer auto-tuning (TCPModerateReceiveBufferOption) runs only
	// when the reader reports what it copied, as gonet and gVisor's sentry
	// do after every read. Without it the window stays at the initial
	// buffer's (~124 KiB): an uploading client was measured window-limited
	// 68% of the time (ss -ti rwnd_limited) behind DTLS.
	e.ep.ModerateRecvBuf(res.Count)
	return b, res.Count, nil
}

// write writes all of data, waiting for send-buffer room. It writes at
// least once, so an empty UDP datagram is sent as one (a TCP endpoint
// ignores an empty write).
func (e *epSide) write(ctx context.Context, data []byte) error {
	e.rd.Reset(data)
	for {
		_, err := e.ep.Write(&e.rd, tcpip.WriteOptions{})
		if err == nil {
			if e.rd.Len() == 0 {
				break
			}
			continue
		}
		if _, ok := err.(*tcpip.ErrWouldBlock); !ok {
			return errors.New(err.String())
		}
		select {
		case <-e.wCh:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	e.rd.Reset(nil)
	return nil
}
