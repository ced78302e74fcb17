package tunnel

import (
	"github.com/underpass/underpass/dnsproxy"
	"github.com/underpass/underpass/internal/core/tally"
	"github.com/underpass/underpass/netstack"
)

// Stats is a snapshot of the gateway's counters, for health checks and
// metrics. Counters are totals since New; they only grow.
type Stats struct {
	Sessions       int    // signed-in sessions, connected or within their reconnect grace
	Connected      int    // sessions with a live tunnel connection now
	SignIns        uint64 // successful sign-ins
	SignInFailures uint64 // refused sign-ins (bad credentials, policy, IdP errors)
	BytesIn        uint64 // IP bytes from clients accepted into the stack
	BytesOut       uint64 // IP bytes queued to clients
	DTLSUp         uint64 // DTLS channels established (handshakes completed)
	DTLSPacketsIn  uint64 // packets from clients that came over DTLS
	DTLSPacketsOut uint64 // packets to clients sent over DTLS (the rest went over CSTP or QUIC)
	DTLSDropped    uint64 // datagrams dropped before any state: not a ClientHello naming a live offer, or over the handshake cap
	DTLSPeers      int64  // client addresses with DTLS state now (handshaking or up)
	Stack          netstack.Stats
	// DNS is the in-tunnel DNS proxy's counters; zero when the proxy is
	// off (Config.DisableDNSProxy, or no Config.DNS).
	DNS dnsproxy.Stats
	// SiteStore is the site store's state; zero without Site.Store.
	SiteStore SiteStoreStats
}

// Stats returns the current counters. It walks the session table, so call
// it at sampling rates (seconds), not per packet.
func (g *Gateway) Stats() Stats {
	st := Stats{
		SignIns:        g.signIns.Load(),
		SignInFailures: g.signInFailures.Load(),
		Stack:          g.stack.Stats(),
		DTLSUp:         g.dtlsUp.Load(),
		DTLSDropped:    g.dtlsDropped.Load(),
		DTLSPeers:      g.dtlsPeers.Load(),
		SiteStore:      g.siteStats(),
	}
	st.BytesIn, st.BytesOut = st.Stack.BytesIn, st.Stack.BytesOut
	if g.dns != nil {
		st.DNS = g.dns.Stats()
	}
	dtls := g.dtlsTraffic.Sum(func(add func(*tally.Counters)) {
		for _, s := range g.sessions.all() {
			add(&s.dtls)
			st.Sessions++
			s.mu.Lock()
			if s.link != nil {
				st.Connected++
			}
			s.mu.Unlock()
		}
	})
	st.DTLSPacketsIn, st.DTLSPacketsOut = dtls.PacketsIn, dtls.PacketsOut
	return st
}
