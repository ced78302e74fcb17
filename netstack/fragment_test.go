package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
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
