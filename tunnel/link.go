package tunnel

// The per-connection data loop (ocserv's worker): one loop for every
// transport, driving a wire adapter. CSTP (cstp.go) and CONNECT-IP
// (connectip.go) are the adapters; DTLS rides inside the CSTP one.

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/underpass/underpass/netstack"
)

const (
	// writeBatch is how many queued packets one flush may carry: enough to
	// fill several batchConn buffers without starving control frames.
	writeBatch = 64
	// ctrlQueue holds control frames (DPD responses) waiting for the
	// writer; a client flooding DPD requests only loses the excess replies.
	ctrlQueue = 16
)

// link is one live transport connection of a session.
type link interface {
	base() *linkBase
	wire
}

// wire is what the data loop needs from a transport protocol.
type wire interface {
	// read feeds the client's packets into the session's port until the
	// connection ends, and says why: EndConnLost (with the error, nil for
	// an orderly close) or EndLogoff.
	read() (EndReason, error)
	// writePacket sends, or queues until flush, one packet for the client;
	// it releases pk.
	writePacket(pk *netstack.Packet) error
	// writeControl sends, or queues until flush, a control frame queued on
	// linkBase.ctrl.
	writeControl(f []byte) error
	flush() error
	// probe runs every DPD/2 with the time since the client was last
	// heard from; it may send a liveness probe, and returns EndDeadPeer
	// when the peer is gone. Transports with their own liveness (QUIC)
	// return endNone.
	probe(silent time.Duration) (EndReason, error)
	// goodbye tells the client the connection ends for r, as far as the
	// protocol can say it: stop (r.tellsClientToStop) or reconnect.
	goodbye(r EndReason)
	// abort unblocks read and every write at once.
	abort()
}

// linkBase is what every transport connection shares: its session, its
// port on the stack, its lifecycle and its telemetry.
type linkBase struct {
	g         *Gateway
	cfg       *Config // the configuration this connection started with
	s         *session
	port      *netstack.Port // the session's; set by register
	transport string         // "tls", "dtls" or "quic", for telemetry
	// mtu is the largest IP packet this connection carries to the client,
	// set on the port while it drains it (netstack.Port.SetMTU: bigger
	// ones are fragmented or refused as a router would); 0 is the stack's
	// MTU (CSTP carries any packet the stack sends, and takes what DTLS
	// cannot).
	mtu int

	ctrl chan []byte // control frames for the writer; nil without any

	done       chan struct{} // closed by stopWith
	finished   chan struct{} // closed when the connection has ended and cleaned up
	once       sync.Once
	stopReason atomic.Uint32 // an EndReason, set by stopWith before done closes

	lastRx atomic.Int64 // unix nanos of the last message from the client

	clientAddr, serverAddr netip.AddrPort // for telemetry
	start                  time.Time
	in0, out0              uint64 // session byte counters when this connection began
}

func (b *linkBase) base() *linkBase { return b }

// stopWith asks the connection to end for r; its data loop tells the
// client (goodbye) and cleans up. The first reason wins.
func (b *linkBase) stopWith(r EndReason) {
	b.once.Do(func() {
		b.stopReason.Store(uint32(r))
		close(b.done)
	})
}

// heard records that the client sent something (any frame counts for DPD).
func (b *linkBase) heard() { b.lastRx.Store(time.Now().UnixNano()) }

// run is the data loop of l: it writes the session's packets to the
// client, runs the connection's timers and returns when the connection
// has ended and l is unregistered.
// readerVerdictWait bounds how long a failed write waits for the reader's
// reason (see run): the reader of a closed connection returns as soon as it
// is scheduled; 100 ms covers a loaded machine and delays only the end of
// a connection that is gone anyway.
const readerVerdictWait = 100 * time.Millisecond

func (b *linkBase) run(l link) {
	b.heard()
	readerDone := make(chan error, 1)
	var readReason atomic.Uint32
	go func() {
		r, err := l.read()
		readReason.Store(uint32(r))
		readerDone <- err
	}()
	t := newLinkTimers(b)
	defer t.stop()
	var (
		reason EndReason
		detail error
		pkts   = b.port.Packets()
	)
loop:
	for {
		var err error
		select {
		case pk, ok := <-pkts:
			if !ok { // the session ended under us
				reason = EndConnLost
				break loop
			}
			err = writeBatchFrom(pkts, pk, l.writePacket)
			if err == nil {
				err = l.flush()
			}
		case f := <-b.ctrl:
			err = l.writeControl(f)
			if err == nil {
				err = l.flush()
			}
		case detail = <-readerDone:
			readerDone <- detail // for the wait below
			reason = EndReason(readReason.Load())
			break loop
		case now := <-t.tick.C:
			if reason, err = t.check(l, now); reason != endNone {
				break loop
			}
		case <-t.expiry.C:
			reason = EndSessionTimeout
			break loop
		case <-b.done:
			reason = EndReason(b.stopReason.Load())
			break loop
		}
		if err != nil {
			reason, detail = EndConnLost, err
			// A client that logs off sends DISCONNECT and closes at once;
			// a write of ours that races the close fails while the
			// DISCONNECT still waits in the reader's buffer. The reader
			// sees it, or the closed connection, within moments: its
			// verdict wins, or a logoff would pass for a lost connection
			// and the session linger for ReconnectGrace.
			select {
			case rerr := <-readerDone:
				readerDone <- rerr // for the wait below
				if r := EndReason(readReason.Load()); r == EndLogoff {
					reason, detail = r, nil
				}
			case <-time.After(readerVerdictWait):
			}
			break
		}
	}
	if reason != EndConnLost && reason != EndDeadPeer {
		l.goodbye(reason)
	}
	l.abort()
	<-readerDone
	b.g.unregister(l, reason, detail)
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
