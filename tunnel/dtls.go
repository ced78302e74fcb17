package tunnel

// The DTLS adapter: AnyConnect's UDP data channel (R-P5, dtls.md). A DTLS
// channel is not a connection of its own: it rides on a CSTP connection,
// whose CONNECT negotiated its keys, and carries that connection's packets
// while it lives. The session core sees one link (the CSTP one); packets
// that fit the DTLS MTU go over UDP, the rest over CSTP, and so does
// DISCONNECT (openconnect ignores it over DTLS); DTLS's own DPD and the
// MTU probe's echo stay on DTLS. DTLS dying leaves the session on CSTP.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/underpass/underpass/internal/core/acdtls"
	"github.com/underpass/underpass/internal/core/cstp"
	"github.com/underpass/underpass/internal/core/udpmux"
	"github.com/underpass/underpass/netstack"
)

// DTLSMode chooses how the gateway offers AnyConnect's DTLS channel.
type DTLSMode int

// DTLS modes (the config file's `dtls: auto|psk|legacy|off`).
const (
	// DTLSAuto offers PSK-NEGOTIATE (openconnect) when the CSTP
	// connection can export keys (TLS 1.3), else legacy DTLS 1.2
	// resumption (Cisco clients, openconnect on TLS 1.2).
	DTLSAuto DTLSMode = iota
	// DTLSPSK offers PSK-NEGOTIATE only.
	DTLSPSK
	// DTLSLegacy offers legacy resumption only.
	DTLSLegacy
	// DTLSOff never offers DTLS.
	DTLSOff
)

func (m DTLSMode) acdtls() acdtls.Mode {
	switch m {
	case DTLSPSK:
		return acdtls.ModePSK
	case DTLSLegacy:
		return acdtls.ModeLegacy
	case DTLSOff:
		return acdtls.ModeOff
	}
	return acdtls.ModeAuto
}

func (m DTLSMode) String() string { return m.acdtls().String() }

// ParseDTLSMode parses "auto", "psk", "legacy" or "off" ("" is auto).
func ParseDTLSMode(s string) (DTLSMode, error) {
	m, err := acdtls.ParseMode(s)
	if err != nil {
		return 0, err
	}
	return map[acdtls.Mode]DTLSMode{acdtls.ModeAuto: DTLSAuto, acdtls.ModePSK: DTLSPSK,
		acdtls.ModeLegacy: DTLSLegacy, acdtls.ModeOff: DTLSOff}[m], nil
}

const (
	// dtlsHandshakeTimeout bounds one DTLS handshake: openconnect gives up
	// on a handshake after a few seconds and retries; a peer with a wrong
	// key gets no alert (pion drops bad records), so only a deadline ends
	// it.
	dtlsHandshakeTimeout = 10 * time.Second
	// dtlsPendingPerLink caps the handshakes one CSTP connection may have
	// in progress: openconnect runs one at a time; a second covers a NAT
	// rebinding mid-handshake. More is an attack on the gateway's memory.
	dtlsPendingPerLink = 2
	// dtlsPeerQueue is how many datagrams may wait for one DTLS peer's
	// reader: a burst of a fast client's packets while the reader injects
	// into the stack. The excess drops (TCP inside retransmits).
	dtlsPeerQueue = 512
	// dtlsReadBuf is pion's own receive size: Conn.Read needs room for a
	// whole record.
	dtlsReadBuf = 8192
	// dtlsDatagramBuf holds one UDP datagram for the DTLS server: a DTLS
	// record of the largest tunnel packet (a 1500-byte path) with room.
	// Larger datagrams are not DTLS records openconnect sends.
	dtlsDatagramBuf = 2048
)

// dtlsOffer is what a CSTP connection negotiated for DTLS at CONNECT.
type dtlsOffer struct {
	params acdtls.Params
	psk    []byte // PSK mode: the TLS exporter's 32 bytes
	id     string // the ClientHello session_id that names this connection
	mtu    int    // the largest IP packet sent over DTLS
	base   int    // the path MTU estimate it derives from (X-CSTP-Base-MTU)
}

// dtlsChannel is a live DTLS connection of a CSTP link.
type dtlsChannel struct {
	conn *dtls.Conn
	peer *dtlsPeer
	// rec, when set, seals and opens the data records instead of pion's
	// Conn (acdtls.Record: no goroutine or allocation per record); pion
	// still gets every other record (alerts, handshake retransmissions).
	rec    *acdtls.Record
	lastRx atomic.Int64 // unix nanos of the last record from the client
	once   sync.Once
}

// send writes one AnyConnect DTLS message (type byte + payload) to the
// client: sealed into *buf by the record layer when it runs the channel
// (the caller owns buf: one per goroutine), else through pion.
func (ch *dtlsChannel) send(buf *[]byte, msg []byte) error {
	if ch.rec == nil {
		_, err := ch.conn.Write(msg)
		return err
	}
	*buf = ch.rec.Seal((*buf)[:0], msg)
	_, err := ch.peer.s.pc.WriteTo(*buf, ch.peer.raddr)
	return err
}

func (ch *dtlsChannel) close() {
	ch.once.Do(func() { _ = ch.conn.Close() })
}

// negotiateDTLS picks the DTLS mode for a CONNECT on a CSTP connection,
// or returns nil when the client stays on CSTP: no DTLS socket served, the
// mode is off, UDP is disabled, or the client offered nothing usable.
func (g *Gateway) negotiateDTLS(r *http.Request) *dtlsOffer {
	c := g.conf()
	if c.DisableUDP || c.DTLS == DTLSOff || g.dtlsPort.Load() == 0 {
		return nil
	}
	// PSK-NEGOTIATE needs the TLS exporter, which Go offers on TLS 1.3
	// (and on 1.2 only with Extended Master Secret, which openconnect
	// does not send): never GODEBUG=tlsunsafeekm in a library.
	var psk []byte
	if r.TLS != nil {
		if k, err := r.TLS.ExportKeyingMaterial(acdtls.PSKExporterLabel, nil, acdtls.PSKLen); err == nil {
			psk = k
		}
	}
	p, ok := acdtls.Negotiate(c.DTLS.acdtls(), acdtls.ParseOffer(r.Header), psk != nil)
	if !ok {
		return nil
	}
	o := &dtlsOffer{params: p, psk: psk}
	if p.PSK {
		o.id = string(p.AppID)
	} else {
		o.id = string(p.SessionID[:])
	}
	base := acdtls.DefaultBaseMTU
	if v := cstp.ParseRequest(r.Header).BaseMTU; v >= MinMTU && v < base {
		base = v // the client knows its link is narrower
	}
	ca := clientAddr(r)
	o.base = base
	o.mtu = acdtls.MTU(base, ca.Addr().Is6() && !ca.Addr().Is4In6(), false, p)
	return o
}

// dtlsHeaders returns the X-DTLS-* part of the CONNECT response for o.
func (g *Gateway) dtlsHeaders(o *dtlsOffer) *cstp.DTLS {
	c := g.conf()
	d := o.params.Response()
	d.Port, d.DPD, d.Keepalive, d.MTU = int(g.dtlsPort.Load()), c.DPD, c.Keepalive, o.mtu
	return d
}

// offerDTLS makes t's DTLS offer (set before t registered) findable by
// the session_id of the client's ClientHello, until t ends.
func (g *Gateway) offerDTLS(t *cstpLink) {
	g.dtlsMu.Lock()
	g.dtlsIDs[t.dtlsOffer.id] = t
	g.dtlsMu.Unlock()
	select {
	case <-t.done: // t ended already: its withdraw may have run before the offer
		g.withdrawDTLS(t)
	default:
	}
}

// withdrawDTLS closes t's DTLS channel and forgets its offer.
func (g *Gateway) withdrawDTLS(t *cstpLink) {
	if t.dtlsOffer == nil {
		return
	}
	g.dtlsMu.Lock()
	if g.dtlsIDs[t.dtlsOffer.id] == t {
		delete(g.dtlsIDs, t.dtlsOffer.id)
	}
	g.dtlsMu.Unlock()
	if ch := t.dtls.Swap(nil); ch != nil {
		ch.close()
	}
}

func (g *Gateway) dtlsLink(id []byte) *cstpLink {
	g.dtlsMu.Lock()
	defer g.dtlsMu.Unlock()
	return g.dtlsIDs[string(id)]
}

// ServeDTLS serves AnyConnect DTLS on pc until Close or Shutdown, then
// returns ErrClosed; it closes pc. CSTP clients are told this socket's
// port (X-DTLS-Port; the first one served). ServeTCPAndUDP calls it on the
// DTLS side of the shared UDP port.
//
// Datagrams from an address without a DTLS connection are dropped before
// any state is made unless they are a ClientHello naming a live CSTP
// connection's offer (dtls.md §5), and pion keeps the HelloVerifyRequest
// cookie exchange, so a spoofed source gets no amplification.
func (g *Gateway) ServeDTLS(pc net.PacketConn) error {
	c := g.conf()
	switch {
	case c.DisableUDP:
		pc.Close()
		return errors.New("tunnel: UDP is disabled in the configuration")
	case c.DTLS == DTLSOff:
		pc.Close()
		return errors.New("tunnel: DTLS is off in the configuration")
	}
	ap, err := netip.ParseAddrPort(pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return fmt.Errorf("tunnel: DTLS socket address: %w", err)
	}
	g.mu.Lock()
	if g.closed || g.draining {
		g.mu.Unlock()
		pc.Close()
		return ErrClosed
	}
	g.udpPCs = append(g.udpPCs, pc)
	g.mu.Unlock()
	g.dtlsPort.CompareAndSwap(0, int32(ap.Port()))
	if uc, ok := pc.(interface{ SetReadBuffer(int) error }); ok {
		// Bursts of a fast client (and of many) outrun the default 208 KiB
		// socket buffer; quic-go sizes its own the same way.
		_ = uc.SetReadBuffer(dtlsSocketBuffer)
	}
	s := &dtlsServer{g: g, pc: pc, bio: newBatchIO(pc), peers: make(map[netip.AddrPort]*dtlsPeer)}
	if uc, ok := pc.(*net.UDPConn); ok && s.bio != nil {
		s.gso.Store(udpGSOSupported(uc))
	}
	err = s.serve()
	s.closeAll()
	s.wg.Wait()
	if g.ctx.Err() != nil || g.isDraining() || errors.Is(err, net.ErrClosed) {
		return ErrClosed
	}
	return err
}

// dtlsSocketBuffer is the DTLS socket's receive buffer: 7 MiB, what
// quic-go asks for its own socket (the kernel caps it at rmem_max).
const dtlsSocketBuffer = 7 << 20

// dtlsServer demultiplexes one DTLS socket by source address.
type dtlsServer struct {
	g  *Gateway
	pc net.PacketConn
	wg sync.WaitGroup

	bio batchIO // nil: one datagram a system call
	// gso: the kernel segments UDP for this socket (UDP_SEGMENT); off for
	// good after a device refused it (dtlsBatch.sendSegmented).
	gso atomic.Bool

	mu    sync.Mutex
	peers map[netip.AddrPort]*dtlsPeer
}

func (s *dtlsServer) serve() error {
	if s.bio != nil {
		// recvmmsg: up to dtlsIOBatch datagrams a system call.
		msgs := make([]ipv4.Message, dtlsIOBatch)
		for i := range msgs {
			msgs[i].Buffers = [][]byte{make([]byte, dtlsDatagramBuf)}
		}
		for {
			n, err := s.bio.ReadBatch(msgs, 0)
			if err != nil {
				return err
			}
			for _, m := range msgs[:n] {
				s.dispatch(m.Buffers[0][:m.N], m.Addr)
			}
		}
	}
	buf := make([]byte, dtlsDatagramBuf)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		s.dispatch(buf[:n], from)
	}
}

// dispatch hands datagram d from the client at from to its peer, or to
// accept. d is the reader's buffer: whoever keeps it copies it.
func (s *dtlsServer) dispatch(d []byte, from net.Addr) {
	ua, ok := from.(*net.UDPAddr)
	if !ok {
		return
	}
	src := ua.AddrPort()
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	s.mu.Lock()
	p := s.peers[src]
	s.mu.Unlock()
	if p != nil {
		p.deliver(d)
		return
	}
	s.accept(src, from, d)
}

// dtlsIOBatch is how many datagrams one recvmmsg or sendmmsg moves: the
// data loop's writeBatch, so one flush is one system call.
const dtlsIOBatch = writeBatch

// batchIO is the recvmmsg/sendmmsg view of a UDP socket
// (golang.org/x/net: ipv4.PacketConn or ipv6.PacketConn, one Message
// type for both).
type batchIO interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// newBatchIO returns pc's batch view, or nil for a socket that is not a
// *net.UDPConn (the userspace demultiplexer's).
func newBatchIO(pc net.PacketConn) batchIO {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return nil
	}
	if la, ok := uc.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() == nil {
		return ipv6.NewPacketConn(uc) // also a dual-stack [::] socket
	}
	return ipv4.NewPacketConn(uc)
}

// accept starts a handshake for a ClientHello that names a live offer.
// Anything else is dropped before state is made.
func (s *dtlsServer) accept(src netip.AddrPort, from net.Addr, d []byte) {
	id, ok := acdtls.ClientHelloSessionID(d)
	if !ok {
		s.g.dtlsDropped.Add(1)
		return
	}
	t := s.g.dtlsLink(id)
	if t == nil || t.dtlsPending.Add(1) > dtlsPendingPerLink {
		if t != nil {
			t.dtlsPending.Add(-1)
		}
		s.g.dtlsDropped.Add(1)
		return
	}
	p := &dtlsPeer{s: s, addr: src, raddr: from, in: make(chan []byte, dtlsPeerQueue), fastIn: make(chan []byte, dtlsPeerQueue),
		closed: make(chan struct{}), rd: udpmux.NewDeadline()}
	p.deliver(d)
	s.mu.Lock()
	s.peers[src] = p
	s.mu.Unlock()
	s.g.dtlsPeers.Add(1)
	hello := append([]byte(nil), d...) // d is the reader's buffer, reused at once
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.handshake(t, p, hello)
	}()
}

// handshake runs the DTLS handshake for t's offer on p and, on success,
// makes the connection t's DTLS channel (replacing an older one: a new
// ClientHello from a known session replaces its DTLS connection, as in
// ocserv) and reads it until it ends.
func (s *dtlsServer) handshake(t *cstpLink, p *dtlsPeer, hello []byte) {
	g := s.g
	o := t.dtlsOffer
	opts, err := o.params.ServerOptions(o.psk, hello, g.log)
	if err != nil {
		t.dtlsPending.Add(-1)
		p.Close()
		return
	}
	conn, err := dtls.ServerWithOptions(p, p.raddr, opts...)
	if err == nil {
		ctx, cancel := context.WithTimeout(g.ctx, dtlsHandshakeTimeout)
		err = conn.HandshakeContext(ctx)
		cancel()
	}
	t.dtlsPending.Add(-1)
	if err != nil {
		g.log.Debug("dtls handshake failed", "session", t.s.id, "client", p.addr, "err", err)
		if conn != nil {
			_ = conn.Close()
		}
		p.Close()
		return
	}
	ch := &dtlsChannel{conn: conn, peer: p}
	ch.lastRx.Store(time.Now().UnixNano())
	if rec, err := acdtls.NewServerRecord(conn); err == nil {
		ch.rec = rec
	} else if !errors.Is(err, acdtls.ErrSuite) {
		g.log.Debug("dtls: record layer unavailable; pion carries the data", "session", t.s.id, "err", err)
	}
	select {
	case <-t.done: // the CSTP connection ended meanwhile
		ch.close()
		return
	default:
	}
	if old := t.dtls.Swap(ch); old != nil {
		old.close()
	}
	select {
	case <-t.done: // it ended between the check above and the swap
		if t.dtls.CompareAndSwap(ch, nil) {
			ch.close()
		}
		return
	default:
	}
	st, _ := conn.ConnectionState()
	g.log.Info("dtls up", "session", t.s.id, "client", p.addr, "psk", o.params.PSK, "suite", st.CipherSuiteID, "mtu", o.mtu,
		"record_layer", ch.rec != nil)
	g.dtlsUp.Add(1)
	if ch.rec != nil {
		p.fast.Store(true) // from now on data records come to openFast
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			t.openFast(ch)
		}()
	}
	t.readDTLS(ch)
	t.dtls.CompareAndSwap(ch, nil)
	ch.close()
}

func (s *dtlsServer) remove(p *dtlsPeer) {
	s.mu.Lock()
	if s.peers[p.addr] == p {
		delete(s.peers, p.addr)
		s.g.dtlsPeers.Add(-1)
	}
	s.mu.Unlock()
}

func (s *dtlsServer) closeAll() {
	s.mu.Lock()
	ps := make([]*dtlsPeer, 0, len(s.peers))
	for _, p := range s.peers {
		ps = append(ps, p)
	}
	s.mu.Unlock()
	for _, p := range ps {
		p.Close()
	}
}

// readDTLS reads the client's DTLS records through pion until the
// channel ends: all of them, or with the record layer only what it leaves
// to pion (alerts, handshake retransmissions; pion handles those itself).
func (t *cstpLink) readDTLS(ch *dtlsChannel) {
	buf := make([]byte, dtlsReadBuf)
	var out []byte
	for {
		n, err := ch.conn.Read(buf)
		if err != nil {
			return
		}
		t.handleDTLS(ch, buf[:n], nil, &out)
	}
}

// openFast opens the data records the peer's datagrams carry (the record
// layer's reader), until the channel ends. A datagram that is not
// application data of the current epoch goes to pion. Data packets go to
// the stack through one netstack.Batch, flushed whenever no datagram is
// waiting, so a burst's TCP segments are coalesced (GRO) without delay.
func (t *cstpLink) openFast(ch *dtlsChannel) {
	p := ch.peer
	var out []byte
	b := t.g.stack.NewBatch()
	defer b.Flush()
	for {
		var d []byte
		select {
		case d = <-p.fastIn:
		default:
			b.Flush()
			select {
			case d = <-p.fastIn:
			case <-p.closed:
				return
			}
		}
		for rest := d; len(rest) > 0; {
			cur := rest
			msg, next, err := ch.rec.Open(cur)
			switch {
			case err == nil:
				t.handleDTLS(ch, msg, b, &out)
			case errors.Is(err, acdtls.ErrNotAppData):
				p.toPion(cur) // this record on; earlier ones were opened in place
				next = nil
			}
			rest = next
		}
		putDatagram(d)
	}
}

// handleDTLS acts on one AnyConnect DTLS message from the client: DATA
// into the stack, a DPD request answered with the same payload over DTLS
// (openconnect's MTU probe pads it to the tunnel MTU and needs the echo,
// dtls.md §7), the rest only counts as heard. msg may be modified.
func (t *cstpLink) handleDTLS(ch *dtlsChannel, msg []byte, b *netstack.Batch, out *[]byte) {
	typ, payload, err := acdtls.ParseRecord(msg)
	if err != nil {
		return
	}
	ch.lastRx.Store(time.Now().UnixNano())
	t.heard() // the client is alive, whichever path it uses
	switch typ {
	case cstp.Data:
		t.s.dtls.AddIn(len(payload))
		t.s.bytesIn.Add(uint64(len(payload)))
		_ = t.port.InjectBatch(b, payload)
	case cstp.DPDReq:
		msg[0] = byte(cstp.DPDResp)
		_ = ch.send(out, msg)
	}
}

// writeDTLS sends pk over t's DTLS channel if there is one and pk fits
// its MTU; false means send it over CSTP. A failed write retires the
// channel: the session carries on over CSTP.
func (t *cstpLink) writeDTLS(ip []byte, frame []byte) bool {
	ch := t.dtls.Load()
	if ch == nil || len(ip) > t.dtlsOffer.mtu {
		return false
	}
	msg := frame[len(frame)-len(ip)-acdtls.RecordHeaderLen:]
	msg[0] = byte(cstp.Data)
	if ch.rec != nil && ch.peer.s.bio != nil {
		// Sealed now, sent with the rest of the batch at flush (sendmmsg).
		t.dtlsOut = t.dtlsOut.add(ch, msg)
		t.s.dtls.AddOut(len(ip))
		return true
	}
	if err := ch.send(&t.dtlsBuf, msg); err != nil {
		t.g.log.Info("dtls down; continuing over CSTP", "session", t.s.id, "err", err)
		if t.dtls.CompareAndSwap(ch, nil) {
			ch.close()
		}
		return false
	}
	t.s.dtls.AddOut(len(ip))
	return true
}

// probeDTLS runs the DTLS channel's DPD: a request after DPD of silence,
// and the channel retired after 2.5 DPD (the session stays on CSTP).
func (t *cstpLink) probeDTLS() {
	ch := t.dtls.Load()
	if ch == nil {
		return
	}
	silent := time.Since(time.Unix(0, ch.lastRx.Load()))
	switch {
	case silent > deadPeerAfter(t.cfg.DPD):
		t.g.log.Info("dtls dead; continuing over CSTP", "session", t.s.id, "silent", silent.Round(time.Second))
		if t.dtls.CompareAndSwap(ch, nil) {
			ch.close()
		}
	case silent > t.cfg.DPD:
		_ = ch.send(&t.dtlsBuf, []byte{byte(cstp.DPDReq)})
	}
}

// dtlsPeer is one client address's view of the DTLS socket: the
// net.PacketConn pion runs its connection on. Datagrams arrive from the
// server's reader; writes go straight to the socket.
type dtlsPeer struct {
	s     *dtlsServer
	addr  netip.AddrPort
	raddr net.Addr

	in     chan []byte // datagrams for pion (ReadFrom)
	fastIn chan []byte // application-data datagrams for the record layer (openFast)
	fast   atomic.Bool // the record layer runs this peer's channel
	closed chan struct{}
	once   sync.Once

	rd *udpmux.Deadline
}

var dtlsBufs = sync.Pool{New: func() any { b := make([]byte, dtlsDatagramBuf); return &b }}

// deliver queues a copy of datagram d for the peer: application data to
// the record layer once it runs the channel, everything else to pion.
func (p *dtlsPeer) deliver(d []byte) {
	if p.fast.Load() && len(d) > 0 && d[0] == dtlsContentAppData {
		p.queue(p.fastIn, d)
		return
	}
	p.queue(p.in, d)
}

// toPion hands pion a copy of d (a record the record layer leaves to it).
func (p *dtlsPeer) toPion(d []byte) { p.queue(p.in, d) }

// queue puts a pooled copy of d on q; a full queue drops it.
func (p *dtlsPeer) queue(q chan []byte, d []byte) {
	bp := dtlsBufs.Get().(*[]byte)
	b := append((*bp)[:0], d...)
	select {
	case q <- b:
	default:
		dtlsBufs.Put(bp)
	}
}

// dtlsContentAppData is the DTLS content type of application data (RFC
// 6347 §4.1, as in TLS: 23): the first byte of a datagram of data records.
const dtlsContentAppData = 23

// putDatagram returns a delivered datagram's buffer to the pool.
func putDatagram(d []byte) {
	d = d[:cap(d)]
	dtlsBufs.Put(&d)
}

// ReadFrom returns the next datagram from the peer: os.ErrDeadlineExceeded
// (a timeout net.Error) after the read deadline, net.ErrClosed after Close.
func (p *dtlsPeer) ReadFrom(b []byte) (int, net.Addr, error) {
	select { // like a socket, fail once the deadline has passed even if data waits
	case <-p.closed:
		return 0, nil, net.ErrClosed
	case <-p.rd.Expired():
		return 0, nil, os.ErrDeadlineExceeded
	default:
	}
	select {
	case d := <-p.in:
		n := copy(b, d)
		putDatagram(d)
		return n, p.raddr, nil
	case <-p.closed:
		return 0, nil, net.ErrClosed
	case <-p.rd.Expired():
		return 0, nil, os.ErrDeadlineExceeded
	}
}

func (p *dtlsPeer) WriteTo(b []byte, _ net.Addr) (int, error) {
	select {
	case <-p.closed:
		return 0, net.ErrClosed
	default:
	}
	return p.s.pc.WriteTo(b, p.raddr)
}

// Close forgets the peer; its next datagram is a stranger's again.
func (p *dtlsPeer) Close() error {
	p.once.Do(func() {
		close(p.closed)
		p.s.remove(p)
	})
	return nil
}

func (p *dtlsPeer) LocalAddr() net.Addr { return p.s.pc.LocalAddr() }

func (p *dtlsPeer) SetDeadline(t time.Time) error { return p.SetReadDeadline(t) }

func (p *dtlsPeer) SetReadDeadline(t time.Time) error {
	p.rd.Set(t)
	return nil
}

// SetWriteDeadline: writes to a UDP socket do not block for long.
func (p *dtlsPeer) SetWriteDeadline(time.Time) error { return nil }

// dtlsBatch holds a data loop's sealed records until flush: one sendmmsg
// for up to writeBatch packets. Pooled: a link holds one only between a
// DTLS write and the flush after it.
//
// With UDP segmentation offload (UDP_SEGMENT, see dtlsServer.gso), runs
// of equal-sized records, which is what a bulk TCP flow's MSS-sized
// packets seal to, leave as one sendmmsg message each, cut into datagrams
// by the kernel: the per-datagram trip through the kernel's UDP and IP
// output (most of a DTLS download's gateway CPU) is made once per run.
type dtlsBatch struct {
	ch    *dtlsChannel // the channel the records were sealed for
	msgs  []ipv4.Message
	bufs  [][]byte // msgs[i].Buffers = bufs[i : i+1]
	arena []byte   // the records, back to back; never grows (room for writeBatch)

	// segmented sends: runs[k] is one message of records first[k]...
	runs    []ipv4.Message
	runBufs [][]byte
	first   []int
	oob     []byte
}

// dtlsMaxRecord bounds one sealed record: the largest DTLS MTU (a 1500
// path, dtls.md §8), the type byte and the record overhead, with room.
const dtlsMaxRecord = 1600

const (
	// gsoMaxSegments is how many datagrams one segmented send may carry:
	// the kernel's UDP_MAX_SEGMENTS (64 before Linux 6.9, 128 since).
	gsoMaxSegments = 64
	// gsoMaxBytes bounds a segmented send's payload: until the kernel cuts
	// it, it is one UDP datagram, so it must fit an IPv4 total length
	// (65535 − 20 IP − 8 UDP).
	gsoMaxBytes = 65507
)

var dtlsBatches = sync.Pool{New: func() any {
	return &dtlsBatch{
		msgs:    make([]ipv4.Message, 0, writeBatch),
		bufs:    make([][]byte, writeBatch),
		arena:   make([]byte, 0, writeBatch*dtlsMaxRecord),
		runs:    make([]ipv4.Message, 0, writeBatch),
		runBufs: make([][]byte, writeBatch),
		first:   make([]int, 0, writeBatch),
		oob:     make([]byte, 0, writeBatch*udpSegmentSpace),
	}
}}

// add seals msg for ch into the batch (taking one from the pool when b is
// nil) and returns it. The caller flushes before writeBatch records.
func (b *dtlsBatch) add(ch *dtlsChannel, msg []byte) *dtlsBatch {
	if b == nil {
		b = dtlsBatches.Get().(*dtlsBatch)
	}
	if b.ch != nil && b.ch != ch || len(b.msgs) == cap(b.msgs) || cap(b.arena)-len(b.arena) < len(msg)+acdtls.RecordOverhead {
		b.send() // another channel, or full: send what is there first
	}
	b.ch = ch
	off := len(b.arena)
	b.arena = ch.rec.Seal(b.arena, msg)
	i := len(b.msgs)
	b.bufs[i] = b.arena[off:]
	b.msgs = append(b.msgs, ipv4.Message{Buffers: b.bufs[i : i+1], Addr: ch.peer.raddr})
	return b
}

// send writes the batch's records (sendmmsg, repeated until all are out)
// and empties it. An error is the channel's: its caller retires it.
func (b *dtlsBatch) send() error {
	var err error
	ms := b.msgs
	if len(ms) > 1 && b.ch.peer.s.gso.Load() {
		ms = b.sendSegmented()
	}
	for len(ms) > 0 && err == nil {
		var n int
		n, err = b.ch.peer.s.bio.WriteBatch(ms, 0)
		ms = ms[n:]
	}
	clear(b.bufs)
	clear(b.runBufs)
	b.msgs, b.arena, b.ch = b.msgs[:0], b.arena[:0], nil
	return err
}

// sendSegmented sends the batch as runs of equal-sized records, one
// segmented message a run, and returns the records it could not send
// that way: none, or (after an error) the rest, for one datagram each. A
// device that cannot segment (gsoUnsupported) switches segmentation off
// for the socket; any other error (a record over the path MTU, say) is
// left to the plain send to meet again.
func (b *dtlsBatch) sendSegmented() []ipv4.Message {
	s := b.ch.peer.s
	b.planRuns()
	for k := 0; k < len(b.runs); {
		n, err := s.bio.WriteBatch(b.runs[k:], 0)
		k += n
		if err != nil && k < len(b.runs) {
			if gsoUnsupported(err) && s.gso.CompareAndSwap(true, false) {
				s.g.log.Info("dtls: UDP segmentation offload unavailable; one datagram a record", "err", err)
			}
			return b.msgs[b.first[k]:]
		}
	}
	return nil
}

// planRuns cuts the batch into runs: records of one size, the last
// possibly shorter, at most gsoMaxSegments and gsoMaxBytes; one message
// each in b.runs, with a UDP_SEGMENT option when it holds more than one.
func (b *dtlsBatch) planRuns() {
	b.runs, b.first, b.oob = b.runs[:0], b.first[:0], b.oob[:0]
	for i := 0; i < len(b.msgs); {
		size := len(b.bufs[i])
		j, total := i+1, size
		for j < len(b.msgs) && j-i < gsoMaxSegments && len(b.bufs[j]) <= size && total+len(b.bufs[j]) <= gsoMaxBytes {
			total += len(b.bufs[j])
			j++
			if len(b.bufs[j-1]) < size {
				break // only a run's last datagram may be shorter
			}
		}
		k := len(b.runs)
		b.runBufs[k] = b.bufs[i][:total] // records i..j-1 lie back to back in the arena
		m := ipv4.Message{Buffers: b.runBufs[k : k+1], Addr: b.ch.peer.raddr}
		if j-i > 1 {
			off := len(b.oob)
			b.oob = appendUDPSegment(b.oob, size)
			m.OOB = b.oob[off:]
		}
		b.runs = append(b.runs, m)
		b.first = append(b.first, i)
		i = j
	}
}

// flushDTLS sends the data loop's batched DTLS records and returns the
// batch to the pool; a failed send retires the channel (CSTP carries on).
func (t *cstpLink) flushDTLS() {
	b := t.dtlsOut
	if b == nil {
		return
	}
	t.dtlsOut = nil
	ch := b.ch
	if err := b.send(); err != nil && ch != nil {
		t.g.log.Info("dtls down; continuing over CSTP", "session", t.s.id, "err", err)
		if t.dtls.CompareAndSwap(ch, nil) {
			ch.close()
		}
	}
	dtlsBatches.Put(b)
}
