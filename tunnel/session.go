package tunnel

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/cpu"

	"github.com/underpass/underpass/internal/core/tally"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/netstack"
)

// cookieBytes is the entropy of a session cookie: 256 bits, well past the
// 128-bit floor for an unguessable bearer credential.
const cookieBytes = 32

// SessionInfo is a snapshot of one client session.
type SessionInfo struct {
	ID   string
	User string
	// Method is how the user signed in: "sso", "password", "token",
	// "certificate", "static" (auth.Identity.Method).
	Method string
	// Groups are the identity's groups as the IdP named them.
	Groups     []string
	DeviceID   string
	UserAgent  string
	ClientAddr netip.AddrPort // where the client connects from
	Address    netip.Addr     // the leased in-tunnel address (invalid before the first CONNECT)
	Address6   netip.Addr     // a dual-stack session's IPv6 address (Config.Pool6); invalid without Pool6 or before the first CONNECT
	Connected  bool           // a tunnel connection is attached now
	Created    time.Time
	Expires    time.Time
	// TokenExpiry is when the sign-in's credential (the IdP's token)
	// expires; zero: none, or not tracked. An SSO sign-in with refresh
	// (auth.SSOConfig.Refresh) is renewed then, which moves it on.
	TokenExpiry time.Time
	BytesIn     uint64 // client to gateway, IP bytes
	BytesOut    uint64 // gateway to client, IP bytes
}

// session is one signed-in client. It outlives individual TLS connections:
// a client that reconnects with its cookie resumes it and keeps its address.
type session struct {
	id        string
	cookieKey [32]byte // SHA-256 of the cookie; the cookie itself is never stored
	ident     *auth.Identity
	userAgent string
	created   time.Time
	expires   time.Time

	// The session's IP byte counters, each written by one side of its
	// data loop: bytesIn by the readers (CSTP, DTLS, QUIC), bytesOut by the
	// writer; the pads keep the two, and the fields below, on separate
	// cache lines.
	_        cpu.CacheLinePad
	bytesIn  atomic.Uint64
	_        cpu.CacheLinePad
	bytesOut atomic.Uint64
	// dtls counts the packets that went over DTLS (Gateway.Stats sums
	// them over sessions, plus those endSession retired).
	dtls tally.Counters

	mu   sync.Mutex
	addr netip.Addr // leased: at sign-in, or by prepare on a resume
	// want is the address a resumed sealed cookie carries: prepare claims
	// exactly it, or refuses (a client must never get another address).
	want netip.Addr
	// addr6 and want6 are the same for the IPv6 address of a dual-stack
	// gateway (Config.Pool6); both invalid otherwise.
	addr6, want6 netip.Addr
	clientAddr   netip.AddrPort
	// port is the session's attachment to the stack, from its first
	// connection to its end: flows live here, so they outlive
	// connections (parked while link is nil).
	port     *netstack.Port
	link     link      // current connection, nil while disconnected
	detached time.Time // when link became nil
	ended    bool
	// renewed is the identity of the latest sign-in renewal (SSO
	// refresh), nil before the first; ident keeps the sign-in's. Under mu.
	renewed *auth.Identity

	// renewMu serialises renewals (resume and reaper); renewing marks a
	// reaper renewal in flight, so the reaper starts one at a time.
	renewMu  sync.Mutex
	renewing atomic.Bool
}

// holds reports whether a is the session's IPv4 or IPv6 address.
func (s *session) holds(a netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return a.IsValid() && (a == s.addr || a == s.addr6)
}

// identity is the session's current identity: the latest renewal's, else
// the sign-in's. Policy checks and renewals read it; the user, the method
// and the device ID never change with a renewal.

func (s *session) identity() *auth.Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.renewed != nil {
		return s.renewed
	}
	return s.ident
}

func (s *session) info() SessionInfo {
	id := s.identity()
	s.mu.Lock()
	defer s.mu.Unlock()
	return SessionInfo{
		ID: s.id, User: s.ident.User, Method: s.ident.Method, Groups: slices.Clone(id.Groups), DeviceID: s.ident.DeviceID, UserAgent: s.userAgent,
		ClientAddr: s.clientAddr, Address: s.addr, Address6: s.addr6, Connected: s.link != nil,
		Created: s.created, Expires: s.expires, TokenExpiry: id.Expiry,
		BytesIn: s.bytesIn.Load(), BytesOut: s.bytesOut.Load(),
	}
}

// sessionTable indexes sessions by cookie hash, id and leased address.
type sessionTable struct {
	mu       sync.Mutex
	byCookie map[[32]byte]*session
	byID     map[string]*session
	byAddr   map[netip.Addr]*session
}

func newSessionTable() *sessionTable {
	return &sessionTable{
		byCookie: make(map[[32]byte]*session),
		byID:     make(map[string]*session),
		byAddr:   make(map[netip.Addr]*session),
	}
}

// newCookie returns a fresh random cookie (URL-safe, no ';') and its key.
func newCookie() (string, [32]byte) {
	b := make([]byte, cookieBytes)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	c := base64.RawURLEncoding.EncodeToString(b)
	return c, sha256.Sum256([]byte(c))
}

func newSessionID() string {
	b := make([]byte, 8) // 64 bits: an operator-facing handle, not a credential
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// add inserts s unless the table holds max sessions already (max 0: no
// cap); it reports whether s was added.
func (t *sessionTable) add(s *session, max int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if max > 0 && len(t.byID) >= max {
		return false
	}
	t.byCookie[s.cookieKey] = s
	t.byID[s.id] = s
	return true
}

// addOrGet adds s unless a session with its cookie exists already (two
// connections resuming one sealed cookie at once), and returns the one
// that is in the table; nil if adding would exceed max sessions (0: no
// cap).
func (t *sessionTable) addOrGet(s *session, max int) *session {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old := t.byCookie[s.cookieKey]; old != nil {
		return old
	}
	if max > 0 && len(t.byID) >= max {
		return nil
	}
	t.byCookie[s.cookieKey] = s
	t.byID[s.id] = s
	return s
}

func (t *sessionTable) byCookieValue(cookie string) *session {
	k := sha256.Sum256([]byte(cookie))
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byCookie[k]
}

func (t *sessionTable) get(id string) *session {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byID[id]
}

func (t *sessionTable) setAddr(s *session, a netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.byAddr[a] = s
}

func (t *sessionTable) lookupAddr(a netip.Addr) *session {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byAddr[a]
}

// remove drops s from every index; it reports whether s was present.
// Call it after s is marked ended (its address no longer changes).
func (t *sessionTable) remove(s *session) bool {
	s.mu.Lock() // before t.mu: prepare holds s.mu while it calls setAddr
	addr, addr6 := s.addr, s.addr6
	s.mu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byID[s.id] != s {
		return false
	}
	delete(t.byCookie, s.cookieKey)
	delete(t.byID, s.id)
	for _, a := range []netip.Addr{addr, addr6} {
		if a.IsValid() && t.byAddr[a] == s {
			delete(t.byAddr, a)
		}
	}
	return true
}

func (t *sessionTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byID)
}

func (t *sessionTable) all() []*session {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*session, 0, len(t.byID))
	for _, s := range t.byID {
		out = append(out, s)
	}
	return out
}
