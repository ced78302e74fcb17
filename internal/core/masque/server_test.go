package masque

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

const testPath = "/.well-known/masque/ip/"

// TestClientServer runs our client against our server: a refused request,
// then a session that carries capsules both ways and a burst of datagrams
// far beyond the 32 that quic-go's http3 queued per stream, then GOAWAY.
func TestClientServer(t *testing.T) {
	cq, sq := quicPair(t)
	server, err := NewServerConn(sq, nil)
	if err != nil {
		t.Fatal(err)
	}
	client, err := NewClientConn(cq, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	const burst = 100 // quic-go's connection queue holds 128
	var mu sync.Mutex
	got := 0
	srvDone := make(chan *Session, 1)
	go func() {
		// First request: refused.
		req, err := server.AcceptRequest(ctx)
		if err != nil {
			t.Error(err)
			close(srvDone)
			return
		}
		_ = req.Refuse(http.StatusUnauthorized, http.Header{"X-Reason": {"sign in"}}, "sign in\n")
		// Second: accepted.
		req, err = server.AcceptRequest(ctx)
		if err != nil {
			t.Error(err)
			close(srvDone)
			return
		}
		if err := CheckConnectIP(req, testPath); err != nil {
			t.Error(err)
		}
		sess, err := req.Accept(http.Header{"Underpass-Session-Expires": {"soon"}})
		if err != nil {
			t.Error(err)
		}
		sess.OnPacket(func(p []byte) {
			mu.Lock()
			got++
			mu.Unlock()
		})
		_ = sess.WriteCapsules(AppendAddressAssign(nil, []AssignedAddress{{0, mp("10.0.0.2/32")}}))
		srvDone <- sess
		_ = server.ServeDatagrams()
	}()

	_, rsp, err := client.Dial(ctx, testRequest())
	if err == nil || rsp == nil || rsp.Status != 401 || rsp.Header.Get("X-Reason") != "sign in" {
		t.Fatalf("first Dial: %+v, %v; want a 401 with X-Reason", rsp, err)
	}
	sess, rsp, err := client.Dial(ctx, testRequest())
	if err != nil || rsp.Header.Get("Capsule-Protocol") != "?1" || rsp.Header.Get("Underpass-Session-Expires") != "soon" {
		t.Fatalf("second Dial: %+v, %v", rsp, err)
	}
	ssess := <-srvDone
	if ssess == nil {
		t.FailNow()
	}
	if typ, p, err := sess.ReadCapsule(func(uint64) bool { return true }); err != nil || typ != CapsuleAddressAssign {
		t.Fatalf("capsule: %#x %x %v", typ, p, err)
	}
	pkt := make([]byte, 1200)
	for range burst {
		if err := sess.WritePacket(pkt); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := got
		mu.Unlock()
		if n == burst {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server got %d of a burst of %d datagrams", n, burst)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// GOAWAY names the stream after the last request accepted (4, the
	// second request stream; so 8).
	rc := client.peerCtl // read no further by the client after SETTINGS
	if err := server.GoAway(); err != nil {
		t.Fatal(err)
	}
	typ, n, err := readFrameHeader(rc)
	if err != nil || typ != frameGoAway {
		t.Fatalf("after SETTINGS: frame %#x, %v", typ, err)
	}
	p, _ := readPayload(rc, typ, n, 8)
	if id, _, _ := quicvarint.Parse(p); id != 8 {
		t.Fatalf("GOAWAY %d, want 8", id)
	}
}

// acceptResult is what our server's AcceptRequest returned.
type acceptResult struct {
	req *IncomingRequest
	err error
}

// openRequest starts our server on a new connection, with AcceptRequest
// running, and opens a request stream to it from a raw client.
func openRequest(t *testing.T) (*Conn, *quic.Stream, <-chan acceptResult) {
	t.Helper()
	cq, sq := quicPair(t)
	server, err := NewServerConn(sq, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	res := make(chan acceptResult, 1)
	go func() {
		req, err := server.AcceptRequest(ctx)
		res <- acceptResult{req, err}
	}()
	str, err := cq.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return server, str, res
}

// rawRequest sends raw request bytes to our server and returns what the
// server answered on the stream.
func rawRequest(t *testing.T, fields []qpack.HeaderField, extra []byte) (*Conn, string) {
	t.Helper()
	server, str, res := openRequest(t)
	b := extra
	if fields != nil {
		b = append(b, appendHeadersFrame(nil, fields)...)
	}
	if _, err := str.Write(b); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil {
		return server, "accept: " + r.err.Error()
	}
	if err := CheckConnectIP(r.req, testPath); err != nil {
		return server, err.Error()
	}
	return server, "ok"
}

func TestServerRequests(t *testing.T) {
	good := requestFields("gw.example", testPath, nil)
	with := func(name, value string) []qpack.HeaderField {
		var out []qpack.HeaderField
		found := false
		for _, f := range good {
			if f.Name == name {
				found = true
				if value == "" {
					continue
				}
				f.Value = value
			}
			out = append(out, f)
		}
		if !found {
			out = append(out, qpack.HeaderField{Name: name, Value: value})
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		fields []qpack.HeaderField
		extra  []byte
		want   string
	}{
		{"valid", good, nil, "ok"},
		{"grease frame first", good, appendFrame(nil, 0x1f*2+0x21, []byte("x")), "ok"},
		{"capsule-protocol with parameters", with("capsule-protocol", "?1;a=1"), nil, "ok"},
		{"wrong protocol", with(":protocol", "connect-udp"), nil, `:protocol "connect-udp"`},
		{"plain CONNECT", with(":protocol", ""), nil, `:protocol ""`},
		{"GET", append([]qpack.HeaderField{{Name: ":method", Value: "GET"}}, good[2:]...), nil, "method GET"},
		{"no capsule-protocol", with("capsule-protocol", ""), nil, "Capsule-Protocol"},
		{"capsule-protocol false", with("capsule-protocol", "?0"), nil, "Capsule-Protocol"},
		{"wrong path", with(":path", "/.well-known/masque/ip/10.0.0.1/0/"), nil, "no IP flow forwarding"},
		{"http scheme", with(":scheme", "http"), nil, ":scheme"},
		{"no authority", with(":authority", ""), nil, ":authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, got := rawRequest(t, tc.fields, tc.extra)
			if !strings.Contains(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	// Frames that may not open a request stream close the connection.
	for _, tc := range []struct {
		name  string
		extra []byte
		want  quic.ApplicationErrorCode
	}{
		{"DATA first", appendFrame(nil, frameData, []byte{1}), ErrCodeFrameUnexpected},
		{"SETTINGS on a request stream", appendSettings(nil, false), ErrCodeFrameUnexpected},
		{"HTTP/2 frame", appendFrame(nil, 0x06, make([]byte, 8)), ErrCodeFrameUnexpected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server, got := rawRequest(t, nil, tc.extra)
			if !strings.Contains(got, "accept") {
				t.Fatalf("got %q, want an accept error", got)
			}
			if code := closeCode(t, server.qc); code != tc.want {
				t.Fatalf("closed with %#x, want %#x", uint64(code), uint64(tc.want))
			}
		})
	}
}
