package netstack

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// TestSegmentationOffload moves 4 MiB each way through the stack and checks
// what the offloads did: the client's stack (which verifies every checksum,
// unlike the gateway's NIC) saw no bad packet and no packet over the MTU,
// the gateway's TCP sent fewer segments than the port carried packets
// (GSO cut them), and received fewer segments than were injected (GRO
// merged them). The data must arrive byte-exact both ways.
func TestSegmentationOffload(t *testing.T) {
	gw := newGW(t, nil)
	c := newClient(t, gw, cliAddr, 0)

	conn := dialEcho(t, c)
	data := make([]byte, 4<<20)
	rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Write(data)
		if err == nil {
			err = conn.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(data, "bye"...)) {
		t.Fatalf("echo: got %d bytes, want %d", len(got), len(data)+3)
	}

	cs, gs, st := c.st.Stats(), gw.st.Stats(), gw.Stats()
	if n := cs.TCP.ChecksumErrors.Value(); n != 0 {
		t.Errorf("client saw %d TCP checksum errors", n)
	}
	if n := cs.IP.MalformedPacketsReceived.Value(); n != 0 {
		t.Errorf("client saw %d malformed IP packets", n)
	}
	if c.maxSize() > gw.mtu {
		t.Errorf("largest packet to the client: %d bytes, MTU %d", c.maxSize(), gw.mtu)
	}
	if sent := gs.TCP.SegmentsSent.Value(); sent >= st.PacketsOut {
		t.Errorf("GSO: gateway TCP sent %d segments for %d packets out", sent, st.PacketsOut)
	}
	if rcvd := gs.TCP.ValidSegmentsReceived.Value(); rcvd >= st.PacketsIn {
		t.Errorf("GRO: gateway TCP received %d segments for %d packets in", rcvd, st.PacketsIn)
	}
	t.Logf("out: %d packets from %d TCP segments; in: %d packets as %d TCP segments; largest %d bytes",
		st.PacketsOut, gs.TCP.SegmentsSent.Value(), st.PacketsIn, gs.TCP.ValidSegmentsReceived.Value(), c.maxSize())
}

// TestReceiveWindowGrows uploads through a flow and expects the gateway's
// receive buffer for it to have grown past its initial size: receive
// auto-tuning runs only if the relay reports what it read
// (ModerateRecvBuf). Without that, the window a client may fill stays
// ~128 KiB, which caps an upload at 128 KiB per round trip (20 Mbit/s at
// 50 ms).
func TestReceiveWindowGrows(t *testing.T) {
	gw := newGW(t, nil)
	c := newClient(t, gw, cliAddr, 0)
	conn := dialEcho(t, c)
	const size = 16 << 20
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, conn, size)
		done <- err
	}()
	if _, err := conn.Write(make([]byte, size)); err != nil {
		t.Fatalf("write: %v (gateway %+v)", err, gw.Stats())
	}
	if err := <-done; err != nil {
		cs := c.st.Stats()
		t.Fatalf("read: %v (gateway %+v; client: %d segments retransmitted, %d timeouts)",
			err, gw.Stats(), cs.TCP.Retransmits.Value(), cs.TCP.Timeouts.Value())
	}
	c.port.flowMu.Lock()
	var bufs []int64
	for f := range c.port.flows {
		if tf, ok := f.(*tcpFlow); ok {
			bufs = append(bufs, tf.g.ep.SocketOptions().GetReceiveBufferSize())
		}
	}
	c.port.flowMu.Unlock()
	if len(bufs) != 1 {
		t.Fatalf("%d TCP flows on the port, want 1", len(bufs))
	}
	if bufs[0] <= tcpRcvBufDefault {
		t.Errorf("receive buffer %d bytes after a %d-byte upload: auto-tuning never grew it from %d", bufs[0], size, tcpRcvBufDefault)
	}
	t.Logf("receive buffer: %d bytes", bufs[0])
}

// dialEcho connects c to a loopback echo server, with a 20 s deadline on
// everything that follows; the connection closes at cleanup.
func dialEcho(t *testing.T, c *client) *gonet.TCPConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := c.dialTCP(ctx, echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	return conn
}
