package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/testinfra/testenv"
)

// bigMTU is the TLS transport's MTU: the stack's link MTU in production.
const bigMTU = 16000

func TestSetMTU(t *testing.T) {
	gw := newGW(t, func(c *Config) { c.MTU = bigMTU })
	c := newClient(t, gw, cliAddr, 0)
	for _, tc := range []struct {
		mtu  int
		want error
	}{
		{0, nil}, {576, nil}, {1280, nil}, {bigMTU, nil},
		{575, ErrBadMTU}, {-1, ErrBadMTU}, {bigMTU + 1, ErrBadMTU},
	} {
		if err := c.port.SetMTU(tc.mtu); !errors.Is(err, tc.want) {
			t.Errorf("SetMTU(%d) = %v, want %v", tc.mtu, err, tc.want)
		}
	}
}

// TestPortMTUFragmentsUDP sends datagrams of every interesting size from a
// host to a client whose port carries 1280-byte packets (CONNECT-IP) while
// the stack's MTU is 16000: each must arrive whole, in packets of at most
// 1280 bytes, as through a Linux router with a 1280-MTU next hop. Over
// IPv6 (a dual-stack client) the stack, the datagrams' source on the
// tunnel leg, fragments them (RFC 8200 4.5), including the fragments
// gVisor cut to the stack's MTU first.
func TestPortMTUFragmentsUDP(t *testing.T) {
	const mtu = 1280
	for _, tc := range []struct {
		name     string
		listen   string     // the host side's socket
		dst      netip.Addr // what the client dials (the dialer maps it to listen's address)
		overhead int        // IP + UDP headers
		// 1252/1232: the largest payload that fits 1280 unfragmented;
		// 15972/15952: the largest the stack's 16000 MTU carries whole;
		// 65507/65527: the largest UDP payload.
		sizes []int
	}{
		{"IPv4", "127.0.0.1:0", far, 28, []int{0, 1, 1252, 1253, 1400, 2000, 8000, 15972, 15973, 65507}},
		{"IPv6", "[::1]:0", far6, 48, []int{0, 1, 1232, 1233, 2000, 8000, 15952, 15953, 65527}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := newGW(t, func(c *Config) {
				c.MTU = bigMTU
				c.Dialer = &loop6Dialer{}
			})
			// The host side answers "N" with N bytes.
			srv, err := net.ListenPacket("udp", tc.listen)
			if err != nil {
				t.Fatal(err)
			}
			testenv.ServePacket(t, srv, func(b []byte, from net.Addr) {
				size, _ := strconv.Atoi(string(b))
				srv.WriteTo(pattern(size), from)
			})
			port := uint16(srv.LocalAddr().(*net.UDPAddr).Port)
			c := newClientAddrs(t, gw, []netip.Addr{cliAddr, cliAddr6}, 0)
			if err := c.port.SetMTU(mtu); err != nil {
				t.Fatal(err)
			}
			uc, err := c.dialUDP(netip.AddrPortFrom(tc.dst, port))
			if err != nil {
				t.Fatal(err)
			}
			defer uc.Close()
			buf := make([]byte, 1<<16)
			frags := uint64(0)
			for _, size := range tc.sizes {
				uc.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := uc.Write([]byte(strconv.Itoa(size))); err != nil {
					t.Fatal(err)
				}
				n, err := uc.Read(buf)
				if err != nil {
					t.Fatalf("%d-byte datagram: %v (stats %+v)", size, err, gw.Stats())
				}
				if !bytes.Equal(buf[:n], pattern(size)) {
					t.Fatalf("%d-byte datagram: got %d bytes, not the pattern", size, n)
				}
				// Over 1252 (1232) the gateway fragments (over 15972 (15952)
				// gVisor first cuts the datagram to the stack's MTU, and the
				// gateway each piece again).
				got := gw.Stats().Fragmented
				if fragmented := got > frags; fragmented != (size > mtu-tc.overhead) {
					t.Errorf("after %d bytes: Fragmented went from %d to %d", size, frags, got)
				}
				frags = got
			}
			if m := c.maxSize(); m > mtu {
				t.Errorf("the client got a %d-byte packet over a %d MTU", m, mtu)
			}
		})
	}
}

// TestPortMTUShrinksTCP moves a download from a big-MTU transport to a
// 1280 one mid-flow (a client that reconnected over QUIC after TLS): the
// stack's TCP, told by frag-needed, resends in segments that fit, and the
// flow completes.
func TestPortMTUShrinksTCP(t *testing.T) {
	const size = 1 << 20
	gw := newGW(t, func(c *Config) { c.MTU = bigMTU })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write(pattern(size))
		io.Copy(io.Discard, c)
	}()
	defer func() { <-served }()

	c := newClient(t, gw, cliAddr, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := c.dialTCP(ctx, netip.AddrPortFrom(far, uint16(ln.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, size)
	if _, err := io.ReadFull(conn, got[:size/8]); err != nil {
		t.Fatal(err)
	}
	if m := c.maxSize(); m <= 1280 {
		t.Fatalf("largest packet before the switch %d bytes: the test needs big segments first", m)
	}
	if err := c.port.SetMTU(1280); err != nil {
		t.Fatal(err)
	}
	c.largest.Store(0)
	if _, err := io.ReadFull(conn, got[size/8:]); err != nil {
		gs := gw.st.Stats()
		t.Fatalf("after the MTU dropped: %v (stats %+v) icmp dstunreach in %d, invalid %d; tcp retrans %d timeouts %d segsent %d; largest %d", err, gw.Stats(),
			gs.ICMP.V4.PacketsReceived.DstUnreachable.Value(), gs.ICMP.V4.PacketsReceived.Invalid.Value(),
			gs.TCP.Retransmits.Value(), gs.TCP.Timeouts.Value(), gs.TCP.SegmentsSent.Value(), c.maxSize())
	}
	if !bytes.Equal(got, pattern(size)) {
		t.Fatal("stream corrupted")
	}
	st := gw.Stats()
	if st.TooBigAnswered == 0 || st.Fragmented != 0 {
		t.Errorf("TooBigAnswered %d, Fragmented %d: want the sender told, no TCP fragmented", st.TooBigAnswered, st.Fragmented)
	}
}

// TestFragmentAFragment fragments a packet that is itself a fragment
// (offset 1480, MF set): every piece keeps MF, and the offsets continue
// from the original's.
func TestFragmentAFragment(t *testing.T) {
	gw := newGW(t, func(c *Config) { c.MTU = bigMTU })
	port, err := gw.Attach(cliAddr, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer port.Close()
	payload := pattern(3000)
	b := ipPacket(far, cliAddr, protoUDP, payload)
	binary.BigEndian.PutUint16(b[6:8], 0x2000|1480/8) // MF, offset 1480
	gw.fragment4(port, b, 1280)
	var got []byte
	off := 1480
	for len(got) < len(payload) {
		f := nextPacket(t, port, time.Second)
		if len(f) > 1280 {
			t.Fatalf("fragment of %d bytes", len(f))
		}
		fo := binary.BigEndian.Uint16(f[6:8])
		if fo&0x2000 == 0 || int(fo&0x1fff)*8 != off {
			t.Fatalf("flags/offset %#04x, want MF and offset %d", fo, off)
		}
		if fold(sum(f[:20], 0)) != 0xffff {
			t.Fatal("bad header checksum")
		}
		got = append(got, f[20:]...)
		off += len(f) - 20
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("payload differs")
	}
}

// pattern is n bytes that differ from any shifted copy of themselves.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// fragmentsOf cuts b, an IPv4 packet without options (or a fragment of
// one), into fragments that carry per bytes of its payload each (a
// multiple of 8), as a router does (DF cleared, MF kept on the last piece
// of a fragment).
func fragmentsOf(b []byte, per int) [][]byte {
	payload := b[20:]
	flags := binary.BigEndian.Uint16(b[6:8])
	fo, mf := int(flags&0x1fff)*8, flags&0x2000
	var out [][]byte
	for off := 0; off < len(payload); off += per {
		n := min(per, len(payload)-off)
		f := make([]byte, 20+n)
		copy(f, b[:20])
		copy(f[20:], payload[off:off+n])
		ff := uint16((fo + off) / 8)
		if off+n < len(payload) || mf != 0 {
			ff |= 0x2000
		}
		binary.BigEndian.PutUint16(f[2:4], uint16(len(f)))
		binary.BigEndian.PutUint16(f[6:8], ff)
		f[10], f[11] = 0, 0
		binary.BigEndian.PutUint16(f[10:12], ^fold(sum(f[:20], 0)))
		out = append(out, f)
	}
	return out
}

// TestClientFragments: a client whose every packet arrives in fragments
// (tiny, mid-sized, in order or reversed) still gets its TCP handshake,
// byte-exact TCP data and whole UDP datagrams through, because Inject
// reassembles before anything looks at a packet.
func TestClientFragments(t *testing.T) {
	gw := newGW(t, nil)
	echo := echoServer(t)
	udpPort := udpServer(t, func(b []byte) []byte { return b })
	for _, tc := range []struct {
		name     string
		per      int
		reversed bool
	}{
		{"8-byte fragments", 8, false},
		{"8-byte fragments reversed", 8, true},
		{"512-byte fragments", 512, false},
		{"1480-byte fragments reversed", 1480, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, gw, cliAddr, 0)
			defer c.close()
			split := func(b []byte) [][]byte {
				if b[0]>>4 != 4 || len(b) <= 20+tc.per {
					return [][]byte{b}
				}
				f := fragmentsOf(b, tc.per)
				if tc.reversed {
					slices.Reverse(f)
				}
				return f
			}
			c.split.Store(&split)
			st0 := gw.Stats() // a previous case's client may have closed mid-datagram: counted there
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := c.dialTCP(ctx, echo)
			if err != nil {
				t.Fatalf("TCP through fragments: %v (stats %+v)", err, gw.Stats())
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			msg := pattern(20000)
			go conn.Write(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("TCP echo: %v, intact %v", err, bytes.Equal(got, msg))
			}
			uc, err := c.dialUDP(netip.AddrPortFrom(far, udpPort))
			if err != nil {
				t.Fatal(err)
			}
			defer uc.Close()
			uc.SetDeadline(time.Now().Add(5 * time.Second))
			dg := pattern(3000)
			uc.Write(dg)
			buf := make([]byte, 4000)
			if n, err := uc.Read(buf); err != nil || !bytes.Equal(buf[:n], dg) {
				t.Fatalf("UDP echo: %v, %d bytes (stats %+v)", err, n, gw.Stats())
			}
			if st := gw.Stats(); st.Reassembled == st0.Reassembled || st.FragmentsDropped != st0.FragmentsDropped {
				t.Errorf("Reassembled %d -> %d, FragmentsDropped %d -> %d", st0.Reassembled, st.Reassembled, st0.FragmentsDropped, st.FragmentsDropped)
			}
		})
	}
}

// TestReassemblyRules drives reassemble directly with hand-made fragments:
// Linux's rules for duplicates, overlaps, sizes and ends, the timeout, the
// limits, and a session's end.
func TestReassemblyRules(t *testing.T) {
	gw := newGW(t, nil)
	p, err := gw.Attach(cliAddr, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	data := pattern(64)
	dg := ipPacket(cliAddr, far, protoUDP, data)
	binary.BigEndian.PutUint16(dg[4:6], 77) // IP id
	fr := fragmentsOf(dg, 16)               // 4 fragments of 16 bytes
	fr[0][6] |= 0x40                        // DF on the first: the whole datagram keeps it
	frag := func(off, n int, more bool, b []byte) []byte {
		f := slices.Clone(fr[1][:20])
		f = append(f, b[:n]...)
		fo := uint16(off / 8)
		if more {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(f[2:4], uint16(len(f)))
		binary.BigEndian.PutUint16(f[6:8], fo)
		return f
	}
	other := pattern(64)
	slices.Reverse(other)
	t0 := time.Now()
	feed := func(q *Port, now time.Time, f []byte) []byte {
		t.Helper()
		ip, err := parseIP(f)
		if err != nil || !ip.frag {
			t.Fatalf("not a fragment: %v", err)
		}
		return gw.reassemble(q, &ip, now)
	}
	for _, tc := range []struct {
		name    string
		frags   [][]byte
		later   time.Duration // the last fragment comes this much later
		whole   bool
		dropped uint64
	}{
		{"in order", fr, 0, true, 0},
		{"reversed", [][]byte{fr[3], fr[2], fr[1], fr[0]}, 0, true, 0},
		{"an exact duplicate is ignored", [][]byte{fr[0], fr[1], fr[1], fr[2], fr[3]}, 0, true, 0},
		{"a fragment inside received bytes is a duplicate, whatever it carries", [][]byte{fr[0], fr[1], frag(8, 8, true, other[8:]), fr[2], fr[3]}, 0, true, 0},
		{"a missing fragment", [][]byte{fr[0], fr[1], fr[3]}, 0, false, 0},
		{"a partial overlap", [][]byte{fr[0], frag(8, 16, true, data[8:]), fr[1], fr[2], fr[3]}, 0, false, 1},
		{"a superset of received bytes", [][]byte{fr[1], frag(8, 32, true, data[8:]), fr[0], fr[2], fr[3]}, 0, false, 1},
		{"a second, different end", [][]byte{fr[0], fr[3], frag(32, 8, false, data[32:])}, 0, false, 1},
		{"bytes beyond the end", [][]byte{fr[3], frag(64, 8, true, data)}, 0, false, 1},
		{"a middle fragment is cut to 8-byte units", [][]byte{fr[0], frag(16, 12, true, data[16:]), frag(24, 40, false, data[24:])}, 0, true, 0},
		{"an empty fragment", [][]byte{fr[0], frag(16, 0, true, data), fr[1], fr[2], fr[3]}, 0, false, 1},
		{"over 65535 bytes", [][]byte{frag(65528, 16, false, data)}, 0, false, 1},
		{"the last fragment after 31 s", fr, 31 * time.Second, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw.stats.fragmentsDropped.Store(0)
			var whole []byte
			for i, f := range tc.frags {
				now := t0
				if i == len(tc.frags)-1 {
					now = now.Add(tc.later)
				}
				if w := feed(p, now, f); w != nil {
					whole = w
				}
			}
			if (whole != nil) != tc.whole {
				t.Fatalf("whole datagram %v, want %v", whole != nil, tc.whole)
			}
			if whole != nil {
				if !bytes.Equal(whole[20:], data) {
					t.Fatal("payload differs")
				}
				if binary.BigEndian.Uint16(whole[6:8]) != 0x4000 || fold(sum(whole[:20], 0)) != 0xffff || int(binary.BigEndian.Uint16(whole[2:4])) != len(dg) {
					t.Fatalf("header %x: want DF only, a valid checksum, total length %d", whole[:20], len(dg))
				}
			}
			if d := gw.stats.fragmentsDropped.Load(); d != tc.dropped {
				t.Errorf("FragmentsDropped %d, want %d", d, tc.dropped)
			}
			gw.frags.clearPort(gw, p) // leftovers of an incomplete case
			if n := gw.frags.heldBytes(); n != 0 || p.fragDatagrams != 0 {
				t.Errorf("%d bytes, %d datagrams still held after clearPort", n, p.fragDatagrams)
			}
		})
	}

	withID := func(f []byte, id int) []byte {
		f = slices.Clone(f)
		binary.BigEndian.PutUint16(f[4:6], uint16(id))
		return f
	}
	t.Run("at most 8 datagrams per session, the oldest go", func(t *testing.T) {
		gw.stats.fragmentsDropped.Store(0)
		for id := range maxFragDatagramsPerPort + 3 {
			feed(p, t0, withID(fr[0], 1000+id))
		}
		if n, d := p.fragDatagrams, gw.stats.fragmentsDropped.Load(); n != maxFragDatagramsPerPort || d != 3 {
			t.Errorf("%d datagrams held, %d dropped; want %d and 3", n, d, maxFragDatagramsPerPort)
		}
		if feed(p, t0, withID(fr[1], 1000)) != nil || feed(p, t0, withID(fr[1], 1000+maxFragDatagramsPerPort+2)) != nil {
			t.Error("a discarded datagram went on")
		}
		gw.frags.clearPort(gw, p)
	})
	t.Run("another session's stale datagram frees its bytes", func(t *testing.T) {
		p2, err := gw.Attach(cli2, testHeadroom, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer p2.Close()
		gw.stats.fragmentsDropped.Store(0)
		feed(p, t0, fr[0]) // incomplete, and p goes quiet
		held := gw.frags.heldBytes()
		dg2 := ipPacket(cli2, far, protoUDP, data)
		for _, f := range fragmentsOf(dg2, 16)[:2] {
			feed(p2, t0.Add(31*time.Second), f)
		}
		if d := gw.stats.fragmentsDropped.Load(); d != 1 || p.fragDatagrams != 0 || gw.frags.heldBytes() != 2*(16+fragOverhead) {
			t.Errorf("after 31 s: %d dropped, %d of p's datagrams held, %d bytes charged (p's were %d)", d, p.fragDatagrams, gw.frags.heldBytes(), held)
		}
		gw.frags.clearPort(gw, p2)
	})
	t.Run("the budget charges what was received", func(t *testing.T) {
		gw.stats.fragmentsDropped.Store(0)
		feed(p, t0, frag(65496, 8, true, data)) // 8 bytes at the far end
		if n := gw.frags.heldBytes(); n != 8+fragOverhead {
			t.Errorf("%d bytes charged for one 8-byte fragment, want %d", n, 8+fragOverhead)
		}
		gw.frags.clearPort(gw, p)
	})
	t.Run("a session's end discards its datagrams", func(t *testing.T) {
		p3, err := gw.Attach(netip.MustParseAddr("10.99.0.9"), testHeadroom, 0)
		if err != nil {
			t.Fatal(err)
		}
		gw.stats.fragmentsDropped.Store(0)
		dg3 := ipPacket(p3.addr, far, protoUDP, data)
		f3 := fragmentsOf(dg3, 16)
		feed(p3, t0, f3[0])
		p3.Close()
		if d, n := gw.stats.fragmentsDropped.Load(), gw.frags.heldBytes(); d != 1 || n != 0 {
			t.Errorf("after Close: %d dropped, %d bytes charged; want 1 and 0", d, n)
		}
		if feed(p3, t0, f3[1]) != nil || gw.frags.heldBytes() != 0 {
			t.Error("a closed session's fragment was held")
		}
	})
}

// frag6 builds an IPv6 fragment from src to dst: the extension headers
// exts (each a type and a length in bytes, a multiple of 8; a Routing
// header's Segments Left is 1 when its length is 16, else 0), a Fragment
// header (id, off, more, next header proto), then data.
func frag6(src, dst netip.Addr, exts [][2]int, id uint32, off int, more bool, proto byte, data []byte) []byte {
	var unfrag []byte
	for _, e := range exts {
		h := make([]byte, e[1])
		h[1] = byte(e[1]/8 - 1)
		if e[0] == routingHdr {
			h[2], h[3] = 4, byte(e[1]/8-1) // a Segment Routing header (RFC 8754); Segments Left
		} else {
			h[2], h[3] = 1, byte(e[1]-4) // one PadN option fills it (RFC 8200 4.2)
		}
		unfrag = append(unfrag, h...)
	}
	b := make([]byte, 40+len(unfrag)+8+len(data))
	nh := byte(ipv6FragHdr)
	if len(exts) > 0 {
		nh = byte(exts[0][0])
	}
	writeIPHeader(b, src, dst, nh, len(b)-40)
	copy(b[40:], unfrag)
	at := 40
	for i, e := range exts {
		if i+1 < len(exts) {
			b[at] = byte(exts[i+1][0])
		} else {
			b[at] = ipv6FragHdr
		}
		at += e[1]
	}
	fo := uint16(off/8) << 3
	if more {
		fo |= 1
	}
	b[at] = proto
	binary.BigEndian.PutUint16(b[at+2:at+4], fo)
	binary.BigEndian.PutUint32(b[at+4:at+8], id)
	copy(b[at+8:], data)
	return b
}

// TestReassemblyIPv6: IPv6 fragments become one packet whatever their
// order, with the Fragment header first or after the Hop-by-Hop and
// Destination Options headers RFC 8200 4.1 puts before it (and a Routing
// header with no segments left); the unfragmentable part is the first
// fragment's, kept once, and its last header names the payload. A
// partial overlap or an oversized datagram is discarded; a Fragment
// header after a Routing header still to be followed, or after
// Hop-by-Hop options that are not first, is not one the stack
// reassembles (gVisor decides), and an extension header that runs past
// the packet is malformed.
func TestReassemblyIPv6(t *testing.T) {
	gw := newGW(t, nil)
	p, err := gw.AttachAddrs([]netip.Addr{cliAddr, cliAddr6}, testHeadroom, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	data := pattern(64)
	feed := func(fs ...[]byte) (whole []byte) {
		t.Helper()
		for _, f := range fs {
			ip, err := parseIP(f)
			if err != nil || !ip.frag {
				t.Fatalf("not a fragment: %v", err)
			}
			if w := gw.reassemble(p, &ip, time.Now()); w != nil {
				whole = w
			}
		}
		return whole
	}
	var (
		hbh   = [2]int{hopByHopHdr, 8}
		dest  = [2]int{destOptsHdr, 8}
		dest2 = [2]int{destOptsHdr, 16}
		rt0   = [2]int{routingHdr, 8}  // Segments Left 0
		rt1   = [2]int{routingHdr, 16} // Segments Left 1
	)
	id := uint32(0)
	for _, tc := range []struct {
		name string
		exts [][2]int
	}{
		{"Fragment header first", nil},
		{"after Hop-by-Hop", [][2]int{hbh}},
		{"after Destination Options", [][2]int{dest2}},
		{"after Hop-by-Hop and Destination Options", [][2]int{hbh, dest}},
		{"after Hop-by-Hop, Destination Options, a finished Routing header, Destination Options", [][2]int{hbh, dest2, rt0, dest}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			unfrag := 40
			for _, e := range tc.exts {
				unfrag += e[1]
			}
			frag := func(id uint32, off, n int, more bool, exts [][2]int) []byte {
				return frag6(cliAddr6, far6, exts, id, off, more, protoUDP, data[off:off+n])
			}
			check := func(name string, w []byte) {
				t.Helper()
				if len(w) != unfrag+len(data) || int(binary.BigEndian.Uint16(w[4:6])) != len(w)-40 || !bytes.Equal(w[unfrag:], data) {
					t.Fatalf("%s: whole packet of %d bytes, payload length %d", name, len(w), binary.BigEndian.Uint16(w[4:6]))
				}
				want := frag(0, 0, 0, false, tc.exts)[:unfrag] // the unfragmentable part, its last next header the payload's
				if len(tc.exts) == 0 {
					want[6] = protoUDP
				} else {
					want[unfrag-tc.exts[len(tc.exts)-1][1]] = protoUDP
				}
				binary.BigEndian.PutUint16(want[4:6], uint16(len(w)-40))
				if !bytes.Equal(w[:unfrag], want) {
					t.Fatalf("%s: unfragmentable part %x, want %x", name, w[:unfrag], want)
				}
				ip, err := parseIP(w)
				if err != nil || ip.frag || ip.tproto != protoUDP || ip.hdrLen != unfrag || !bytes.Equal(ip.l4, data) || ip.src != cliAddr6 || ip.dst != far6 {
					t.Fatalf("%s: the whole packet parses as %+v, %v", name, ip, err)
				}
			}
			id++
			check("in order", feed(frag(id, 0, 32, true, tc.exts), frag(id, 32, 32, false, tc.exts)))
			id++
			check("reversed", feed(frag(id, 32, 32, false, tc.exts), frag(id, 16, 16, true, tc.exts), frag(id, 0, 16, true, tc.exts)))
			id++
			check("an atomic fragment", feed(frag(id, 0, 64, false, tc.exts)))
			id++ // RFC 8200 4.5: the unfragmentable part of the others is not used
			check("only the first fragment's extension headers", feed(frag(id, 32, 32, false, [][2]int{dest}), frag(id, 0, 32, true, tc.exts)))

			gw.stats.fragmentsDropped.Store(0)
			id++
			if w := feed(frag(id, 0, 32, true, tc.exts), frag(id, 16, 32, true, tc.exts), frag(id, 48, 16, false, tc.exts)); w != nil {
				t.Fatal("an overlapping datagram completed")
			}
			id++
			b := frag(id, 0, 16, false, tc.exts)
			binary.BigEndian.PutUint16(b[unfrag+2:unfrag+4], 0xfff8) // offset 65528 + 16 bytes: over 65535
			if w := feed(b); w != nil {
				t.Fatal("a datagram over 65535 bytes completed")
			}
			want := 2
			if unfrag > 40 {
				// 65528 bytes of fragments fit, but not with the
				// extension headers in front (Linux: ip6_frag_reasm's
				// payload_len check).
				id++
				big := pattern(65528)
				fs := [][]byte{
					frag6(cliAddr6, far6, tc.exts, id, 0, true, protoUDP, big[:32000]),
					frag6(cliAddr6, far6, tc.exts, id, 32000, true, protoUDP, big[32000:64000]),
					frag6(cliAddr6, far6, tc.exts, id, 64000, false, protoUDP, big[64000:]),
				}
				if w := feed(fs...); w != nil {
					t.Fatalf("a datagram of %d bytes of payload completed", len(w)-40)
				}
				want++
			}
			if d := gw.stats.fragmentsDropped.Load(); d != uint64(want) {
				t.Errorf("FragmentsDropped %d, want %d", d, want)
			}
			gw.frags.clearPort(gw, p)
		})
	}
	for _, tc := range []struct {
		name string
		pkt  []byte
		err  error
		next byte // the next header parseIP stops at
	}{
		{"after a Routing header with a segment left", frag6(cliAddr6, far6, [][2]int{hbh, rt1}, 1, 0, false, protoUDP, data), nil, routingHdr},
		{"after Hop-by-Hop that is not first", frag6(cliAddr6, far6, [][2]int{dest, hbh}, 1, 0, false, protoUDP, data), nil, hopByHopHdr},
		{"a truncated Destination Options header", frag6(cliAddr6, far6, [][2]int{dest2}, 1, 0, false, protoUDP, nil)[:50], ErrMalformed, 0},
		{"a truncated Routing header", frag6(cliAddr6, far6, [][2]int{rt0}, 1, 0, false, protoUDP, nil)[:42], ErrMalformed, 0},
	} {
		b := tc.pkt
		binary.BigEndian.PutUint16(b[4:6], uint16(len(b)-40))
		ip, err := parseIP(b)
		if err != tc.err || err == nil && (ip.frag || ip.tproto != tc.next) {
			t.Errorf("%s: parses as fragment %v, next header %d, err %v; want next header %d, err %v", tc.name, ip.frag, ip.tproto, err, tc.next, tc.err)
		}
	}
}

// heldBytes is what incomplete datagrams are charged now.
func (t *fragTable) heldBytes() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.bytes
}
