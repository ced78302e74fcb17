package udpmux

import (
	"sync"
	"time"
)

// Deadline is a resettable deadline whose expiry is a closed channel, so a
// blocked select can wait on it: what a channel-fed net.PacketConn (the
// fallback's views, the DTLS server's per-peer connections) needs for
// SetReadDeadline. The zero time means no deadline. Safe for concurrent
// use.
type Deadline struct {
	mu    sync.Mutex
	timer *time.Timer
	fired chan struct{} // closed once the deadline has passed
}

// NewDeadline returns a Deadline that is not set.
func NewDeadline() *Deadline {
	return &Deadline{fired: make(chan struct{})}
}

// Set arms the deadline for t (zero: none); a time already past fires it.
func (d *Deadline) Set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.fired // the timer has fired: wait until its func closed fired
	}
	d.timer = nil
	passed := isDone(d.fired)
	if t.IsZero() {
		if passed {
			d.fired = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if passed {
			d.fired = make(chan struct{})
		}
		fired := d.fired
		d.timer = time.AfterFunc(dur, func() { close(fired) })
		return
	}
	if !passed {
		close(d.fired)
	}
}

// Expired returns a channel closed once the deadline has passed.
func (d *Deadline) Expired() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fired
}
