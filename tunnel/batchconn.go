package tunnel

import (
	"net"
	"sync"
)

// batchFlushSize is the buffered byte count that forces a socket write while
// batching: 64 KiB is about four full TLS records, enough to amortise the
// syscall without holding packets back noticeably.
const batchFlushSize = 64 << 10

// batchBufs recycles batch buffers: a session holds one only between its
// first queued record and the flush, so idle sessions (most of 64k) hold
// none.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, batchFlushSize+16<<10); return &b }}

// batchConn sits under a tls.Conn. openconnect needs every CSTP frame in a
// TLS record of its own, so frames cannot be merged into one record; but the
// records can share one socket write. While batching is on, writes are
// collected and sent by Flush; otherwise each write goes straight through
// (handshake, HTTP responses).
type batchConn struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	buf      *[]byte // from batchBufs while records are pending, else nil
	err      error   // sticky write error while batching
}

func newBatchConn(c net.Conn) *batchConn { return &batchConn{Conn: c} }

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.batching {
		return b.Conn.Write(p)
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.buf == nil {
		b.buf = batchBufs.Get().(*[]byte)
	}
	*b.buf = append(*b.buf, p...)
	if len(*b.buf) >= batchFlushSize {
		b.flushLocked()
	}
	return len(p), b.err
}

// setBatching turns batching on or off; turning it off flushes.
func (b *batchConn) setBatching(on bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !on {
		b.flushLocked()
	}
	b.batching = on
	return b.err
}

// Flush writes out whatever was collected.
func (b *batchConn) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
	return b.err
}

func (b *batchConn) flushLocked() {
	if b.buf == nil {
		return
	}
	if b.err == nil && len(*b.buf) > 0 {
		_, b.err = b.Conn.Write(*b.buf)
	}
	if cap(*b.buf) <= 4*batchFlushSize { // one burst must not pin a huge buffer in the pool
		*b.buf = (*b.buf)[:0]
		batchBufs.Put(b.buf)
	}
	b.buf = nil
}
