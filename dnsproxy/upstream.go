package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// ErrUpstreamFailed is wrapped by the error of a lookup that no upstream
// server answered.
var ErrUpstreamFailed = errors.New("dnsproxy: no upstream server answered")

// errRefusedByPolicy marks a name that the split policy sends nowhere.
var errRefusedByPolicy = errors.New("dnsproxy: name outside the internal domains and no public resolver")

// UpstreamError is one failed exchange with an upstream server.
type UpstreamError struct {
	Server  string // "ip:port"
	Network string // "udp" or "tcp"
	Err     error
}

func (e *UpstreamError) Error() string {
	return fmt.Sprintf("dnsproxy: upstream %s/%s: %v", e.Server, e.Network, e.Err)
}

func (e *UpstreamError) Unwrap() error { return e.Err }

// errMismatch: the reply does not answer our question (spoofed or stale).
var errMismatch = errors.New("reply does not match the query")

// upstreamReadSize is the UDP read buffer: above the 1232 bytes we
// advertise, to tolerate servers that ignore it (a larger reply is
// truncated by the read and rejected).
const upstreamReadSize = 4096

// upstream is one server and its dead-server memory.
type upstream struct {
	addr      string
	deadUntil atomic.Int64 // server clock (ns); <= now means alive
}

// upstreamSet is an ordered failover list.
type upstreamSet struct {
	kind    string // "corporate" or "public", for logs
	servers []*upstream
}

func newUpstreamSet(kind string, addrs []string) *upstreamSet {
	if len(addrs) == 0 {
		return nil
	}
	set := &upstreamSet{kind: kind}
	for _, a := range addrs {
		set.servers = append(set.servers, &upstream{addr: a})
	}
	return set
}

// order lists live servers in configured order, then dead ones, the one
// that should recover soonest first: with every server dead we still try.
func (set *upstreamSet) order(now int64) []*upstream {
	out := make([]*upstream, 0, len(set.servers))
	var dead []*upstream
	for _, u := range set.servers {
		if u.deadUntil.Load() <= now {
			out = append(out, u)
		} else {
			dead = append(dead, u)
		}
	}
	slices.SortStableFunc(dead, func(a, b *upstream) int {
		return int(a.deadUntil.Load() - b.deadUntil.Load())
	})
	return append(out, dead...)
}

// route returns the upstream set for name under the split policy, nil when
// the name must be refused.
func (s *Server) route(name string) *upstreamSet {
	if s.isInternal(name) {
		return s.corp
	}
	return s.public
}

// isInternal reports whether the lower-case FQDN name is at or under an
// internal domain.
func (s *Server) isInternal(name string) bool {
	for _, d := range s.internal {
		if d == "." || name == d || (strings.HasSuffix(name, d) && name[len(name)-len(d)-1] == '.') {
			return true
		}
	}
	return false
}

// forward resolves one question with set's servers in failover order.
// A reply whose rcode says the server could not answer (SERVFAIL,
// REFUSED, NOTIMP, FORMERR) moves on to the next server and is returned
// only if no server does better.
func (s *Server) forward(ctx context.Context, set *upstreamSet, name string, qtype, qclass uint16, do, cd bool) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.Id = uint16(rand.Uint32()) // math/rand/v2's global source is cryptographically random
	q.RecursionDesired = true
	q.CheckingDisabled = cd
	q.Question = []dns.Question{{Name: name, Qtype: qtype, Qclass: qclass}}
	q.SetEdns0(maxUDPSize, do)
	wire, err := q.Pack()
	if err != nil {
		return nil, err
	}
	var last *dns.Msg
	var errs []error
	for _, u := range set.order(s.now()) {
		if ctx.Err() != nil {
			break
		}
		actx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		resp, err := s.exchange(actx, u, wire, q)
		cancel()
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() == nil { // our attempt's fault, not the caller's deadline
				s.markDead(set, u, err)
			}
			continue
		}
		u.deadUntil.Store(0)
		switch resp.Rcode {
		case dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeNotImplemented, dns.RcodeFormatError:
			last = resp
			continue
		}
		return resp, nil
	}
	if last != nil {
		return last, nil
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("%w (%s %s %s): %w", ErrUpstreamFailed, set.kind, name, dns.TypeToString[qtype], errors.Join(errs...))
}

func (s *Server) markDead(set *upstreamSet, u *upstream, err error) {
	now := s.now()
	if u.deadUntil.Swap(now+int64(s.cfg.DeadTime)) <= now && s.cfg.Logger != nil {
		s.cfg.Logger.Warn("dnsproxy: upstream not answering, skipping it for a while",
			"kind", set.kind, "server", u.addr, "for", s.cfg.DeadTime, "err", err)
	}
}

// exchange asks u over UDP and, if the reply is truncated, over TCP.
func (s *Server) exchange(ctx context.Context, u *upstream, wire []byte, q *dns.Msg) (*dns.Msg, error) {
	resp, truncated, err := s.attempt(ctx, u, "udp", wire, q)
	if err != nil || !truncated {
		return resp, err
	}
	resp, _, err = s.attempt(ctx, u, "tcp", wire, q)
	return resp, err
}

// attempt performs one exchange and reports it to stats and metrics.
func (s *Server) attempt(ctx context.Context, u *upstream, network string, wire []byte, q *dns.Msg) (*dns.Msg, bool, error) {
	start := time.Now()
	s.stats.upstreamQueries.Add(1)
	resp, truncated, err := s.roundTrip(ctx, u.addr, network, wire, q)
	if err != nil {
		s.stats.upstreamFailures.Add(1)
		err = &UpstreamError{Server: u.addr, Network: network, Err: err}
		if s.cfg.Logger != nil {
			s.cfg.Logger.Debug("dnsproxy: upstream exchange failed", "err", err)
		}
	}
	if s.cfg.Metrics != nil {
		s.cfg.Metrics.Upstream(u.addr, network, time.Since(start), err)
	}
	return resp, truncated, err
}

// readBufs recycles UDP read buffers across upstream exchanges.
var readBufs = sync.Pool{New: func() any { b := make([]byte, upstreamReadSize); return &b }}

// roundTrip sends wire to addr and returns the matching reply. Over UDP,
// replies that do not match the query's ID and question are ignored (a
// spoofing attempt or a late reply) and reading goes on until the deadline;
// truncated reports a UDP reply with TC set.
func (s *Server) roundTrip(ctx context.Context, addr, network string, wire []byte, q *dns.Msg) (resp *dns.Msg, truncated bool, err error) {
	conn, err := s.cfg.Dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, false, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// Cancellation (server Close) unblocks I/O at once.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if network == "tcp" {
		msg := make([]byte, 2+len(wire))
		binary.BigEndian.PutUint16(msg, uint16(len(wire)))
		copy(msg[2:], wire)
		if _, err := conn.Write(msg); err != nil {
			return nil, false, ctxErr(ctx, err)
		}
		var l [2]byte
		if _, err := io.ReadFull(conn, l[:]); err != nil {
			return nil, false, ctxErr(ctx, err)
		}
		buf := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(conn, buf); err != nil {
			return nil, false, ctxErr(ctx, err)
		}
		resp, tc, err := checkReply(buf, q)
		if err == nil && tc {
			err = errors.New("truncated reply over TCP")
		}
		return resp, false, err
	}

	if _, err := conn.Write(wire); err != nil {
		return nil, false, ctxErr(ctx, err)
	}
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := *bp
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return nil, false, ctxErr(ctx, err)
		}
		resp, tc, err := checkReply(buf[:n], q)
		if errors.Is(err, errMismatch) {
			continue
		}
		if tc {
			return nil, true, nil
		}
		return resp, false, err
	}
}

// ctxErr prefers the context's reason over the I/O error it caused.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return context.DeadlineExceeded
	}
	return err
}

// checkReply parses a reply and checks that it answers q. A reply with
// TC set is reported as truncated (and may not parse: servers cut it
// anywhere).
func checkReply(b []byte, q *dns.Msg) (*dns.Msg, bool, error) {
	if len(b) < headerLen || binary.BigEndian.Uint16(b) != q.Id || b[2]&flagQR == 0 {
		return nil, false, errMismatch
	}
	if b[2]&flagTC != 0 {
		return nil, true, nil
	}
	resp := new(dns.Msg)
	if err := resp.Unpack(b); err != nil {
		return nil, false, fmt.Errorf("bad reply: %w", err)
	}
	if len(resp.Question) == 0 && resp.Rcode != dns.RcodeSuccess {
		return resp, false, nil // servers may drop the question from error replies
	}
	if len(resp.Question) != 1 || resp.Question[0].Qtype != q.Question[0].Qtype ||
		resp.Question[0].Qclass != q.Question[0].Qclass || !strings.EqualFold(resp.Question[0].Name, q.Question[0].Name) {
		return nil, false, errMismatch
	}
	return resp, false, nil
}
