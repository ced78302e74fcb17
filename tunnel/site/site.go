// Package site is the interface between a gateway (tunnel.Gateway) and the
// store the servers of a site share: revocations, bans, per-server
// health records and, optionally (Leases), site-wide address leases that
// double as the site's session records. It has no dependencies; the underpass binary's etcd
// backend (internal/daemon/sitestore) implements it, and an embedder may
// bring its own.
//
// The store is never on the packet path nor in a readiness check: a
// gateway applies every record locally first and publishes it afterwards,
// queueing what the store cannot take while it is unreachable (see
// tunnel.Site.Store). Leases are the exception: a sign-in or resume asks
// the store, bounded by a short timeout, and falls back to the local pool
// when the store does not answer.
package site

import (
	"context"
	"net/netip"
	"time"
)

// Kind says what a Record records.
type Kind uint8

// Record kinds.
const (
	// Revoked: the session Record.Session was ended by an operator or
	// logged off. Every server ends it if it runs there and refuses its
	// sealed cookie until Record.Until (the cookie's expiry).
	Revoked Kind = iota + 1
	// Banned: Record.Addr is banned for failed sign-ins until
	// Record.Until on every server.
	Banned
	// Lifted: Record.Addr's ban is lifted on every server.
	Lifted
)

func (k Kind) String() string {
	switch k {
	case Revoked:
		return "revoked"
	case Banned:
		return "banned"
	case Lifted:
		return "lifted"
	}
	return "unknown"
}

// Record is one fact shared by the servers of a site.
type Record struct {
	Kind    Kind
	Session string     // Revoked: the sealed session id
	Addr    netip.Addr // Banned, Lifted: the client address (the ban list's key)
	// Until is when the record stops mattering (Revoked: the cookie's
	// expiry; Banned: the ban's end). A store may forget the record then.
	Until  time.Time
	Server string // the server that published it (Site.ServerName)
}

// Health is one server's health record. A store keeps it for a limited
// time (its TTL) after the last Announce, so a dead server disappears
// without any leader noticing it.
type Health struct {
	Server   string    // Site.ServerName
	Sessions int       // signed-in sessions on this server
	Draining bool      // Shutdown has begun
	Started  time.Time // when the gateway was created
	Updated  time.Time // when this record was written

	// Set by the program around the gateway (the underpass binary wraps
	// its Store's Announce to fill them); a gateway leaves them empty.
	Version      string   // the server's software version
	ConfigSchema int      // the config schema it reads (0: unknown)
	Config       string   // the hash of the site configuration it runs ("": its own config file)
	Refused      string   // the hash of the newest site configuration it refused ("": none)
	ConfigError  string   // why it refused it
	Restart      []string // settings changed by the site configuration that wait for a restart
}

// Store is what a gateway needs of the site store. All methods are safe
// for concurrent use. Errors mean "the store is unreachable or refused";
// the gateway keeps working and retries.
type Store interface {
	// Publish stores r for every server. A Lifted record removes the
	// address's Banned record.
	Publish(ctx context.Context, r Record) error
	// Watch calls fn, from one goroutine, with every record present when
	// it starts and then with every record published after (its own
	// included), until ctx ends; then it returns ctx.Err(). It survives
	// store outages by itself: it resumes after the last record it
	// delivered, and when the store has compacted that history it lists
	// the records again (fn may see a record twice; applying one is
	// idempotent).
	Watch(ctx context.Context, fn func(Record)) error
	// Announce writes this server's health record, which the store keeps
	// for its TTL after the last Announce. A gateway announces every few
	// seconds (tunnel.Site.Store's doc gives the interval).
	Announce(ctx context.Context, h Health) error
	// Withdraw removes this server's health record at once (at Close).
	Withdraw(ctx context.Context, server string) error
	// Servers lists the live health records, sorted by Server.
	Servers(ctx context.Context) ([]Health, error)
}

// Lease is a site-wide address lease: the address a session holds, on
// whichever server of the site runs it. It is also the site's record of
// the session (who, on which server, from where, since when), which is
// what a site-wide sessions view lists.
type Lease struct {
	Addr    netip.Addr // the session's address in the tunnel: the lease's key
	Session string     // the sealed session id holding it
	Server  string     // the server that claimed it last (Site.ServerName)
	User    string     // the signed-in user
	Client  netip.Addr // the client's address (the PROXY protocol's, behind a balancer); may be invalid
	Since   time.Time  // when the session signed in
	// Until is the cookie's expiry: no resume can claim the address after
	// it, so the store forgets the lease then.
	Until time.Time
}

// HeldError is ClaimLease's answer when another session holds the
// address.
type HeldError struct {
	Holder Lease // the lease as the store holds it
}

func (e *HeldError) Error() string {
	return "site: address " + e.Holder.Addr.String() + " is leased to session " + e.Holder.Session + " on server " + e.Holder.Server
}

// Leases is the optional part of a Store that leases addresses for the
// whole site. A gateway whose Site.Store implements it confirms every
// address it hands out or resumes with ClaimLease, so no two sessions of
// the site hold one address.
type Leases interface {
	// ClaimLease leases l.Addr to l.Session until l.Until, atomically
	// (compare-and-swap): it succeeds when no lease of l.Addr exists or
	// the existing one is l.Session's (a resume on another server: the
	// lease moves to l.Server and its other fields are replaced). When
	// another session holds the address it returns a *HeldError naming
	// it. Other errors mean the store is unreachable or refused.
	ClaimLease(ctx context.Context, l Lease) error
	// ReleaseLease ends the lease of addr if session holds it on server;
	// a lease that has moved to another server, or is gone, is left
	// alone (nil error).
	ReleaseLease(ctx context.Context, addr netip.Addr, session, server string) error
	// Leases lists the live leases, sorted by address.
	Leases(ctx context.Context) ([]Lease, error)
}
