package netstack

import (
	"errors"
	"io"
	"net"
	"syscall"

	"gvisor.dev/gvisor/pkg/syserr"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// The client stack's connections report errors as the kernel's sockets do.
// gonet turns gVisor's errors into text ("connection was refused"), but a
// program written against the host network branches on the errno
// (errors.Is(err, syscall.ECONNREFUSED)), and happy eyeballs and database
// drivers treat refused, reset and unreachable differently. So every
// error of a DialContext, Read or Write carries the errno a Linux socket
// returns for the same event, as gVisor's own sentry maps them
// (syserr.TranslateNetstackError); net.OpError's Op and addresses stay.

// errnoOf maps the text of each gVisor error a connection can meet to its
// errno.
var errnoOf = func() map[string]syscall.Errno {
	m := make(map[string]syscall.Errno)
	for _, e := range []tcpip.Error{
		&tcpip.ErrConnectionRefused{}, &tcpip.ErrConnectionReset{}, &tcpip.ErrConnectionAborted{},
		&tcpip.ErrHostUnreachable{}, &tcpip.ErrNetworkUnreachable{}, &tcpip.ErrHostDown{}, &tcpip.ErrNoNet{},
		&tcpip.ErrTimeout{}, &tcpip.ErrAborted{}, &tcpip.ErrClosedForSend{}, &tcpip.ErrNotConnected{},
		&tcpip.ErrMessageTooLong{}, &tcpip.ErrNoBufferSpace{}, &tcpip.ErrNoPortAvailable{},
		&tcpip.ErrBadLocalAddress{}, &tcpip.ErrNotPermitted{},
	} {
		if n := syscall.Errno(syserr.TranslateNetstackError(e).ToLinux()); n != 0 {
			m[e.String()] = n
		}
	}
	// Where a Linux socket says otherwise than gVisor's sentry: connect()
	// without a free ephemeral port fails with EADDRNOTAVAIL (ip(7)).
	m[(&tcpip.ErrNoPortAvailable{}).String()] = syscall.EADDRNOTAVAIL
	return m
}()

// asErrno returns err with a gVisor error's text replaced by its errno.
func asErrno(err error) error {
	var oe *net.OpError
	if err == nil || err == io.EOF || !errors.As(err, &oe) || oe.Err == nil {
		return err
	}
	n, ok := errnoOf[oe.Err.Error()]
	if !ok {
		return err
	}
	c := *oe
	c.Err = n
	return &c
}

// clientTCPConn is a gonet TCP connection whose errors are errnos. It
// keeps CloseRead, CloseWrite and the deadlines.
type clientTCPConn struct{ *gonet.TCPConn }

func (c clientTCPConn) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	return n, asErrno(err)
}

func (c clientTCPConn) Write(b []byte) (int, error) {
	n, err := c.TCPConn.Write(b)
	return n, asErrno(err)
}

func (c clientTCPConn) CloseWrite() error { return asErrno(c.TCPConn.CloseWrite()) }

func (c clientTCPConn) CloseRead() error { return asErrno(c.TCPConn.CloseRead()) }

// clientUDPConn is clientTCPConn's UDP counterpart.
type clientUDPConn struct{ *gonet.UDPConn }

func (c clientUDPConn) Read(b []byte) (int, error) {
	n, err := c.UDPConn.Read(b)
	return n, asErrno(err)
}

func (c clientUDPConn) Write(b []byte) (int, error) {
	n, err := c.UDPConn.Write(b)
	return n, asErrno(err)
}

func (c clientUDPConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, a, err := c.UDPConn.ReadFrom(b)
	return n, a, asErrno(err)
}

func (c clientUDPConn) WriteTo(b []byte, a net.Addr) (int, error) {
	n, err := c.UDPConn.WriteTo(b, a)
	return n, asErrno(err)
}
