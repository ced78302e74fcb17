// Package dnsproxy is the DNS proxy that answers the DNS queries tunnel
// clients send to the DNS addresses the gateway pushes (SPEC R-C2, R-D5,
// R-N1..R-N3).
//
// A [Server] is transport-agnostic: [Server.ServePacket] serves DNS over
// UDP on any [net.PacketConn], [Server.Serve] serves DNS over TCP (RFC 7766
// length-prefixed messages) on any [net.Listener], [Server.ServeConn] serves
// one such stream, and [Server.Handle] answers a single wire-format message
// without any transport, which is what the gateway's userspace stack and the
// fuzz target use. No host socket is needed on the client side; upstream
// queries leave through [Config.Dialer] (the gateway passes its outbound
// dialer).
//
// # Resolution
//
// Every query is answered from a bounded TTL cache or forwarded. Names under
// the internal domains (the search suffixes plus [Config.Domains]) go to the
// corporate servers in [Config.Upstreams]; all other names go to
// [Config.Public], or are answered REFUSED when no public resolver is
// configured. Upstreams are tried in order within [Config.Timeout] each and
// [Config.QueryTimeout] overall; a server that timed out is skipped for
// [Config.DeadTime] (unless every server is dead). A truncated UDP answer is
// retried over TCP. Identical questions in flight share one upstream
// exchange. A client whose query cannot be answered gets SERVFAIL before the
// overall timeout, never silence.
//
// # Search suffixes
//
// Clients that ignore the pushed search list still resolve short names: a
// name with fewer than [Config.NDots] dots is tried with each search suffix
// in order, then as given (through the split policy above). The first
// suffix under which the name exists (NOERROR, with or without records of
// the asked type) wins, so A and AAAA answers for one short name always come
// from the same qualified name. The client gets an answer for the name it
// asked: a synthesized CNAME from the short name to the qualified name,
// followed by the upstream's records for the qualified name (and its SOA
// when the qualified name has no records of the asked type). Stub resolvers
// follow such a chain like any other CNAME. When the name exists nowhere the
// answer is NXDOMAIN (SERVFAIL if some lookup failed).
//
// # Full tunnel and split tunnel
//
// In a full tunnel every client query reaches the proxy. Operators who want
// every name resolved by the corporate servers set Domains to ["."]; with a
// narrower Domains list, non-corporate names go to Public (for example the
// gateway host's own resolver) or are REFUSED.
//
// In a split tunnel the gateway pushes the internal domains as split-DNS
// domains and the DNS addresses are routed into the tunnel; split-DNS-aware
// clients send only internal names, and clients that send everything get
// public names answered by Public or REFUSED, which makes stub resolvers
// move on to their next (local) server. Reverse zones of corporate ranges
// (for example "10.in-addr.arpa") belong in Domains when PTR lookups must
// reach the corporate servers.
//
// # Robustness
//
// Malformed messages are answered FORMERR when their header is readable and
// dropped otherwise; responses (QR set) are dropped; zero or several
// questions get FORMERR; other opcodes NOTIMP; EDNS versions above 0
// BADVERS; zone transfers REFUSED; ANY gets the minimal RFC 8482 HINFO
// answer without an upstream query. UDP answers fit the client's advertised
// EDNS size (512 bytes without EDNS, at most 1232) and are truncated with TC
// set otherwise, so the client retries over TCP. Memory is bounded: the
// cache by entries and bytes, concurrent slow-path queries by
// [Config.MaxInFlight], TCP connections by a fixed limit.
package dnsproxy
