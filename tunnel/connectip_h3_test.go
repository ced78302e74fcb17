package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/underpass/underpass/internal/core/masque"
)

// rawH3 is a QUIC connection to the gateway that plays an HTTP/3 client
// from raw bytes, for what masque's client never sends.
type rawH3 struct {
	qc *quic.Conn
}

// dialRawH3 opens a QUIC connection to the gateway; datagrams says
// whether it offers QUIC datagrams (RFC 9221).
func dialRawH3(t *testing.T, addr string, datagrams bool) *rawH3 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := quic.DialAddr(ctx, addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{masque.ALPN}},
		&quic.Config{EnableDatagrams: datagrams, InitialPacketSize: 1350})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = qc.CloseWithError(masque.ErrCodeNoError, "") })
	return &rawH3{qc: qc}
}

// settings opens the control stream with a SETTINGS frame of the given
// identifier/value pairs.
func (c *rawH3) settings(t *testing.T, kv ...uint64) {
	t.Helper()
	var p []byte
	for _, v := range kv {
		p = quicvarint.Append(p, v)
	}
	ctl, err := c.qc.OpenUniStream()
	if err != nil {
		t.Fatal(err)
	}
	b := quicvarint.Append([]byte{0}, 0x04) // control stream; SETTINGS
	b = quicvarint.Append(b, uint64(len(p)))
	if _, err := ctl.Write(append(b, p...)); err != nil {
		t.Fatal(err)
	}
}

// connectIP sends alice's CONNECT-IP request on a new stream and returns
// the response's :status ("" if none) and the error that ended the read.
func (c *rawH3) connectIP(t *testing.T) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	str, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := qpack.NewEncoder(&hb)
	for _, f := range []qpack.HeaderField{
		{Name: ":method", Value: "CONNECT"}, {Name: ":protocol", Value: "connect-ip"},
		{Name: ":scheme", Value: "https"}, {Name: ":authority", Value: "gw.example"},
		{Name: ":path", Value: ConnectIPPath}, {Name: "capsule-protocol", Value: "?1"},
		{Name: "authorization", Value: "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:secret"))},
	} {
		_ = enc.WriteField(f)
	}
	b := quicvarint.Append(nil, 0x01) // HEADERS
	b = quicvarint.Append(b, uint64(hb.Len()))
	if _, err := str.Write(append(b, hb.Bytes()...)); err != nil {
		t.Fatal(err)
	}
	_ = str.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := quicvarint.NewReader(str)
	typ, err := quicvarint.Read(r)
	if err != nil {
		return "", err
	}
	n, err := quicvarint.Read(r)
	if err != nil || typ != 0x01 {
		return "", fmt.Errorf("frame %#x, %v", typ, err)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(str, p); err != nil {
		return "", err
	}
	next := qpack.NewDecoder().Decode(p)
	for {
		f, err := next()
		if err != nil {
			return "", err
		}
		if f.Name == ":status" {
			return f.Value, nil
		}
	}
}

// TestQUICRequestDeadline: a connection that sends no acceptable request
// is closed with H3_NO_ERROR once DefaultHandshakeTimeout has passed
// since its handshake, as the TLS path's ReadHeaderTimeout closes a silent
// TCP connection; the gateway's keepalives no longer hold it up. It may
// open only two request streams at a time, so it cannot make the gateway
// buffer more than two streams' windows.
func TestQUICRequestDeadline(t *testing.T) {
	_, addr := startGateway(t, nil) // DPD 2 s: an idle timeout of 5 s, kept off by keepalives
	c := dialRawH3(t, addr, true)
	c.settings(t, 0x33, 1)
	start := time.Now()
	for i := range 3 {
		str, err := c.qc.OpenStream()
		var le *quic.StreamLimitReachedError
		switch {
		case i < 2 && err != nil:
			t.Fatalf("stream %d: %v", i, err)
		case i == 2 && !errors.As(err, &le):
			t.Fatalf("a third request stream opened (%v): the limit is 2", err)
		case err == nil:
			_, _ = str.Write([]byte{0x21}) // a frame type, then silence
		}
	}
	select {
	case <-c.qc.Context().Done():
	case <-time.After(DefaultHandshakeTimeout + 5*time.Second):
		t.Fatalf("connection without a request still up after %v", time.Since(start))
	}
	var ae *quic.ApplicationError
	if err := context.Cause(c.qc.Context()); !errors.As(err, &ae) || ae.ErrorCode != masque.ErrCodeNoError || !ae.Remote {
		t.Fatalf("closed with %v, want H3_NO_ERROR from the gateway", err)
	}
	if d := time.Since(start); d < DefaultHandshakeTimeout-time.Second {
		t.Fatalf("closed after %v, before DefaultHandshakeTimeout", d)
	}
}

// TestConnectIPNeedsDatagrams: the gateway answers CONNECT-IP only to a
// client whose SETTINGS enabled HTTP datagrams and whose QUIC layer offers
// datagrams (RFC 9297 2.1.1); otherwise a 400, before any sign-in. A
// client that enables H3_DATAGRAM without QUIC datagrams breaks the same
// section's rule and is closed with H3_SETTINGS_ERROR.
func TestConnectIPNeedsDatagrams(t *testing.T) {
	_, addr := startGateway(t, nil)
	for _, tc := range []struct {
		name      string
		datagrams bool     // QUIC datagrams offered
		settings  []uint64 // nil: no control stream at all
		want      string   // :status, or "close" for a connection error
	}{
		{"both enabled", true, []uint64{0x33, 1}, "200"},
		{"H3_DATAGRAM = 0", true, []uint64{0x33, 0}, "400"},
		{"no H3_DATAGRAM setting", true, []uint64{0x06, 16384}, "400"},
		{"no SETTINGS at all", true, nil, "400"},
		{"no QUIC datagrams, H3_DATAGRAM = 0", false, []uint64{0x33, 0}, "400"},
		{"no QUIC datagrams, H3_DATAGRAM = 1", false, []uint64{0x33, 1}, "close"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRawH3(t, addr, tc.datagrams)
			if tc.settings != nil {
				c.settings(t, tc.settings...)
			}
			status, err := c.connectIP(t)
			if tc.want == "close" {
				var ae *quic.ApplicationError
				if !errors.As(err, &ae) || ae.ErrorCode != masque.ErrCodeSettings {
					t.Fatalf("got status %q, %v; want H3_SETTINGS_ERROR", status, err)
				}
				return
			}
			if status != tc.want {
				t.Fatalf("status %q (%v), want %s", status, err, tc.want)
			}
		})
	}
}

// dialMasque opens a CONNECT-IP session as alice with masque's client and
// returns it with its assigned IPv4 address and a channel of the packets
// the gateway sends it as HTTP datagrams.
func dialMasque(t *testing.T, addr string) (*masque.Conn, *masque.Session, netip.Addr, chan []byte) {
	t.Helper()
	c := dialRawH3(t, addr, true)
	mc, err := masque.NewClientConn(c.qc, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("alice:secret"))}}
	sess, _, err := mc.Dial(ctx, masque.Request{Authority: "gw.example", Path: ConnectIPPath, Header: h})
	if err != nil {
		t.Fatal(err)
	}
	pkts := make(chan []byte, 16)
	sess.OnPacket(func(p []byte) {
		select {
		case pkts <- bytes.Clone(p):
		default:
		}
	})
	go func() { _ = mc.ServeDatagrams() }()
	sess.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		typ, p, err := sess.ReadCapsule(func(t uint64) bool { return t == masque.CapsuleAddressAssign })
		if err != nil {
			t.Fatalf("no ADDRESS_ASSIGN: %v", err)
		}
		if typ == masque.CapsuleAddressAssign {
			as, err := masque.ParseAddressAssign(p)
			if err != nil || len(as) == 0 {
				t.Fatalf("ADDRESS_ASSIGN %v, %v", as, err)
			}
			return mc, sess, as[0].Prefix.Addr(), pkts
		}
	}
}

// TestConnectIPClientCapsules: the gateway reads the client's capsules.
// ADDRESS_REQUEST gets an ADDRESS_ASSIGN with the same Request IDs (RFC
// 9484 4.7.2): the session's address for "any IPv4 address" and for a
// prefix that holds it, the rejection form for what it cannot give. A
// DATAGRAM capsule (RFC 9297 3.5) with context ID 0, in the short or a
// longer encoding, carries a packet into the stack as an HTTP datagram
// would; a capsule of an unknown type is skipped. A malformed capsule ends
// the stream with H3_MESSAGE_ERROR.
func TestConnectIPClientCapsules(t *testing.T) {
	g, addr := startGateway(t, nil)
	_, sess, ip, pkts := dialMasque(t, addr)
	var b []byte
	b = masque.AppendCapsule(b, 0x1f*3+0x29, []byte("grease")) // a reserved capsule type
	b = masque.AppendAddressRequest(b, []masque.AssignedAddress{
		{RequestID: 7, Prefix: netip.MustParsePrefix("0.0.0.0/32")},
		{RequestID: 8, Prefix: netip.PrefixFrom(ip, 24).Masked()},
		{RequestID: 9, Prefix: netip.MustParsePrefix("192.0.2.1/32")},
		{RequestID: 10, Prefix: netip.MustParsePrefix("::/128")},
	})
	b = masque.AppendCapsule(b, masque.CapsuleDatagram, append([]byte{0}, icmpEcho(ip, g.Addr(), 7, 1)...))
	b = masque.AppendCapsule(b, masque.CapsuleDatagram, append([]byte{0x40, 0}, icmpEcho(ip, g.Addr(), 7, 2)...))
	b = masque.AppendCapsule(b, masque.CapsuleDatagram, append([]byte{1}, icmpEcho(ip, g.Addr(), 7, 3)...)) // context ID 1: not IP
	if err := sess.WriteCapsules(b); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) == 0 {
		typ, p, err := sess.ReadCapsule(func(t uint64) bool { return t == masque.CapsuleAddressAssign })
		if err != nil {
			t.Fatalf("no answer to ADDRESS_REQUEST: %v", err)
		}
		if typ != masque.CapsuleAddressAssign {
			continue
		}
		as, err := masque.ParseAddressAssign(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			if a.RequestID != 0 {
				got = append(got, fmt.Sprintf("%d:%v", a.RequestID, a.Prefix))
			}
		}
	}
	want := []string{"7:" + ip.String() + "/32", "8:" + ip.String() + "/32", "9:0.0.0.0/32", "10:::/128"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("ADDRESS_ASSIGN answers %v, want %v", got, want)
	}
	seqs := map[uint16]bool{}
	timeout := time.After(10 * time.Second)
	for len(seqs) < 2 {
		select {
		case p := <-pkts:
			ic := header.ICMPv4(header.IPv4(p).Payload())
			if header.IPv4(p).TransportProtocol() == header.ICMPv4ProtocolNumber && ic.Type() == header.ICMPv4EchoReply {
				seqs[ic.Sequence()] = true
			}
		case <-timeout:
			t.Fatalf("echo replies to the DATAGRAM capsules: %v, want sequences 1 and 2", seqs)
		}
	}
	if seqs[3] {
		t.Error("a DATAGRAM capsule with context ID 1 was injected")
	}
	// A malformed capsule: an ADDRESS_REQUEST whose entry is cut short.
	if err := sess.WriteCapsules(masque.AppendCapsule(nil, masque.CapsuleAddressRequest, []byte{1, 4})); err != nil {
		t.Fatal(err)
	}
	for {
		_, _, err := sess.ReadCapsule(func(uint64) bool { return false })
		if err == nil {
			continue
		}
		// The stream's reset, or the connection's close that follows it
		// at once (the session was the connection's only use).
		var se *quic.StreamError
		var ae *quic.ApplicationError
		if !(errors.As(err, &se) && se.ErrorCode == quic.StreamErrorCode(masque.ErrCodeMessage)) &&
			!(errors.As(err, &ae) && ae.ErrorCode == masque.ErrCodeMessage) {
			t.Fatalf("after a malformed capsule the stream ended with %v, want H3_MESSAGE_ERROR", err)
		}
		break
	}
	waitFor(t, func() bool { return len(g.liveLinks()) == 0 }, "the session's link to end")
}

// TestSecondRequestRejected: a request on a connection whose CONNECT-IP
// session runs is reset with H3_REQUEST_REJECTED (RFC 9114 4.1.1), not
// left without an answer; the session lives on.
func TestSecondRequestRejected(t *testing.T) {
	g, addr := startGateway(t, nil)
	mc, _, _, _ := dialMasque(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("alice:secret"))}}
	_, _, err := mc.Dial(ctx, masque.Request{Authority: "gw.example", Path: ConnectIPPath, Header: h})
	var se *quic.StreamError
	if !errors.As(err, &se) || se.ErrorCode != quic.StreamErrorCode(masque.ErrCodeRequestRejected) {
		t.Fatalf("second request: %v, want an H3_REQUEST_REJECTED reset", err)
	}
	if n := len(g.liveLinks()); n != 1 {
		t.Fatalf("%d live links after the rejected request, want 1", n)
	}
}
