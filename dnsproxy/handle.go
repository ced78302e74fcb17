package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime/debug"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// anyTTL is the TTL of the RFC 8482 HINFO answer to ANY queries; RFC 8482
// §4.2 suggests a long TTL so clients do not repeat the query.
const anyTTL = 3600

// errServFail asks the caller to answer SERVFAIL.
var errServFail = errors.New("dnsproxy: no usable answer")

// outcome describes how a query was answered, for stats, metrics and the
// access log.
type outcome struct {
	name     string
	qtype    uint16
	rcode    int
	cacheHit bool
}

// Handle answers one DNS message received over transport t from client
// (which may be the zero AddrPort) and returns the wire-format response,
// or nil when the message must be dropped. It never panics. ctx bounds the
// wait for upstream servers (and QueryTimeout always applies). Handle is
// the transport-free entry point for the gateway's userspace stack; the
// caller bounds its concurrency.
func (s *Server) Handle(ctx context.Context, client netip.AddrPort, t Transport, req []byte) []byte {
	var q wireQuery
	if out, ok := s.answerFast(nil, client, t, req, &q); ok {
		return out
	}
	return s.answerSlow(ctx, nil, client, t, req)
}

// answerFast answers from the cache without allocating, or reports false.
func (s *Server) answerFast(dst []byte, client netip.AddrPort, t Transport, req []byte, q *wireQuery) ([]byte, bool) {
	observe := s.cfg.Metrics != nil || s.cfg.AccessLog != nil
	var start time.Time
	if observe {
		start = time.Now()
	}
	out, ok := s.fastAnswer(dst, req, t, q)
	if !ok {
		return dst, false
	}
	s.stats.queries.Add(1)
	s.stats.cacheHits.Add(1)
	if observe {
		o := outcome{qtype: q.qtype, rcode: int(out[len(dst)+3] & 0x0f), cacheHit: true}
		if s.cfg.AccessLog != nil {
			o.name, _, _ = dns.UnpackDomainName(req, headerLen)
		}
		s.observe(client, t, &o, time.Since(start))
	}
	return out, true
}

// answerSlow handles every query the fast path did not: parsing,
// validation, cache, upstream lookups, search expansion, truncation.
func (s *Server) answerSlow(ctx context.Context, dst []byte, client netip.AddrPort, t Transport, req []byte) []byte {
	start := time.Now()
	s.stats.queries.Add(1)
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel) // server Close aborts the query
	defer stop()

	o := outcome{rcode: RcodeDropped}
	before := len(dst)
	out := s.process(ctx, dst, t, req, &o)
	if len(out) == before {
		out = nil
		if dst != nil {
			out = dst
		}
		o.rcode = RcodeDropped
	}
	s.observe(client, t, &o, time.Since(start))
	return out
}

// observe updates stats and calls the metrics and access-log hooks.
func (s *Server) observe(client netip.AddrPort, t Transport, o *outcome, d time.Duration) {
	switch o.rcode {
	case RcodeDropped:
		s.stats.dropped.Add(1)
	case dns.RcodeFormatError:
		s.stats.formErr.Add(1)
	case dns.RcodeServerFailure:
		s.stats.servFail.Add(1)
	case dns.RcodeRefused:
		s.stats.refused.Add(1)
	}
	if s.cfg.Metrics != nil {
		s.cfg.Metrics.Query(t, o.rcode, o.cacheHit, d)
	}
	if s.cfg.AccessLog != nil {
		s.cfg.AccessLog(AccessEntry{Client: client, Transport: t, Name: o.name, Type: o.qtype,
			Rcode: o.rcode, CacheHit: o.cacheHit, Duration: d})
	}
}

// process answers req, appending the response to dst (nothing appended
// means drop). Internal panics are recovered and counted: one bad
// message must never take the gateway down.
func (s *Server) process(ctx context.Context, dst []byte, t Transport, req []byte, o *outcome) (out []byte) {
	defer func() {
		if r := recover(); r != nil {
			s.stats.panics.Add(1)
			if s.cfg.Logger != nil {
				s.cfg.Logger.Error("dnsproxy: internal error (bug), query dropped",
					"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			}
			out = dst
		}
	}()
	if len(req) < headerLen || req[2]&flagQR != 0 {
		return dst // no header to answer, or a response: never answer those (loops, reflection)
	}
	m := new(dns.Msg)
	if err := validateWire(req); err != nil {
		o.rcode = dns.RcodeFormatError
		return appendHeaderReply(dst, binary.BigEndian.Uint16(req), req[2], dns.RcodeFormatError)
	}
	if err := m.Unpack(req); err != nil {
		o.rcode = dns.RcodeFormatError
		return appendHeaderReply(dst, binary.BigEndian.Uint16(req), req[2], dns.RcodeFormatError)
	}
	if len(m.Question) == 1 {
		o.name, o.qtype = m.Question[0].Name, m.Question[0].Qtype
	}
	resp, hit := s.resolve(ctx, m)
	o.cacheHit = hit
	o.rcode = resp.Rcode
	return s.reply(dst, m, resp, t)
}

// resolve computes the answer to a parsed query; the result is owned by
// the caller. hit reports an answer made without upstream traffic.
func (s *Server) resolve(ctx context.Context, m *dns.Msg) (resp *dns.Msg, hit bool) {
	fail := func(rcode int) (*dns.Msg, bool) {
		r := new(dns.Msg)
		r.Rcode = rcode
		return r, false
	}
	if m.Opcode != dns.OpcodeQuery {
		return fail(dns.RcodeNotImplemented)
	}
	if len(m.Question) != 1 {
		return fail(dns.RcodeFormatError) // RFC 9619: exactly one question
	}
	nopt := 0
	for _, rr := range m.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			nopt++
		}
	}
	opt := m.IsEdns0()
	switch {
	case nopt > 1:
		return fail(dns.RcodeFormatError) // RFC 6891 §6.1.1
	case opt != nil && opt.Version() != 0:
		return fail(dns.RcodeBadVers) // RFC 6891 §6.1.3
	}
	q := m.Question[0]
	if q.Qclass != dns.ClassINET {
		return fail(dns.RcodeRefused) // CHAOS, HESIOD, ANY class: nothing to proxy
	}
	switch q.Qtype {
	case 0, dns.TypeOPT, dns.TypeTKEY, dns.TypeTSIG:
		return fail(dns.RcodeFormatError) // not valid question types (RFC 6895 §3.1)
	case dns.TypeAXFR, dns.TypeIXFR:
		return fail(dns.RcodeRefused) // zone transfers are not proxied
	case dns.TypeMAILA, dns.TypeMAILB:
		return fail(dns.RcodeNotImplemented)
	}
	do := opt != nil && opt.Do()
	name := strings.ToLower(q.Name)
	labels := dns.CountLabel(name)
	expand := len(s.cfg.Search) > 0 && labels >= 1 && labels-1 < s.cfg.NDots
	if !expand && s.route(name) == nil {
		return fail(dns.RcodeRefused)
	}
	if q.Qtype == dns.TypeANY {
		r := new(dns.Msg)
		r.Answer = []dns.RR{&dns.HINFO{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeHINFO,
			Class: dns.ClassINET, Ttl: anyTTL}, Cpu: "RFC8482"}}
		return r, true
	}
	var err error
	if expand {
		resp, hit, err = s.expand(ctx, name, q.Qtype, do, m.CheckingDisabled)
	} else {
		resp, hit, err = s.lookup(ctx, s.route(name), name, q.Qtype, do, m.CheckingDisabled)
		if resp != nil {
			resp = resp.Copy()
		}
	}
	if err != nil {
		if s.cfg.Logger != nil && !errors.Is(err, errServFail) {
			s.cfg.Logger.Debug("dnsproxy: lookup failed", "name", name, "type", dns.TypeToString[q.Qtype], "err", err)
		}
		return fail(dns.RcodeServerFailure)
	}
	return resp, hit
}

// expand resolves a short name with the search suffixes, then as given;
// see the package doc for the answer's shape.
func (s *Server) expand(ctx context.Context, name string, qtype uint16, do, cd bool) (*dns.Msg, bool, error) {
	var kb [maxKeyLen]byte
	key, ok := makeKey(kb[:0], name, qtype, do, cd)
	if !ok {
		return nil, false, errServFail
	}
	if m := s.cacheGet(key, cd); m != nil {
		return m, true, nil
	}
	sawFail, allHit := false, true
	for _, suffix := range s.cfg.Search {
		qual := name + suffix
		if _, ok := dns.IsDomainName(qual); !ok || len(qual) > 254 { // 254: presentation limit of a 255-byte wire name
			continue
		}
		r, hit, err := s.lookup(ctx, s.corp, qual, qtype, do, cd)
		allHit = allHit && hit
		if err != nil {
			if ctx.Err() != nil {
				return nil, false, err
			}
			sawFail = true
			continue
		}
		switch r.Rcode {
		case dns.RcodeSuccess:
			return s.store(string(key), name, qtype, synthesize(name, qual, qtype, r)), allHit, nil
		case dns.RcodeNameError:
			continue
		default:
			sawFail = true
		}
	}
	if set := s.route(name); set != nil {
		r, hit, err := s.lookup(ctx, set, name, qtype, do, cd)
		allHit = allHit && hit
		switch {
		case err != nil:
			return nil, false, err
		case r.Rcode == dns.RcodeSuccess:
			return r.Copy(), allHit, nil
		case r.Rcode == dns.RcodeNameError && !sawFail:
			return r.Copy(), allHit, nil
		}
		sawFail = true
	}
	if sawFail {
		return nil, false, errServFail
	}
	r := new(dns.Msg)
	r.Rcode = dns.RcodeNameError
	return r, allHit, nil
}

// synthesize builds the answer for short name asked from the answer r for
// the qualified name qual: a CNAME asked -> qual, then r's records.
func synthesize(asked, qual string, qtype uint16, r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.Rcode = r.Rcode
	ttl := uint32(0)
	first := true
	note := func(t uint32) {
		if first || t < ttl {
			ttl, first = t, false
		}
	}
	for _, rr := range r.Answer {
		note(rr.Header().Ttl)
	}
	for _, rr := range r.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			note(min(soa.Hdr.Ttl, soa.Minttl))
		}
	}
	m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: asked, Rrtype: dns.TypeCNAME,
		Class: dns.ClassINET, Ttl: ttl}, Target: qual})
	for _, rr := range r.Answer {
		m.Answer = append(m.Answer, dns.Copy(rr))
	}
	for _, rr := range r.Ns {
		m.Ns = append(m.Ns, dns.Copy(rr))
	}
	for _, rr := range r.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			m.Extra = append(m.Extra, dns.Copy(rr))
		}
	}
	return m
}

// makeKey appends the cache key of a question to dst: the lower-case wire
// name, type, class IN and the DO/CD flags.
func makeKey(dst []byte, name string, qtype uint16, do, cd bool) ([]byte, bool) {
	var wire [256]byte // 255-byte name plus slack for the packer's bounds check
	n, err := dns.PackDomainName(name, wire[:], 0, nil, false)
	if err != nil || n > 255 {
		return nil, false
	}
	for i, b := range wire[:n] {
		if 'A' <= b && b <= 'Z' {
			wire[i] = b + 'a' - 'A'
		}
	}
	dst = append(dst, wire[:n]...)
	return appendKeyTail(dst, qtype, dns.ClassINET, do, cd), true
}

// cacheGet returns a parsed copy of the cached answer for key, or nil.
func (s *Server) cacheGet(key []byte, cd bool) *dns.Msg {
	if s.cache == nil {
		return nil
	}
	now := s.now()
	e := s.cache.get(key, now)
	if e == nil {
		return nil
	}
	nameLen := len(key) - 5 // the key's tail is type, class, flags
	wire := e.render(nil, 0, true, cd, key[:nameLen], false, false, now)
	m := new(dns.Msg)
	if err := m.Unpack(wire); err != nil {
		return nil
	}
	s.stats.cacheHits.Add(1)
	return m
}

// lookup resolves one question through the cache, in-flight
// deduplication and the upstream set. The result is shared: callers must
// not modify it.
func (s *Server) lookup(ctx context.Context, set *upstreamSet, name string, qtype uint16, do, cd bool) (*dns.Msg, bool, error) {
	if set == nil {
		return nil, false, errRefusedByPolicy
	}
	var kb [maxKeyLen]byte
	key, ok := makeKey(kb[:0], name, qtype, do, cd)
	if !ok {
		return nil, false, errServFail
	}
	if m := s.cacheGet(key, cd); m != nil {
		return m, true, nil
	}
	s.stats.cacheMisses.Add(1)
	k := string(key)
	m, err := s.flight(ctx, k, func(ctx context.Context) (*dns.Msg, error) {
		// A flight for this key may have finished, and cached its answer,
		// between the cache check above and this flight's start: look
		// again before asking upstream (the miss above becomes a hit).
		if m := s.cacheGet(key, cd); m != nil {
			s.stats.cacheMisses.Add(^uint64(0))
			return m, nil
		}
		resp, err := s.forward(ctx, set, name, qtype, dns.ClassINET, do, cd)
		if err != nil {
			return nil, err
		}
		return s.store(k, name, qtype, resp), nil
	})
	return m, false, err
}

// store caches a copy of resp under key when its rcode and TTLs allow and
// returns the copy, normalized as cached (question, flags, clamped TTLs).
func (s *Server) store(key, name string, qtype uint16, resp *dns.Msg) *dns.Msg {
	m := resp.Copy()
	m.Id = 0
	m.Response, m.Authoritative, m.RecursionAvailable, m.Truncated = true, false, true, false
	m.Question = []dns.Question{{Name: name, Qtype: qtype, Qclass: dns.ClassINET}}
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	m.Extra = extra
	life, ok := s.cacheTTL(m, qtype)
	if !ok || s.cache == nil {
		return m
	}
	m.Compress = true
	wire, err := m.Pack()
	if err != nil {
		return m
	}
	e, err := newEntry(key, wire, m.Rcode, s.now(), life)
	if err != nil {
		return m
	}
	s.cache.put(e)
	return m
}

// cacheTTL clamps m's record TTLs to the configured bounds and returns how
// long m may be cached (ns), or false when it must not be: only NOERROR and
// NXDOMAIN are cached, and negative answers only with an SOA (RFC 2308 §5).
func (s *Server) cacheTTL(m *dns.Msg, qtype uint16) (int64, bool) {
	if m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
		return 0, false
	}
	negative := m.Rcode == dns.RcodeNameError
	if !negative {
		negative = true
		for _, rr := range m.Answer {
			if rr.Header().Rrtype == qtype {
				negative = false
				break
			}
		}
	}
	maxTTL := s.cfg.MaxTTL
	if negative {
		maxTTL = s.cfg.NegativeTTL
		var soa *dns.SOA
		for _, rr := range m.Ns {
			if x, ok := rr.(*dns.SOA); ok {
				soa = x
				break
			}
		}
		if soa == nil {
			return 0, false
		}
		soa.Hdr.Ttl = min(soa.Hdr.Ttl, soa.Minttl) // RFC 2308 §5: the negative TTL
	}
	hi := uint32(maxTTL / time.Second)
	lo := min(uint32(s.cfg.MinTTL/time.Second), hi)
	life := hi
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			h.Ttl = max(lo, min(h.Ttl, hi))
			life = min(life, h.Ttl)
		}
	}
	if life == 0 {
		return 0, false
	}
	return int64(life) * int64(time.Second), true
}

// reply packs resp as the answer to req for transport t, appending it to
// dst: ID, flags and question from req, an OPT record if req had one, and
// truncated (TC set) to the client's size limit.
func (s *Server) reply(dst []byte, req, resp *dns.Msg, t Transport) []byte {
	resp.Id = req.Id
	resp.Response = true
	resp.Opcode = req.Opcode
	resp.RecursionDesired = req.RecursionDesired
	resp.CheckingDisabled = req.CheckingDisabled
	resp.RecursionAvailable = true
	resp.Authoritative, resp.Truncated, resp.Zero = false, false, false
	resp.Question = req.Question
	if len(resp.Question) > 1 {
		resp.Question = nil
	}
	extra := resp.Extra[:0]
	for _, rr := range resp.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	resp.Extra = extra
	limit := responseLimit(t, false, 0)
	if reqOpt := req.IsEdns0(); reqOpt != nil {
		opt := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		opt.SetUDPSize(maxUDPSize)
		if reqOpt.Do() {
			opt.SetDo()
		}
		resp.Extra = append(resp.Extra, opt)
		limit = responseLimit(t, true, reqOpt.UDPSize())
	} else if resp.Rcode > 0xf {
		resp.Rcode = dns.RcodeFormatError // an extended rcode needs an OPT record to carry it
	}
	resp.Compress = true
	b, err := resp.Pack()
	if err == nil && len(b) > limit {
		resp.Truncate(limit)
		b, err = resp.Pack()
	}
	if err != nil || len(b) > limit {
		if s.cfg.Logger != nil {
			s.cfg.Logger.Error("dnsproxy: cannot pack answer", "name", req.Question, "err", err, "len", len(b))
		}
		opRD := byte(req.Opcode&0xf) << 3
		if req.RecursionDesired {
			opRD |= flagRD
		}
		return appendHeaderReply(dst, req.Id, opRD, dns.RcodeServerFailure)
	}
	return append(dst, b...)
}

// appendHeaderReply appends a header-only answer with rcode; opRD holds
// the request's opcode and RD bits in their header-byte-2 positions.
func appendHeaderReply(dst []byte, id uint16, opRD byte, rcode int) []byte {
	return append(dst, byte(id>>8), byte(id), flagQR|opRD&(0x78|flagRD),
		0x80|byte(rcode&0xf), // RA, rcode
		0, 0, 0, 0, 0, 0, 0, 0)
}
