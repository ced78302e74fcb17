package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
)

type failDialer struct{}

func (failDialer) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("no dialing in fuzz tests")
}

// FuzzInject: arbitrary bytes into Port.Inject never panic. Inputs that look
// like IP get the port's source address patched in so they reach gVisor and
// the reject builders instead of stopping at the spoofing check.
func FuzzInject(f *testing.F) {
	src := netip.AddrPortFrom(cliAddr, 1234)
	f.Add(tcpSYN(src, netip.AddrPortFrom(far, 80)))
	f.Add(tcpSYN(src, netip.AddrPortFrom(netip.MustParseAddr("203.0.113.9"), 80)))
	f.Add(udpPacket(src, netip.AddrPortFrom(far, 53), []byte("q")))
	f.Add(udpPacket(src, netip.AddrPortFrom(gwAddr, 53), []byte("q")))
	f.Add(echoRequest(cliAddr, gwAddr, 1))
	f.Add(echoRequest(cliAddr, far, 1))
	f.Add([]byte{0x60, 0, 0, 0, 0, 8, 17, 64})
	cli6seed := netip.MustParseAddr("fd00::2")
	for _, fr := range fragments(cliAddr, far, 9, echoMessage(cliAddr, far, 1, make([]byte, 40)), 24) {
		f.Add(fr)
	}
	for _, fr := range fragments(cli6seed, far6, 9, echoMessage(cli6seed, far6, 1, make([]byte, 40)), 24) {
		f.Add(fr)
	}
	f.Add([]byte{})

	s, err := New(Config{Addr: gwAddr, Dialer: failDialer{},
		Allow: func(a netip.Addr) bool { return a != netip.MustParseAddr("203.0.113.9") }})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	p, err := s.Attach(cliAddr, testHeadroom, 64)
	if err != nil {
		f.Fatal(err)
	}
	cli6 := netip.MustParseAddr("fd00::2")
	p6, err := s.Attach(cli6, testHeadroom, 64)
	if err != nil {
		f.Fatal(err)
	}
	drain := func(p *Port) {
		for {
			select {
			case pk := <-p.Packets():
				pk.Release()
			default:
				return
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		b = append([]byte(nil), b...)
		if len(b) >= 20 && b[0]>>4 == 4 {
			a := cliAddr.As4()
			copy(b[12:16], a[:])
			p.Inject(b)
		} else if len(b) >= 40 && b[0]>>4 == 6 {
			a := cli6.As16()
			copy(b[8:24], a[:])
			p6.Inject(b)
		} else {
			p.Inject(b)
		}
		drain(p)
		drain(p6)
	})
}
