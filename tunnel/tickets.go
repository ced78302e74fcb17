package tunnel

import (
	"crypto/tls"
	"strconv"
	"time"

	"github.com/underpass/underpass/auth"
)

// TLS session tickets from the site key. crypto/tls encrypts session
// tickets with random keys of its own, one set per process: a client that
// reconnects to another server of the site, or to a restarted server, can
// not resume and pays a full handshake, the largest part of a resume's CPU
// (BENCHMARKS.md section 6, sign-in rate). With a Sealer every server
// derives the same ticket keys from the site key, so a reconnect storm after
// a server's death or restart resumes TLS sessions instead (RFC 8446
// section 2.2; TLS 1.2: RFC 5077). Resumption in TLS 1.3 still runs an
// ECDHE exchange (crypto/tls offers psk_dhe_ke only), so a leaked ticket
// key does not reveal past traffic; and whoever holds the site key can
// mint session cookies anyway.

const (
	// ticketKeyPeriod is how long one derived key encrypts new tickets;
	// the previous period's key still decrypts. 24 h is crypto/tls's own
	// rotation interval for its automatic keys.
	ticketKeyPeriod = 24 * time.Hour
	// ticketKeyPurpose names the keys in auth.Sealer.DeriveKey, followed
	// by the period's number.
	ticketKeyPurpose = "tls session ticket "
)

// ticketPeriod numbers the ticketKeyPeriod-long period holding t, counted
// from the Unix epoch, so every server agrees whatever its start time.
func ticketPeriod(t time.Time) int64 { return t.Unix() / int64(ticketKeyPeriod/time.Second) }

// ticketKeys returns period p's key first (crypto/tls encrypts new
// tickets with the first key) and period p-1's, so a ticket issued just
// before a period boundary still resumes after it.
func ticketKeys(sl *auth.Sealer, p int64) [][32]byte {
	return [][32]byte{
		sl.DeriveKey(ticketKeyPurpose + strconv.FormatInt(p, 10)),
		sl.DeriveKey(ticketKeyPurpose + strconv.FormatInt(p-1, 10)),
	}
}

// ticketRotator keeps the TLS listener's ticket keys on the current
// period. It is used from New and then from the reap loop only.
type ticketRotator struct {
	conf   *tls.Config
	sealer *auth.Sealer // Config.Sealer, a restart field; nil: crypto/tls's own keys
	period int64        // the period whose keys conf holds; 0: none set
}

// rotate sets the keys of the period holding now, when that period is new.
func (r *ticketRotator) rotate(now time.Time) {
	if r.sealer == nil {
		return
	}
	if p := ticketPeriod(now); p != r.period {
		r.period = p
		r.conf.SetSessionTicketKeys(ticketKeys(r.sealer, p))
	}
}
