package tunnel

import "net/netip"

// DTLSPortForTest returns the port the gateway announces for DTLS (0:
// none served yet).
func DTLSPortForTest(g *Gateway) int { return int(g.dtlsPort.Load()) }

// CSTPAnswerForTest presents cookie in a CSTP CONNECT to addr and returns
// the answer's HTTP status (-1: no connection) and X-Reason.
func CSTPAnswerForTest(addr, cookie string) (int, string) {
	a := cstpAnswer(addr, cookie)
	return a.status, a.reason
}

// TCPSYN6ForTest is an IPv6 TCP SYN from src to dst with a valid checksum.
func TCPSYN6ForTest(src, dst netip.AddrPort) []byte { return tcpSYN6(src, dst) }

// IsRevokedForTest reports whether g refuses session id's cookie as
// revoked (here or, with a site store, anywhere in the site).
func IsRevokedForTest(g *Gateway, id string) bool { return g.isRevoked(id) }

// SiteFailuresForTest counts g's failed attempts to publish a record to
// the site store.
func SiteFailuresForTest(g *Gateway) uint64 { return g.site.failures.Load() }
