package dnsproxy

import (
	"net/netip"
	"time"
)

// Transport is the client-side transport a query arrived on. It decides
// the response size limit: UDP answers fit the client's EDNS size, TCP
// answers up to 64 KiB.
type Transport uint8

// Transports.
const (
	UDP Transport = iota + 1
	TCP
)

func (t Transport) String() string {
	switch t {
	case UDP:
		return "udp"
	case TCP:
		return "tcp"
	}
	return "unknown"
}

// RcodeDropped is the rcode reported for queries that got no answer at all
// (unparseable, a response, or over the in-flight limit).
const RcodeDropped = -1

// Metrics receives measurements. Implementations must be safe for
// concurrent use and fast: they run on the query path.
type Metrics interface {
	// Query is called once per client query with the answer's rcode (or
	// RcodeDropped), whether it came from the cache, and the time taken.
	Query(t Transport, rcode int, cacheHit bool, d time.Duration)
	// Upstream is called once per exchange with an upstream server
	// ("udp" or "tcp"); err is nil on success.
	Upstream(server, network string, d time.Duration, err error)
}

// AccessEntry is one DNS flow for the access log (level 2).
type AccessEntry struct {
	Client    netip.AddrPort // zero when unknown (Handle without a client)
	Transport Transport
	Name      string // as asked, empty if unparseable
	Type      uint16 // dns.Type* value
	Rcode     int    // dns.Rcode* value or RcodeDropped
	CacheHit  bool
	Duration  time.Duration
}

// Stats are cumulative counters since New plus the cache's current size.
type Stats struct {
	Queries          uint64 // client queries received
	CacheHits        uint64 // answered from the cache
	CacheMisses      uint64 // needed an upstream lookup (or join of one)
	Deduplicated     uint64 // lookups that joined an identical one in flight
	UpstreamQueries  uint64 // exchanges with upstream servers (UDP and TCP)
	UpstreamFailures uint64 // exchanges that failed (timeout, network, bad reply)
	Dropped          uint64 // queries not answered at all
	FormErr          uint64 // FORMERR answers
	ServFail         uint64 // SERVFAIL answers
	Refused          uint64 // REFUSED answers
	Panics           uint64 // recovered internal panics (a bug if non-zero)
	CacheEntries     int
	CacheBytes       int
}
