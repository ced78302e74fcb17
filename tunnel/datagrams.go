package tunnel

import "sync"

// datagramBacklog is how many received packets may wait between the QUIC
// reader and the stack. quic-go drops datagrams beyond its own 128-deep
// receive queue; a burst the stack cannot take at once would otherwise be
// lost (and TCP inside would back off), so the reader hands packets to a
// deeper queue and keeps draining QUIC while the stack catches up.
const datagramBacklog = 1024

var datagramBufs = sync.Pool{New: func() any { b := make([]byte, quicReadBuf); return &b }}

// pumpDatagrams reads packets with read and delivers them with deliver,
// through a backlog of datagramBacklog pooled buffers. It returns read's
// error once the backlog is delivered.
func pumpDatagrams(read func([]byte) (int, error), deliver func([]byte)) error {
	type pkt struct {
		b *[]byte
		n int
	}
	q := make(chan pkt, datagramBacklog)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for p := range q {
			deliver((*p.b)[:p.n])
			datagramBufs.Put(p.b)
		}
	}()
	var err error
	for {
		b := datagramBufs.Get().(*[]byte)
		var n int
		if n, err = read(*b); err != nil {
			datagramBufs.Put(b)
			break
		}
		q <- pkt{b, n}
	}
	close(q)
	<-done
	return err
}
