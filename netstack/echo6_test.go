package netstack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// echoMessage is an ICMP (or ICMPv6, by src) echo request with payload.
func echoMessage(src, dst netip.Addr, seq uint16, payload []byte) []byte {
	m := make([]byte, 8+len(payload))
	m[0] = icmp4Echo
	if src.Is6() {
		m[0] = icmp6Echo
	}
	binary.BigEndian.PutUint16(m[4:6], 0x1234)
	binary.BigEndian.PutUint16(m[6:8], seq)
	copy(m[8:], payload)
	if src.Is6() {
		binary.BigEndian.PutUint16(m[2:4], l4Checksum(src, dst, protoICMPv6, m))
	} else {
		binary.BigEndian.PutUint16(m[2:4], ^fold(sum(m, 0)))
	}
	return m
}

// fragments splits an ICMP message into IP fragments carrying at most per
// bytes of it each (per a multiple of 8), as the client's kernel does.
func fragments(src, dst netip.Addr, id uint32, msg []byte, per int) [][]byte {
	var out [][]byte
	for off := 0; off < len(msg); off += per {
		n := min(per, len(msg)-off)
		more := off+n < len(msg)
		if src.Is6() {
			b := make([]byte, 48+n)
			writeIPHeader(b, src, dst, ipv6FragHdr, 8+n)
			b[40] = protoICMPv6
			fo := uint16(off/8) << 3
			if more {
				fo |= 1
			}
			binary.BigEndian.PutUint16(b[42:44], fo)
			binary.BigEndian.PutUint32(b[44:48], id)
			copy(b[48:], msg[off:off+n])
			out = append(out, b)
			continue
		}
		b := make([]byte, 20+n)
		writeIPHeader(b, src, dst, protoICMP, n)
		binary.BigEndian.PutUint16(b[4:6], uint16(id))
		fo := uint16(off / 8)
		if more {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(b[6:8], fo)
		b[10], b[11] = 0, 0
		binary.BigEndian.PutUint16(b[10:12], ^fold(sum(b[:20], 0)))
		copy(b[20:], msg[off:off+n])
		out = append(out, b)
	}
	return out
}

// fragData returns where a packet read from a port sits in its
// transport message: a fragment (IPv4, or IPv6 with a Fragment header) or
// a whole packet (offset 0).
func fragData(f []byte) (off int, data []byte) {
	switch {
	case f[0]>>4 == 6 && f[6] != ipv6FragHdr:
		return 0, f[40:]
	case f[0]>>4 == 6:
		return int(binary.BigEndian.Uint16(f[42:44])>>3) * 8, f[48:]
	}
	return int(binary.BigEndian.Uint16(f[6:8])&0x1fff) * 8, f[20:]
}

// reassemble joins the packets of one message read from a port, in
// order, and returns the transport message.
func reassemble(t *testing.T, frags [][]byte) []byte {
	t.Helper()
	var msg []byte
	for _, f := range frags {
		off, data := fragData(f)
		if off != len(msg) {
			t.Fatalf("fragment at %d, want %d", off, len(msg))
		}
		msg = append(msg, data...)
	}
	return msg
}

// TestEchoForwarding6AndFragmented: a dual-stack client's ICMPv6 echo is
// forwarded through the Pinger and answered with an ICMPv6 echo reply; a
// ping bigger than the client's MTU comes in fragments, which the stack
// reassembles to forward the whole echo (gVisor never sees it, so it
// cannot answer for the destination), and the reply goes back fragmented
// to the port's MTU; for IPv4 and IPv6.
func TestEchoForwarding6AndFragmented(t *testing.T) {
	fp := fakePinger{got: make(chan netip.Addr, 1)}
	gw := newGW(t, func(c *Config) { c.Pinger = fp })
	p, err := gw.AttachAddrs([]netip.Addr{cliAddr, cliAddr6}, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.SetMTU(1280); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src, dst netip.Addr
		size     int
	}{{cliAddr6, far6, 16}, {cliAddr6, far6, 8000}, {cliAddr, far, 8000}, {cliAddr6, far6, 65000}, {cliAddr, far, 65000}} {
		payload := make([]byte, tc.size)
		for i := range payload {
			payload[i] = byte(i * 7)
		}
		msg := echoMessage(tc.src, tc.dst, 3, payload)
		frags := fragments(tc.src, tc.dst, 77, msg, 1232)
		if len(msg) <= 1232 { // fits: sent whole
			frags = [][]byte{ipPacket(tc.src, tc.dst, protoICMPv6, msg)}
		}
		slices.Reverse(frags) // any order
		for _, f := range frags {
			if err := p.Inject(f); err != nil {
				t.Fatalf("%v %d: Inject fragment: %v", tc.dst, tc.size, err)
			}
		}
		select {
		case dst := <-fp.got:
			if dst != tc.dst {
				t.Fatalf("pinged %v, want %v", dst, tc.dst)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%v %d: the fragmented echo was not forwarded", tc.dst, tc.size)
		}
		// fakePinger's reply payload is the request's reversed.
		want := slices.Clone(payload)
		slices.Reverse(want)
		var got [][]byte
		n := 0
		for n < 8+len(want) {
			f := nextPacket(t, p, 5*time.Second)
			if len(f) > 1280 {
				t.Fatalf("%d-byte fragment over the port's MTU", len(f))
			}
			got = append(got, f)
			_, data := fragData(f)
			n += len(data)
		}
		if !tc.src.Is6() && len(got) > 1 { // fragments of one reply share one non-zero IP id (fragment4)
			for _, f := range got {
				if id := binary.BigEndian.Uint16(f[4:6]); id == 0 || id != binary.BigEndian.Uint16(got[0][4:6]) {
					t.Fatalf("%v %d: fragment IP id %d, the first's %d", tc.dst, tc.size, id, binary.BigEndian.Uint16(got[0][4:6]))
				}
			}
		}
		reply := reassemble(t, got)
		if len(reply) != 8+len(want) || !bytes.Equal(reply[8:], want) || binary.BigEndian.Uint16(reply[6:8]) != 3 {
			t.Fatalf("%v %d: reply of %d bytes, payload intact %v", tc.dst, tc.size, len(reply), bytes.Equal(reply[8:], want))
		}
		if tc.src.Is6() {
			if reply[0] != icmp6EchoReply {
				t.Fatalf("reply type %d", reply[0])
			}
			ck := binary.BigEndian.Uint16(reply[2:4])
			clear(reply[2:4])
			if l4Checksum(tc.dst, tc.src, protoICMPv6, reply) != ck {
				t.Fatal("bad ICMPv6 checksum in the reassembled reply")
			}
		} else if reply[0] != icmp4EchoReply || fold(sum(reply, 0)) != 0xffff {
			t.Fatalf("reply type %d or bad checksum", reply[0])
		}
	}
	if gw.Stats().Fragmented < 4 {
		t.Errorf("Fragmented %d, want every reply counted", gw.Stats().Fragmented)
	}
	// A fragmented echo to a refused destination (another session) is
	// refused like an unfragmented one.
	other, err := gw.AttachAddrs([]netip.Addr{cli2, cli2Addr}, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// Reassembled first (as a router's conntrack does), the whole
	// message is refused.
	f := fragments(cliAddr6, cli2Addr, 78, echoMessage(cliAddr6, cli2Addr, 1, make([]byte, 3000)), 1232)
	for i, fr := range f {
		err := p.Inject(fr)
		if last := i == len(f)-1; last != errors.Is(err, ErrNotAllowed) {
			t.Fatalf("fragment %d of %d to another session: %v", i+1, len(f), err)
		}
	}
}
