package udpmux

import (
	"context"
	"errors"
	"net"
	"sync"
)

// fixedBit is the QUIC "fixed bit" (RFC 9000 §17.2, §17.3.1): set in the
// first byte of every QUIC v1/v2 packet, clear in every DTLS record because
// DTLS content types (20..25) are below 64.
const fixedBit = 0x40

// IsDTLS reports whether datagram b belongs to the DTLS side of the port:
// its first byte has the QUIC fixed bit 0x40 clear. An empty datagram is
// not DTLS; it goes to the QUIC side, as it does in the kernel program.
func IsDTLS(b []byte) bool {
	return len(b) > 0 && b[0]&fixedBit == 0
}

// Config selects how [Config.Listen] demultiplexes. The zero value is what
// production code wants; [Listen] uses it.
type Config struct {
	// ForceFallback skips the Linux reuseport program and always uses the
	// portable single-socket demultiplexer. It exists for tests and for
	// comparing the two paths.
	ForceFallback bool
}

// Stats are counters of a [Mux].
type Stats struct {
	// QUICDropped and DTLSDropped count datagrams the fallback discarded
	// because that side's queue already held queueLen datagrams. They stay
	// zero on the kernel path, which has no user-space queue; kernel
	// receive-buffer drops show up in the "drops" column of /proc/net/udp
	// and /proc/net/udp6 as they would for any socket.
	QUICDropped uint64
	DTLSDropped uint64
}

// Mux is one UDP port serving QUIC and DTLS. Create it with [Listen] or
// [Config.Listen]; it is safe for concurrent use.
type Mux struct {
	quic, dtls net.PacketConn
	kernel     bool
	fb         *fallback // nil on the kernel path

	closeOnce sync.Once
	closeErr  error
}

// Listen binds addr ("host:port"; network "udp", "udp4" or "udp6") for both
// protocols, like net.ListenPacket. Port 0 picks a free port, reported by
// [Mux.LocalAddr]. A host of "" or "::" with network "udp" gives a
// dual-stack socket as net.ListenPacket does. ctx only bounds address
// resolution. Errors are mostly *net.OpError values from the failing bind
// (for example wrapping syscall.EADDRINUSE, also when a same-user
// SO_REUSEPORT group already holds a fixed port) or wrap
// net.UnknownNetworkError for a network other than udp, udp4 and udp6.
//
// On Linux the kernel steers datagrams (see the package documentation) and
// [Mux.Kernel] reports true; if the kernel refuses SO_REUSEPORT or the
// steering program, Listen quietly uses the portable fallback instead.
func Listen(ctx context.Context, network, addr string) (*Mux, error) {
	return Config{}.Listen(ctx, network, addr)
}

// Listen is [Listen] with the options in c.
func (c Config) Listen(ctx context.Context, network, addr string) (*Mux, error) {
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	if !c.ForceFallback {
		m, err := listenKernel(ctx, network, addr)
		if err == nil {
			return m, nil
		}
		var unsupported *kernelUnsupportedError
		if !errors.As(err, &unsupported) {
			return nil, err
		}
	}
	return listenFallback(ctx, network, addr)
}

// kernelUnsupportedError marks listenKernel failures after which the
// fallback should be tried: no SO_REUSEPORT, no reuseport program, or not
// Linux. (A type rather than a sentinel variable: no package state.)
type kernelUnsupportedError struct{ cause error }

func (e *kernelUnsupportedError) Error() string {
	return "udpmux: kernel demultiplexing unsupported: " + e.cause.Error()
}

func (e *kernelUnsupportedError) Unwrap() error { return e.cause }

// QUIC returns the connection that receives QUIC datagrams; pass it to
// quic.Listen or a quic.Transport. On the kernel path it is a *net.UDPConn.
// Close the [Mux] rather than this connection: closing one side alone
// leaves the other side receiving both protocols on the kernel path.
func (m *Mux) QUIC() net.PacketConn { return m.quic }

// DTLS returns the connection that receives DTLS datagrams (every datagram
// for which [IsDTLS] is true). On the kernel path it is a *net.UDPConn with
// its own receive buffer; size it with SetReadBuffer (the fallback view
// forwards SetReadBuffer to the shared socket).
func (m *Mux) DTLS() net.PacketConn { return m.dtls }

// LocalAddr returns the bound address, with the port the kernel chose if
// the port was 0.
func (m *Mux) LocalAddr() net.Addr { return m.quic.LocalAddr() }

// Kernel reports whether the Linux reuseport program steers datagrams (the
// fast path) rather than the portable fallback goroutine.
func (m *Mux) Kernel() bool { return m.kernel }

// Stats returns the drop counters; see [Stats].
func (m *Mux) Stats() Stats {
	if m.fb == nil {
		return Stats{}
	}
	return m.fb.stats()
}

// Close closes both sides together and unblocks their readers with an
// error wrapping net.ErrClosed. It is idempotent: later calls return the
// first call's result.
func (m *Mux) Close() error {
	m.closeOnce.Do(func() {
		if m.fb != nil {
			m.closeErr = m.fb.close()
			return
		}
		// Close the DTLS socket (index 1) first: closing index 0 first
		// would move the DTLS socket into slot 0 and briefly hand it QUIC
		// traffic too.
		errD := m.dtls.Close()
		errQ := m.quic.Close()
		m.closeErr = errors.Join(errQ, errD)
	})
	return m.closeErr
}
