package netstack

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// ListenTCP listens for clients' TCP connections to ap inside the tunnel
// (e.g. the gateway's web page on Config.Addr:80). No host socket is used.
// Connections to ap reach the listener and are never forwarded; ap's
// address becomes reachable by clients regardless of Config.Allow.
func (s *Stack) ListenTCP(ap netip.AddrPort) (net.Listener, error) {
	if err := s.addLocal(ap, protoTCP); err != nil {
		return nil, err
	}
	l, err := gonet.ListenTCP(s.st, fullAddr(ap), protoOf(ap.Addr()))
	if err != nil {
		return nil, fmt.Errorf("netstack: listen tcp %v: %w", ap, err)
	}
	tl := &tcpListener{TCPListener: l, s: s}
	if !s.addListener(tl) {
		l.Close()
		return nil, ErrClosed
	}
	return tl, nil
}

// ListenUDP opens a packet socket for clients' UDP datagrams to ap inside the
// tunnel (e.g. the DNS proxy). Datagrams to ap reach it and are never
// forwarded; ap's address becomes reachable regardless of Config.Allow.
func (s *Stack) ListenUDP(ap netip.AddrPort) (net.PacketConn, error) {
	if err := s.addLocal(ap, protoUDP); err != nil {
		return nil, err
	}
	fa := fullAddr(ap)
	c, err := gonet.DialUDP(s.st, &fa, nil, protoOf(ap.Addr()))
	if err != nil {
		return nil, fmt.Errorf("netstack: listen udp %v: %w", ap, err)
	}
	uc := &udpListener{UDPConn: c, s: s}
	if !s.addListener(uc) {
		c.Close()
		return nil, ErrClosed
	}
	return uc, nil
}

// addLocal makes ap's address one of the stack's own, for proto (protoTCP
// or protoUDP) at ap's port only. The address and port stay local until the
// stack closes (listeners come and go; the entry is cheap).
func (s *Stack) addLocal(ap netip.AddrPort, proto uint8) error {
	a := ap.Addr()
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.Is4In6() || a.Zone() != "" || ap.Port() == 0 {
		// An unspecified address would capture that port for every
		// destination on the Internet.
		return fmt.Errorf("%w: listen on %v", ErrInvalidAddr, ap)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.lookup(a) != nil {
		return fmt.Errorf("%w: %v is attached to a session", ErrInvalidAddr, a)
	}
	old := *s.local.Load()
	la, ok := old[a]
	lp := listenPort{proto, ap.Port()}
	if la.all || slices.Contains(la.ports, lp) {
		return nil
	}
	if !ok {
		if err := s.addNICAddr(a); err != nil {
			return err
		}
	}
	m := maps.Clone(old)
	m[a] = localAddr{ports: append(slices.Clone(la.ports), lp)}
	s.local.Store(&m)
	return nil
}

func (s *Stack) addListener(l interface{ Close() error }) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Stack) removeListener(l interface{ Close() error }) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpAddr(ap.Addr()), Port: ap.Port()}
}

type tcpListener struct {
	*gonet.TCPListener
	s    *Stack
	once sync.Once
}

// Close closes the listener; connections already accepted stay open.
func (l *tcpListener) Close() error {
	var err error
	l.once.Do(func() {
		err = l.TCPListener.Close()
		l.s.removeListener(l)
	})
	return err
}

type udpListener struct {
	*gonet.UDPConn
	s    *Stack
	once sync.Once
}

// Close closes the socket.
func (l *udpListener) Close() error {
	var err error
	l.once.Do(func() {
		err = l.UDPConn.Close()
		l.s.removeListener(l)
	})
	return err
}
