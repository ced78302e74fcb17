package tunnel

// The CSTP adapter: AnyConnect's 8-byte framing over TLS (R-P1), one frame
// per TLS record, records batched into few socket writes.

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/underpass/underpass/internal/core/cstp"
	"github.com/underpass/underpass/netstack"
)

const cstpHeaderLen = cstp.HeaderLen

var errCompressed = errors.New("compressed frame, but compression was not negotiated")

// cstpLink is one CSTP connection of a session: its reader feeds client
// packets into the stack, the data loop writes the stack's packets back
// as frames.
type cstpLink struct {
	linkBase
	conn net.Conn
	bc   *batchConn // nil when the hosting server did the TLS (Handler mode)
	br   bufReader

	dtlsOffer   *dtlsOffer                  // nil: no DTLS for this connection
	dtls        atomic.Pointer[dtlsChannel] // the live DTLS channel, nil while on CSTP only
	dtlsPending atomic.Int32                // DTLS handshakes in progress
	dtlsBuf     []byte                      // the data loop's record buffer (writeDTLS, probeDTLS)
	dtlsOut     *dtlsBatch                  // records sealed by the data loop, sent at flush
}

func newCSTPLink(s *session, conn net.Conn, br bufReader) *cstpLink {
	t := &cstpLink{conn: conn, br: br}
	t.s, t.ctrl = s, make(chan []byte, ctrlQueue)
	if tc, ok := conn.(*tls.Conn); ok {
		t.bc, _ = tc.NetConn().(*batchConn)
	}
	return t
}

// abort stops the connection at once, unblocking any read or write.
func (t *cstpLink) abort() {
	t.stopWith(EndConnLost)
	t.g.withdrawDTLS(t)
	_ = t.conn.SetDeadline(time.Now())
	_ = t.conn.Close()
}

// read reads the client's frames until the connection ends.
func (t *cstpLink) read() (EndReason, error) {
	if t.bc != nil {
		_ = t.bc.setBatching(true)
	}
	r := cstp.NewReader(t.br, cstp.MaxRecordPayload)
	s := t.s
	// Data frames go to the stack through one Batch (GRO), flushed before
	// a read that may block: what one TLS read brought in is coalesced.
	b := t.g.stack.NewBatch()
	defer b.Flush()
	for {
		if t.br.Buffered() == 0 {
			b.Flush()
		}
		typ, payload, err := r.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return EndConnLost, err
		}
		t.heard()
		switch typ {
		case cstp.Data:
			s.bytesIn.Add(uint64(len(payload)))
			_ = t.port.InjectBatch(b, payload) // rejects are answered or counted by the stack
		case cstp.DPDReq:
			select {
			case t.ctrl <- cstp.AppendFrame(nil, cstp.DPDResp, payload):
			default:
			}
		case cstp.Disconnect:
			return EndLogoff, nil
		case cstp.Terminate:
			return EndConnLost, nil
		case cstp.Compressed:
			return EndConnLost, errCompressed
		}
	}
}

// writePacket sends pk over DTLS when the channel is up and pk fits its
// MTU, else as a CSTP frame.
func (t *cstpLink) writePacket(pk *netstack.Packet) error {
	f := pk.Frame()
	if t.dtlsOffer != nil && t.writeDTLS(pk.IP(), f) {
		t.s.bytesOut.Add(uint64(len(f) - cstpHeaderLen))
		pk.Release()
		return nil
	}
	cstp.PutHeader(f, cstp.Data, len(f)-cstpHeaderLen)
	t.s.bytesOut.Add(uint64(len(f) - cstpHeaderLen))
	_, err := t.conn.Write(f)
	pk.Release()
	return err
}

func (t *cstpLink) writeControl(f []byte) error {
	_, err := t.conn.Write(f)
	return err
}

// flush sends batched records, giving a stuck client two DPD intervals to
// take them before the connection is declared dead.
func (t *cstpLink) flush() error {
	t.flushDTLS()
	if t.bc == nil {
		return nil
	}
	_ = t.conn.SetWriteDeadline(time.Now().Add(2 * t.cfg.DPD))
	return t.bc.Flush()
}

// probe sends a DPD request after DPD of silence; the client answers it
// with a DPD response (any frame counts as heard).
func (t *cstpLink) probe(silent time.Duration) (EndReason, error) {
	if t.dtlsOffer != nil {
		t.probeDTLS()
	}
	if silent > deadPeerAfter(t.cfg.DPD) {
		return EndDeadPeer, nil
	}
	if silent > t.cfg.DPD {
		if err := t.writeControl(cstp.AppendFrame(nil, cstp.DPDReq, nil)); err != nil {
			return endNone, err
		}
		return endNone, t.flush()
	}
	return endNone, nil
}

// goodbye sends DISCONNECT when the client must stop: openconnect then
// exits instead of reconnecting. A going-away client gets nothing and
// reconnects when the connection closes.
func (t *cstpLink) goodbye(r EndReason) {
	if !r.tellsClientToStop() {
		return
	}
	code := byte(cstp.ReasonSessionEnded)
	if r == EndTakenOver {
		code = cstp.ReasonTakenOver
	}
	// flush would give a stuck client 2 DPD; the goodbye gets less.
	_ = t.conn.SetWriteDeadline(time.Now().Add(goodbyeTimeout))
	if t.writeControl(cstp.AppendFrame(nil, cstp.Disconnect, cstp.DisconnectPayload(code, r.String()))) == nil && t.bc != nil {
		_ = t.bc.Flush()
	}
}
