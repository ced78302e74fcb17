package loadgen

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// echoBuffer is each echo connection's copy buffer: a few segments per
// read is enough for the bulk flows, and small enough for tens of
// thousands of held connections.
const echoBuffer = 16 << 10

// Accept backoff after a temporary failure (out of descriptors), as
// net/http's server does: short at first, so flows that free descriptors
// are served again soon, capped so a full table does not spin.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// ServeEcho echoes every connection l accepts (what it receives, until it
// closes) until ctx ends; then it closes l and every connection and
// returns. It is the flows' target: run it on a host the gateway reaches
// (`underpass loadtest -echo ADDR`).
//
// Each connection holds one descriptor: the copy goes through a buffer,
// not splice(2) (io.Copy between two sockets splices through a pipe,
// three descriptors per connection while it waits). When accept fails
// for lack of descriptors, it logs to log (nil: silent), waits and
// tries again.
func ServeEcho(ctx context.Context, l net.Listener, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := make(map[net.Conn]struct{})
	stop := context.AfterFunc(ctx, func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	defer wg.Wait()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !errors.Is(err, syscall.EMFILE) && !errors.Is(err, syscall.ENFILE) {
				return err
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			mu.Lock()
			open := len(conns)
			mu.Unlock()
			log.Warn("echo: accept failed; retrying", "err", err, "in", backoff, "connections", open)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			continue
		}
		backoff = 0
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			continue
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, echoBuffer)
			_, _ = io.CopyBuffer(onlyWriter{c}, onlyReader{c}, buf)
			c.Close()
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}()
	}
}

// onlyReader and onlyWriter hide a connection's ReadFrom and WriteTo, so
// io.CopyBuffer uses the buffer (see ServeEcho).
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }
