package tunnel

import (
	"net/netip"
	"time"

	"github.com/underpass/underpass/dnsproxy"
	"github.com/underpass/underpass/netstack"
)

// FlowRecord is one entry of the per-flow access log (R-O3): a forwarded
// TCP or UDP flow that ended, or (with Config.FlowLogDNS) one DNS query the
// in-tunnel proxy answered.
type FlowRecord struct {
	Session  string // session id; empty if the session ended before the flow
	User     string
	DeviceID string
	Proto    string         // "tcp", "udp" or "dns"
	Src      netip.AddrPort // the client's in-tunnel address and port
	Dst      netip.AddrPort // the destination the client asked for (unset for "dns")
	// Name is the query name of a "dns" record.
	Name      string
	BytesUp   uint64 // client to destination (payload bytes; DNS: 0)
	BytesDown uint64 // destination to client
	Start     time.Time
	Duration  time.Duration
	Err       error // why the flow ended abnormally, or nil
}

// flowLog turns the stack's flow records into access-log records naming the
// session's user. Set as netstack.Config.FlowLog.
func (g *Gateway) flowLog(r netstack.FlowRecord) {
	fl := g.conf().FlowLog
	if fl == nil {
		return
	}
	rec := FlowRecord{
		Proto: r.Proto, Src: r.Src, Dst: r.Dst, BytesUp: r.BytesUp, BytesDown: r.BytesDown,
		Start: r.Start, Duration: r.Duration, Err: r.Err,
	}
	g.identify(&rec)
	fl(rec)
}

// dnsLog is the DNS proxy's access-log hook: queries become "dns" records
// when Config.FlowLogDNS is set.
// A caller's own DNSProxy.AccessLog still runs first.
func (g *Gateway) dnsLog(next func(dnsproxy.AccessEntry)) func(dnsproxy.AccessEntry) {
	return func(e dnsproxy.AccessEntry) {
		if next != nil {
			next(e)
		}
		c := g.conf()
		if c.FlowLog == nil || !c.FlowLogDNS {
			return
		}
		rec := FlowRecord{
			Proto: "dns", Src: e.Client, Name: e.Name,
			Start: time.Now().Add(-e.Duration), Duration: e.Duration,
		}
		g.identify(&rec)
		c.FlowLog(rec)
	}
}

// identify fills in who owns the record's source address.
func (g *Gateway) identify(rec *FlowRecord) {
	if s := g.sessions.lookupAddr(rec.Src.Addr().Unmap()); s != nil {
		rec.Session, rec.User, rec.DeviceID = s.id, s.ident.User, s.ident.DeviceID
	}
}
