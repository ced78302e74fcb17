package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// patternLen is the length of the byte pattern flows send: 64 KiB of
// pseudo-random bytes, so a misplaced or repeated segment never matches
// by accident; each flow starts at its own offset.
const patternLen = 64 << 10

// pattern is the bytes flows send, fixed so any two runs send the same.
var pattern = func() []byte {
	b := make([]byte, patternLen)
	r := rand.NewChaCha8([32]byte{'u', 'n', 'd', 'e', 'r', 'p', 'a', 's', 's'})
	_, _ = r.Read(b)
	return b
}()

// patternAt returns the pattern's bytes from off, wrapping, up to n.
func patternAt(off int64, n int) []byte {
	off %= patternLen
	return pattern[off:min(int64(patternLen), off+int64(n))]
}

// flowOffset is where flow id starts in the pattern: a prime stride, so
// neighbouring flows never send the same bytes at the same position.
func flowOffset(id int) int64 { return int64(id) * 7919 % patternLen }

// lostError is an echo that did not come back byte for byte.
type lostError struct {
	lost int64 // bytes missing or different, from the first difference on
	err  error // the read error, or nil for a difference
}

func (e *lostError) Error() string {
	if e.err != nil {
		return fmt.Sprintf("%d bytes not echoed: %v", e.lost, e.err)
	}
	return fmt.Sprintf("echo differs: %d bytes from the first difference on", e.lost)
}

func (e *lostError) Unwrap() error { return e.err }

// echo sends n bytes of flow id's pattern on c while reading the echo,
// and checks that exactly those bytes come back. It returns the bytes
// checked. ctx ends it (the connection's deadline is set).
func echo(ctx context.Context, c net.Conn, id int, n int64) (int64, error) {
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	off := flowOffset(id)
	werr := make(chan error, 1)
	go func() {
		var sent int64
		for sent < n {
			p := patternAt(off+sent, int(min(n-sent, patternLen)))
			if _, err := c.Write(p); err != nil {
				werr <- err
				return
			}
			sent += int64(len(p))
		}
		werr <- nil
	}()
	got, rerr := readEcho(c, off, n)
	if rerr != nil {
		_ = c.SetDeadline(time.Now()) // unblock the writer
	}
	if err := <-werr; err != nil && rerr == nil {
		rerr = &lostError{lost: n - got, err: err}
	}
	if rerr == nil {
		_ = c.SetDeadline(time.Time{})
	}
	return got, rerr
}

// readEcho reads n bytes from c and compares them with the pattern from
// off; it returns how many matched before the first difference or error.
func readEcho(c net.Conn, off, n int64) (int64, error) {
	buf := make([]byte, min(n, 32<<10)) // 32 KiB: a few TLS records' worth per read
	var got int64
	for got < n {
		k, err := c.Read(buf[:min(int64(len(buf)), n-got)])
		for i := 0; i < k; {
			want := patternAt(off+got, k-i)
			have := buf[i : i+len(want)]
			if !bytes.Equal(have, want) {
				for have[0] == want[0] { // find the first difference
					have, want = have[1:], want[1:]
					got++
				}
				return got, &lostError{lost: n - got}
			}
			i += len(want)
			got += int64(len(want))
		}
		if err != nil && got < n {
			return got, &lostError{lost: n - got, err: err}
		}
	}
	return got, nil
}

// isReset reports whether err is a refused or reset flow. The tunnel's
// stack reports these as text (gVisor's tcpip errors), so the text is
// matched.
func isReset(err error) bool {
	s := err.Error()
	return strings.Contains(s, "reset") || strings.Contains(s, "refused")
}

// countFlow files a flow's failure: the bytes it lost, and the flow under
// reset or failed, unless the run's end (ctx) cut it short. It returns err.
func (r *run) countFlow(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return err
	}
	var le *lostError
	if errors.As(err, &le) {
		r.errs.lost.Add(le.lost)
	}
	if isReset(err) {
		r.errs.reset.Add(1)
	} else {
		r.errs.flowFailed.Add(1)
	}
	return err
}

// carriers are the run's sessions that carry flows.
func (r *run) carriers() []flowDialer {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []flowDialer
	for _, s := range r.sessions {
		if f, ok := s.(flowDialer); ok {
			out = append(out, f)
		}
	}
	return out
}

// openFlows opens cfg.Flows flows on every session, echoes FlowBytes on
// each, and holds the ones that came back whole. It returns how many it
// holds.
func (r *run) openFlows(ctx context.Context) int {
	ss := r.carriers()
	start := time.Now()
	fanOut(ctx, len(ss)*r.cfg.Flows, r.cfg.Concurrency, nil, func(i int) {
		fctx, cancel := context.WithTimeout(ctx, r.cfg.SetupTimeout)
		defer cancel()
		c, err := ss[i/r.cfg.Flows].dial(fctx, r.cfg.Target)
		if err != nil {
			r.log.Debug("flow dial failed", "err", r.countFlow(ctx, err))
			return
		}
		if _, err := echo(fctx, c, i, int64(r.cfg.FlowBytes)); err != nil {
			c.Close()
			r.log.Debug("flow echo failed", "err", r.countFlow(ctx, err))
			return
		}
		r.mu.Lock()
		r.flows = append(r.flows, c)
		r.mu.Unlock()
	})
	r.mu.Lock()
	n := len(r.flows)
	r.mu.Unlock()
	r.log.Info("flows open", "flows", n, "in", time.Since(start).Round(time.Millisecond))
	return n
}

// recheckFlows echoes FlowBytes once more on every held flow (after the
// reconnect storm: flows must survive their session's reconnect). A flow
// that fails is counted and dropped from the held ones.
func (r *run) recheckFlows(ctx context.Context) {
	r.mu.Lock()
	flows := r.flows
	r.flows = nil
	r.mu.Unlock()
	var kept sync.Mutex
	var held []net.Conn
	keep := func(c net.Conn) {
		kept.Lock()
		held = append(held, c)
		kept.Unlock()
	}
	started := fanOut(ctx, len(flows), r.cfg.Concurrency, nil, func(i int) {
		fctx, cancel := context.WithTimeout(ctx, r.cfg.SetupTimeout)
		defer cancel()
		if _, err := echo(fctx, flows[i], 2<<20+i, int64(r.cfg.FlowBytes)); err != nil {
			flows[i].Close()
			r.log.Debug("held flow failed after the storm", "err", r.countFlow(ctx, err))
			return
		}
		keep(flows[i])
	})
	held = append(held, flows[started:]...) // not checked (the run ended): still held, closed by closeAll
	r.mu.Lock()
	r.flows = append(r.flows, held...)
	r.mu.Unlock()
}

// bulk runs cfg.BulkFlows flows at once, spread over the sessions, each
// echoing BulkBytes; it returns the bytes that came back intact and the
// time from the first dial to the last byte.
func (r *run) bulk(ctx context.Context) (int64, time.Duration) {
	ss := r.carriers()
	if len(ss) == 0 {
		return 0, 0
	}
	var wg sync.WaitGroup
	var total atomic.Int64
	start := time.Now()
	for i := range r.cfg.BulkFlows {
		s := ss[i%len(ss)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := s.dial(ctx, r.cfg.Target)
			if err != nil {
				r.log.Debug("bulk flow dial failed", "err", r.countFlow(ctx, err))
				return
			}
			defer c.Close()
			n, err := echo(ctx, c, 1<<20+i, r.cfg.BulkBytes)
			total.Add(n)
			if err != nil {
				r.log.Debug("bulk flow failed", "err", r.countFlow(ctx, err))
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	r.log.Info("bulk done", "bytes", total.Load(), "in", d.Round(time.Millisecond))
	return total.Load(), d
}
