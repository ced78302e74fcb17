package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/underpass/underpass/internal/core/cstp"
)

// testClient is a minimal AnyConnect client for tests and benchmarks: the
// XML sign-in, CONNECT, and raw CSTP frames over TLS. startStack adds a
// gVisor client stack so tests can open TCP connections through the tunnel.
type testClient struct {
	t       testing.TB
	addr    string // gateway host:port
	cookie  string
	conn    *tls.Conn
	br      *bufio.Reader
	hdr     http.Header
	tunAddr netip.Addr
	wmu     sync.Mutex

	st   *stack.Stack
	ep   *channel.Endpoint
	stop context.CancelFunc
	wg   sync.WaitGroup
}

func tlsDial(t testing.TB, addr string) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("tls dial: %v", err)
	}
	return c
}

// xmlRequest is an AnyConnect XML POST as openconnect sends it.
func xmlRequest(path, cookie, body string) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, "https://gw"+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/xml")
	req.Header.Set("X-Aggregate-Auth", "1")
	req.Header.Set("X-Transcend-Version", "1")
	if cookie != "" {
		req.Header.Set("Cookie", "webvpn="+cookie)
	}
	return req
}

// post sends one XML request on c and returns the response and body.
func post(t testing.TB, c net.Conn, br *bufio.Reader, path, cookie, body string) (*http.Response, string) {
	t.Helper()
	req := xmlRequest(path, cookie, body)
	if err := req.Write(c); err != nil {
		t.Fatalf("write request: %v", err)
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

const initXML = `<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="init" aggregate-auth-version="2"><version who="vpn">v9.01</version><device-id>linux-64</device-id><group-access>https://gw</group-access></config-auth>`

func replyXML(user, pass string) string {
	return fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-reply" aggregate-auth-version="2"><version who="vpn">v9.01</version><device-id>linux-64</device-id><auth><username>%s</username><password>%s</password></auth></config-auth>`, user, pass)
}

// signIn runs the XML exchange and returns the webvpn cookie ("" on
// failure) and the last response body.
func signIn(t testing.TB, addr, user, pass string) (string, string) {
	t.Helper()
	c := tlsDial(t, addr)
	defer c.Close()
	br := bufio.NewReader(c)
	resp, body := post(t, c, br, "/", "", initXML)
	if resp.StatusCode != 200 || !strings.Contains(body, `type="auth-request"`) {
		t.Fatalf("init: %d %s", resp.StatusCode, body)
	}
	resp, body = post(t, c, br, "/auth", "", replyXML(user, pass))
	for _, ck := range resp.Cookies() {
		if ck.Name == "webvpn" && ck.Value != "" {
			return ck.Value, body
		}
	}
	return "", body
}

// connectTunnel sends CONNECT with cookie; it returns the client or the
// HTTP status on refusal.
func connectTunnel(t testing.TB, addr, cookie string) (*testClient, int) {
	t.Helper()
	c := tlsDial(t, addr)
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: gw\r\nCookie: webvpn=%s\r\nX-CSTP-Version: 1\r\nX-CSTP-MTU: 1400\r\nX-CSTP-Address-Type: IPv6,IPv4\r\n\r\n", cookie)
	req, _ := http.NewRequest(http.MethodConnect, "https://gw/CSCOSSLC/tunnel", nil)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		c.Close()
		t.Fatalf("CONNECT response: %v", err)
	}
	if resp.StatusCode != 200 {
		c.Close()
		return nil, resp.StatusCode
	}
	a, err := netip.ParseAddr(resp.Header.Get("X-CSTP-Address"))
	if err != nil {
		t.Fatalf("X-CSTP-Address: %v", err)
	}
	tc := &testClient{t: t, addr: addr, cookie: cookie, conn: c, br: br, hdr: resp.Header, tunAddr: a}
	t.Cleanup(tc.Close)
	return tc, 200
}

// dial signs in and opens a tunnel.
func dial(t testing.TB, addr, user, pass string) *testClient {
	t.Helper()
	cookie, body := signIn(t, addr, user, pass)
	if cookie == "" {
		t.Fatalf("sign-in failed: %s", body)
	}
	tc, st := connectTunnel(t, addr, cookie)
	if tc == nil {
		t.Fatalf("CONNECT: status %d", st)
	}
	return tc
}

func (c *testClient) writeFrame(typ cstp.Type, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.conn.Write(cstp.AppendFrame(nil, typ, payload))
	return err
}

// readFrame returns the next frame (a copy of its payload).
func (c *testClient) readFrame(timeout time.Duration) (cstp.Type, []byte, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	var h [cstp.HeaderLen]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, err
	}
	if !bytes.Equal(h[:4], []byte("STF\x01")) {
		return 0, nil, fmt.Errorf("bad magic %x", h[:4])
	}
	n := int(h[4])<<8 | int(h[5])
	p := make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return 0, nil, err
	}
	return cstp.Type(h[6]), p, nil
}

// startStack puts a gVisor client stack with the leased address behind the
// tunnel; frames are pumped both ways until Close.
func (c *testClient) startStack(mtu int) {
	c.st = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	})
	c.ep = channel.New(256, uint32(mtu), "") // 256 packets: ample for tests
	if err := c.st.CreateNIC(1, c.ep); err != nil {
		c.t.Fatalf("CreateNIC: %v", err)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddrFrom4(c.tunAddr.As4()).WithPrefix()}
	if err := c.st.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
		c.t.Fatalf("AddProtocolAddress: %v", err)
	}
	c.st.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
	// Client-side TCP buffers sized so one flow can fill a fast tunnel.
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20}
	c.st.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20}
	c.st.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)
	sack := tcpip.TCPSACKEnabled(true)
	c.st.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)

	ctx, cancel := context.WithCancel(context.Background())
	c.stop = cancel
	c.wg.Add(2)
	go func() { // stack -> gateway
		defer c.wg.Done()
		buf := make([]byte, 0, 64<<10)
		for {
			pkt := c.ep.ReadContext(ctx)
			if pkt == nil {
				return
			}
			buf = buf[:0]
			for {
				v := pkt.ToView()
				buf = cstp.AppendFrame(buf, cstp.Data, v.AsSlice())
				v.Release()
				pkt.DecRef()
				if pkt = c.ep.Read(); pkt == nil {
					break
				}
			}
			c.wmu.Lock()
			_, err := c.conn.Write(buf)
			c.wmu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	go func() { // gateway -> stack
		defer c.wg.Done()
		_ = c.conn.SetReadDeadline(time.Time{})
		r := cstp.NewReader(c.br, 0xffff)
		for {
			typ, p, err := r.Next()
			if err != nil {
				return
			}
			if typ != cstp.Data {
				continue
			}
			pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(append([]byte(nil), p...))})
			c.ep.InjectInbound(ipv4.ProtocolNumber, pkb)
			pkb.DecRef()
		}
	}()
}

func (c *testClient) dialTCP(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	return gonet.DialContextTCP(ctx, c.st, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(ap.Addr().As4()), Port: ap.Port()}, ipv4.ProtocolNumber)
}

// Close drops the connection without logging off.
func (c *testClient) Close() {
	c.conn.Close()
	if c.stop != nil {
		c.stop()
		c.wg.Wait()
		c.ep.Close()
		c.st.Close()
		c.st.Wait()
		c.stop = nil
	}
}
