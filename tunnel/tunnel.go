package tunnel

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/underpass/underpass/internal/cstp"
	"github.com/underpass/underpass/netstack"
)

const (
	cstpHeaderLen = cstp.HeaderLen
	// writeBatch is how many queued packets one flush may carry: enough to
	// fill several batchConn buffers without starving control frames.
	writeBatch = 64
	// ctrlQueue holds control frames (DPD responses) waiting for the
	// writer; a client flooding DPD requests only loses the excess replies.
	ctrlQueue = 16
)

// link is one live transport connection of a session: CSTP over TLS
// (tunnelConn) or CONNECT-IP over QUIC (quicConn).
type link interface {
	base() *linkBase
	// close stops the connection at once, unblocking any read or write.
	close()
}

// linkBase is what every transport connection shares: its session, its
// port on the stack, its lifecycle and its telemetry.
type linkBase struct {
	g         *Gateway
	cfg       *Config // the configuration this connection started with
	s         *session
	port      *netstack.Port
	transport string // "tls" or "quic", for telemetry

	done     chan struct{} // closed by stop()
	finished chan struct{} // closed when the connection has ended and cleaned up
	once     sync.Once

	clientAddr, serverAddr netip.AddrPort // for telemetry
	start                  time.Time
	in0, out0              uint64 // session byte counters when this connection began

	bye atomic.Bool // tell the client the session is over before closing
}

func (b *linkBase) base() *linkBase { return b }

// stop asks the connection to end; its run loop does the cleanup.
func (b *linkBase) stop() { b.once.Do(func() { close(b.done) }) }

// register attaches l to its session and the gateway; false if the gateway
// is closed (l is then finished and the caller must release its resources).
func (g *Gateway) register(l link) bool {
	b := l.base()
	b.g, b.cfg = g, g.conf()
	b.done, b.finished = make(chan struct{}), make(chan struct{})
	b.start = time.Now()
	b.in0, b.out0 = b.s.bytesIn.Load(), b.s.bytesOut.Load()
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		close(b.finished)
		return false
	}
	g.tunnels[l] = struct{}{}
	g.wg.Add(1)
	g.mu.Unlock()
	b.s.mu.Lock()
	b.s.tun = l
	b.s.mu.Unlock()
	return true
}

// unregister detaches l after its run loop ended, logs the disconnect and
// ends the session if asked; it marks l finished.
func (g *Gateway) unregister(l link, reason string, end bool) {
	b := l.base()
	s := b.s
	s.mu.Lock()
	if s.tun == l {
		s.tun = nil
		s.detached = time.Now()
	}
	s.mu.Unlock()
	g.mu.Lock()
	delete(g.tunnels, l)
	g.mu.Unlock()
	g.telemetry(b, "disconnect", reason)
	close(b.finished)
	if end {
		g.endSession(s, reason)
	}
	g.wg.Done()
}

// tunnelConn is one CSTP connection of a session: a reader goroutine feeds
// client packets into the stack, the run loop writes the stack's packets
// for this client back as frames.
type tunnelConn struct {
	linkBase
	conn net.Conn
	bc   *batchConn // nil when the hosting server did the TLS (Handler mode)
	br   bufReader

	ctrl chan []byte

	lastRx atomic.Int64 // unix nanos of the last frame from the client
	logoff atomic.Bool  // the client sent DISCONNECT: end the session
}

func (g *Gateway) newTunnelConn(s *session, conn net.Conn, br bufReader, port *netstack.Port) *tunnelConn {
	t := &tunnelConn{conn: conn, br: br, ctrl: make(chan []byte, ctrlQueue)}
	t.s, t.port, t.transport = s, port, "tls"
	if tc, ok := conn.(*tls.Conn); ok {
		t.bc, _ = tc.NetConn().(*batchConn)
	}
	if !g.register(t) {
		port.Close()
		conn.Close()
		return nil
	}
	t.lastRx.Store(t.start.UnixNano())
	return t
}

// close stops the connection at once, unblocking any read or write.
func (t *tunnelConn) close() {
	t.stop()
	_ = t.conn.SetDeadline(time.Now())
}

// run is the write loop. It returns when the connection ends.
func (t *tunnelConn) run() {
	g, s := t.g, t.s
	if t.bc != nil {
		_ = t.bc.setBatching(true)
	}
	readerDone := make(chan error, 1)
	go func() { readerDone <- t.readLoop() }()

	tick := time.NewTicker(t.cfg.DPD / 2) // DPD checks at twice the DPD rate
	defer tick.Stop()
	expiry := time.NewTimer(time.Until(s.expires))
	defer expiry.Stop()

	var (
		reason   string
		end      bool // end the session, not just this connection
		idle     = newIdleWatch(s)
		writeErr error
		pkts     = t.port.Packets()
	)
loop:
	for {
		select {
		case pk, ok := <-pkts:
			if !ok {
				reason = "port closed"
				break loop
			}
			writeErr = writeBatchFrom(pkts, pk, t.writePacket)
			if writeErr == nil {
				writeErr = t.flush()
			}
		case f := <-t.ctrl:
			writeErr = t.writeFrame(f)
			if writeErr == nil {
				writeErr = t.flush()
			}
		case err := <-readerDone:
			readerDone <- err // let the cleanup below see it
			if t.logoff.Load() {
				reason, end = "client logged off", true
			} else {
				reason = "connection lost"
				if err != nil && !errors.Is(err, io.EOF) {
					reason += ": " + err.Error()
				}
			}
			break loop
		case <-tick.C:
			now := time.Now()
			silent := now.Sub(time.Unix(0, t.lastRx.Load()))
			if silent > 2*t.cfg.DPD+t.cfg.DPD/2 {
				reason = "dead peer (no frames for " + silent.Round(time.Second).String() + ")"
				break loop
			}
			if silent > t.cfg.DPD {
				writeErr = t.writeFrame(cstp.AppendFrame(nil, cstp.DPDReq, nil))
				if writeErr == nil {
					writeErr = t.flush()
				}
			}
			if idle.expired(now, t.cfg.IdleTimeout) {
				reason, end = "idle timeout", true
				_ = t.sendDisconnect()
				break loop
			}
		case <-expiry.C:
			reason, end = "session timeout", true
			_ = t.sendDisconnect()
			break loop
		case <-t.done:
			reason = "closed"
			if t.bye.Load() {
				_ = t.sendDisconnect()
			}
			break loop
		}
		if writeErr != nil {
			reason = "write: " + writeErr.Error()
			break
		}
	}
	t.close()
	_ = t.conn.Close()
	<-readerDone
	t.port.Close()
	for pk := range pkts { // release whatever was still queued
		pk.Release()
	}
	g.unregister(t, reason, end)
}

// writeBatchFrom writes pk, then up to writeBatch-1 more packets already
// queued on pkts, without waiting for more: the caller flushes once for
// the whole batch. A closed pkts just ends the batch (the caller's next
// receive sees it).
func writeBatchFrom(pkts <-chan *netstack.Packet, pk *netstack.Packet, write func(*netstack.Packet) error) error {
	err := write(pk)
	for i := 1; i < writeBatch && err == nil; i++ {
		select {
		case pk, ok := <-pkts:
			if !ok {
				return nil
			}
			err = write(pk)
		default:
			return nil
		}
	}
	return err
}

// idleWatch tells when a session has moved no data for the idle timeout.
type idleWatch struct {
	s    *session
	last uint64    // bytes in+out at the last change
	from time.Time // when they last changed
}

func newIdleWatch(s *session) *idleWatch {
	return &idleWatch{s: s, last: s.bytesIn.Load() + s.bytesOut.Load(), from: time.Now()}
}

// expired reports whether nothing moved for longer than limit (0: never).
func (w *idleWatch) expired(now time.Time, limit time.Duration) bool {
	if io := w.s.bytesIn.Load() + w.s.bytesOut.Load(); io != w.last {
		w.last, w.from = io, now
		return false
	}
	return limit > 0 && now.Sub(w.from) > limit
}

// readLoop reads the client's frames until the connection ends.
func (t *tunnelConn) readLoop() error {
	r := cstp.NewReader(t.br, cstp.MaxRecordPayload)
	s := t.s
	for {
		typ, payload, err := r.Next()
		if err != nil {
			return err
		}
		t.lastRx.Store(time.Now().UnixNano())
		switch typ {
		case cstp.Data:
			s.bytesIn.Add(uint64(len(payload)))
			_ = t.port.Inject(payload) // rejects are answered or counted by the stack
		case cstp.DPDReq:
			select {
			case t.ctrl <- cstp.AppendFrame(nil, cstp.DPDResp, payload):
			default:
			}
		case cstp.Disconnect:
			t.logoff.Store(true)
			return nil
		case cstp.Terminate:
			return nil
		case cstp.Compressed:
			return errors.New("compressed frame, but compression was not negotiated")
		}
	}
}

func (t *tunnelConn) writePacket(pk *netstack.Packet) error {
	f := pk.Frame()
	cstp.PutHeader(f, cstp.Data, len(f)-cstpHeaderLen)
	t.s.bytesOut.Add(uint64(len(f) - cstpHeaderLen))
	_, err := t.conn.Write(f)
	pk.Release()
	return err
}

func (t *tunnelConn) writeFrame(f []byte) error {
	_, err := t.conn.Write(f)
	return err
}

// flush sends batched records, giving a stuck client two DPD intervals to
// take them before the connection is declared dead.
func (t *tunnelConn) flush() error {
	if t.bc == nil {
		return nil
	}
	_ = t.conn.SetWriteDeadline(time.Now().Add(2 * t.cfg.DPD))
	return t.bc.Flush()
}

// sendDisconnect tells the client the session is over; it exits without
// reconnecting.
func (t *tunnelConn) sendDisconnect() error {
	err := t.writeFrame(cstp.AppendFrame(nil, cstp.Disconnect, nil))
	if err == nil {
		err = t.flush()
	}
	return err
}

// telemetry logs a connect or disconnect event (R-O3) with the fields an
// operator's SIEM expects. Credentials never appear in it.
func (g *Gateway) telemetry(t *linkBase, op, reason string) {
	s := t.s
	s.mu.Lock()
	assigned := s.addr
	s.mu.Unlock()
	attrs := []any{
		"op", op, "session", s.id, "client_ip", t.clientAddr.Addr(), "server_ip", t.serverAddr.Addr(),
		"gateway_ip", g.gwAddr, "assigned_ip", assigned, "user", s.ident.User, "device_id", s.ident.DeviceID,
		"user_agent", s.userAgent, "transport", t.transport,
	}
	if op == "disconnect" {
		attrs = append(attrs, "reason", reason, "bytes_in", s.bytesIn.Load()-t.in0, "bytes_out", s.bytesOut.Load()-t.out0,
			"duration", time.Since(t.start).Round(time.Millisecond))
	}
	g.log.Info("telemetry", attrs...)
}

// endSession removes s for good: its connection is told to disconnect, its
// cookie stops working and its address returns to the pool.
func (g *Gateway) endSession(s *session, reason string) {
	if !g.sessions.remove(s) {
		return
	}
	if reason != "gateway shutting down" {
		g.revoke(s)
	}
	s.mu.Lock()
	s.ended = true
	tun := s.tun
	addr := s.addr
	s.mu.Unlock()
	if tun != nil {
		// Let the writer say goodbye; a client that does not take it
		// within a second is cut off.
		b := tun.base()
		b.bye.Store(true)
		b.stop()
		select {
		case <-b.finished:
		case <-time.After(time.Second):
			tun.close()
			<-b.finished
		}
	}
	if addr.IsValid() {
		g.pool.Release(addr)
	}
	g.log.Info("session ended", "session", s.id, "user", s.ident.User, "reason", reason,
		"bytes_in", s.bytesIn.Load(), "bytes_out", s.bytesOut.Load(),
		"duration", time.Since(s.created).Round(time.Second))
}

// reap ends sessions past their timeout and disconnected sessions past the
// reconnect grace.
func (g *Gateway) reap() {
	defer g.wg.Done()
	// Once a second is plenty: timeouts are minutes long.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case now := <-tick.C:
			g.pruneRevoked(now)
			for _, s := range g.sessions.all() {
				s.mu.Lock()
				detachedFor := time.Duration(0)
				if s.tun == nil {
					detachedFor = now.Sub(s.detached)
				}
				s.mu.Unlock()
				switch {
				case now.After(s.expires):
					g.endSession(s, "session timeout")
				case detachedFor > g.conf().ReconnectGrace:
					g.endSession(s, "not reconnected within grace")
				}
			}
		}
	}
}
