package netstack

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
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

// FuzzReassemble feeds sequences of fragments (each: a 2-byte offset in
// 8-byte units with MF in its top bit, a 1-byte id, a 1-byte length, then
// that many payload bytes) to the reassembly: IPv4, or IPv6 when the id's
// top bit is set, its next two bits choosing the extension headers before
// the Fragment header (none, Hop-by-Hop, 16 bytes of Destination Options,
// or both). It never panics, never holds more than its limits, and a
// datagram it makes whole is well formed.
func FuzzReassemble(f *testing.F) {
	f.Add([]byte{0x80, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 1, 3, 9, 9, 9})
	f.Add([]byte{0, 1, 1, 3, 9, 9, 9, 0x80, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Add([]byte{0x80, 0, 1, 16, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0x80, 1, 1, 8, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0x1f, 0xff, 2, 16})
	f.Add([]byte{0x80, 0, 0xe1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0xa1, 3, 9, 9, 9})
	f.Add([]byte{0, 1, 0xc1, 3, 9, 9, 9, 0x80, 0, 0xc1, 8, 1, 2, 3, 4, 5, 6, 7, 8})
	s, err := New(Config{Addr: gwAddr, Dialer: failDialer{}})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	p, err := s.AttachAddrs([]netip.Addr{cliAddr, cliAddr6}, testHeadroom, 64)
	if err != nil {
		f.Fatal(err)
	}
	extsOf := [4][][2]int{nil, {{hopByHopHdr, 8}}, {{destOptsHdr, 16}}, {{hopByHopHdr, 8}, {destOptsHdr, 16}}}
	f.Fuzz(func(t *testing.T, in []byte) {
		defer s.frags.clearPort(s, p)
		now := time.Now()
		for len(in) >= 4 {
			fo, id, n := binary.BigEndian.Uint16(in[0:2]), in[2], int(in[3])
			in = in[4:]
			n = min(n, len(in))
			var b []byte
			if id&0x80 != 0 {
				b = frag6(cliAddr6, far6, extsOf[id>>5&3], uint32(id&0x1f), int(fo&0x1fff)*8, fo&0x8000 != 0, protoUDP, in[:n])
			} else {
				b = ipPacket(cliAddr, far, protoUDP, in[:n])
				binary.BigEndian.PutUint16(b[4:6], uint16(id))
				binary.BigEndian.PutUint16(b[6:8], fo&0x1fff|(fo&0x8000)>>2)
			}
			in = in[n:]
			ip, err := parseIP(b)
			if err != nil || !ip.frag {
				continue
			}
			now = now.Add(time.Second)
			if w := s.reassemble(p, &ip, now); w != nil {
				if w[0]>>4 == 6 {
					if int(binary.BigEndian.Uint16(w[4:6])) != len(w)-40 {
						t.Fatalf("malformed whole packet: header %x, %d bytes", w[:40], len(w))
					}
				} else if int(binary.BigEndian.Uint16(w[2:4])) != len(w) || binary.BigEndian.Uint16(w[6:8])&0x3fff != 0 || fold(sum(w[:20], 0)) != 0xffff {
					t.Fatalf("malformed whole datagram: header %x, %d bytes", w[:20], len(w))
				}
				if wip, err := parseIP(w); err != nil || wip.frag || wip.tproto != protoUDP {
					t.Fatalf("the whole packet parses as %+v, %v", wip, err)
				}
			}
			if n := s.frags.heldBytes(); n < 0 || n > maxFragBytes || p.fragDatagrams > maxFragDatagramsPerPort {
				t.Fatalf("%d bytes, %d datagrams held", n, p.fragDatagrams)
			}
		}
	})
}

// FuzzClientInject: arbitrary bytes into a dual-stack ClientStack.Inject,
// with an IPv6 dial in flight to the destination the seeds quote, never
// panic (the ICMPv6 Destination Unreachable reader, clientunreach.go).
func FuzzClientInject(f *testing.F) {
	dst := netip.AddrPortFrom(far6, 80)
	syn := tcpSYN(netip.AddrPortFrom(cliAddr6, 40000), dst)
	for _, code := range []byte{0, 1, 3, 4, 9} {
		msg := append([]byte{1, code, 0, 0, 0, 0, 0, 0}, syn...)
		f.Add(ipPacket(far6, cliAddr6, 58, msg))
	}
	f.Add(syn)
	f.Add([]byte{0x60})
	cs, err := NewClient(ClientConfig{Addr: cliAddr, Addr6: cliAddr6})
	if err != nil {
		f.Fatal(err)
	}
	defer cs.Close()
	go func() { // the stack's SYNs go nowhere
		for pk := range cs.Packets() {
			pk.Release()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dialed := make(chan struct{})
	go func() {
		defer close(dialed)
		for ctx.Err() == nil {
			if c, err := cs.DialContext(ctx, "tcp", dst.String()); err == nil {
				c.Close()
			}
		}
	}()
	defer func() { cancel(); <-dialed }()
	f.Fuzz(func(t *testing.T, b []byte) {
		cs.Inject(b)
	})
}
