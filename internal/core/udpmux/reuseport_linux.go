//go:build linux

package udpmux

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// steeringProgram is the classic BPF program attached to the reuseport
// group. Its return value is the index of the socket in the group that
// receives the datagram (sideQUIC = 0 or sideDTLS = 1). For UDP the kernel
// runs it with offset 0 at the first byte of the UDP payload. It must agree
// with IsDTLS; TestProgramMatchesIsDTLS and TestKernelEveryFirstByte check.
func steeringProgram() []bpf.Instruction {
	return []bpf.Instruction{
		// A = payload[0]. On an empty payload the load is out of bounds
		// and the kernel ends the program with return value 0: QUIC.
		bpf.LoadAbsolute{Off: 0, Size: 1},
		// Fixed bit set: fall through to "return QUIC"; clear: skip it.
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: fixedBit, SkipTrue: 0, SkipFalse: 1},
		bpf.RetConstant{Val: sideQUIC},
		bpf.RetConstant{Val: sideDTLS},
	}
}

// listenKernel binds the QUIC socket (reuseport index 0) and then the DTLS
// socket (index 1) to the same address with SO_REUSEPORT and attaches the
// steering program. It returns a *kernelUnsupportedError if the kernel
// refuses SO_REUSEPORT or the program, so the caller can fall back.
func listenKernel(ctx context.Context, network, addr string) (*Mux, error) {
	raw, err := bpf.Assemble(steeringProgram())
	if err != nil {
		return nil, fmt.Errorf("udpmux: assembling steering program: %w", err)
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, ins := range raw {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}

	// Refuse to join a reuseport group someone else already holds (see
	// "Reuseport group hijacking" in the package documentation).
	if err := probeFree(ctx, network, addr); err != nil {
		return nil, err
	}

	lc := net.ListenConfig{Control: setReusePort}
	c0, err := lc.ListenPacket(ctx, network, addr)
	if err != nil {
		return nil, classify(err)
	}
	quicConn := c0.(*net.UDPConn)
	// Bind the second socket to exactly the address the first one got,
	// including the port the kernel chose for port 0. Using the bound
	// address (not addr again) avoids resolving a host name twice.
	c1, err := lc.ListenPacket(ctx, network, quicConn.LocalAddr().String())
	if err != nil {
		quicConn.Close()
		return nil, classify(err)
	}
	dtlsConn := c1.(*net.UDPConn)
	closeBoth := func() {
		dtlsConn.Close()
		quicConn.Close()
	}

	if err := sameSocketKind(quicConn, dtlsConn); err != nil {
		closeBoth()
		return nil, err
	}

	// The program belongs to the group, so attaching it through any
	// member applies it to both sockets.
	if err := control(quicConn, func(fd int) error {
		prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
		return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &prog)
	}); err != nil {
		closeBoth()
		return nil, &kernelUnsupportedError{cause: fmt.Errorf("SO_ATTACH_REUSEPORT_CBPF: %w", err)}
	}
	return &Mux{quic: quicConn, dtls: dtlsConn, kernel: true}, nil
}

// probeFree binds addr once without SO_REUSEPORT when its port is fixed.
// That fails with EADDRINUSE if any socket holds the address, including a
// reuseport group our sockets would otherwise silently join.
func probeFree(ctx context.Context, network, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return &net.OpError{Op: "listen", Net: network, Err: err}
	}
	p, err := net.DefaultResolver.LookupPort(ctx, network, port)
	if err != nil {
		return &net.OpError{Op: "listen", Net: network, Err: err}
	}
	if p == 0 {
		return nil // the kernel picks a port that nobody holds
	}
	var lc net.ListenConfig
	c, err := lc.ListenPacket(ctx, network, addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// setReusePort is the net.ListenConfig.Control hook: SO_REUSEPORT must be
// set before bind for the socket to join the group.
func setReusePort(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return &kernelUnsupportedError{cause: fmt.Errorf("SO_REUSEPORT: %w", serr)}
	}
	return nil
}

// classify keeps a setReusePort failure recognisable as "unsupported"
// through the *net.OpError that ListenPacket wraps it in.
func classify(err error) error {
	var unsupported *kernelUnsupportedError
	if errors.As(err, &unsupported) {
		return unsupported
	}
	return err
}

// sameSocketKind checks that both sockets have the same address family and,
// for IPv6, the same IPV6_V6ONLY setting. Sockets that differ would land in
// different reuseport groups, and the program would see a one-socket group.
func sameSocketKind(a, b *net.UDPConn) error {
	kind := func(c *net.UDPConn) (domain, v6only int, err error) {
		err = control(c, func(fd int) error {
			var err error
			if domain, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil {
				return err
			}
			if domain == unix.AF_INET6 {
				v6only, err = unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
			}
			return err
		})
		return domain, v6only, err
	}
	da, va, err := kind(a)
	if err != nil {
		return err
	}
	db, vb, err := kind(b)
	if err != nil {
		return err
	}
	if da != db || va != vb {
		return fmt.Errorf("udpmux: sockets differ (domain %d/%d, v6only %d/%d)", da, db, va, vb)
	}
	return nil
}

// control runs f on c's file descriptor and returns f's error.
func control(c *net.UDPConn, f func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}
