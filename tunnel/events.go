package tunnel

import (
	"net/netip"
	"time"
)

// EventKind says what an Event records.
type EventKind uint8

// Event kinds: what an operator's "what just happened?" needs.
const (
	EventSignIn       EventKind = iota + 1 // a client signed in (a new session)
	EventSignInFailed                      // credentials or policy refused; Err says why
	EventBanned                            // an address earned a ban for failed sign-ins
	EventConnect                           // a transport connection attached to its session
	EventDisconnect                        // a connection ended; Reason says why
	EventTakeover                          // a newer connection took the session over
	EventSessionEnd                        // the session ended; Reason says why
	EventReload                            // Reload applied a configuration; Applied and NeedRestart say what changed
)

var eventKindText = [...]string{
	EventSignIn: "sign-in", EventSignInFailed: "sign-in failed", EventBanned: "client banned",
	EventConnect: "connect", EventDisconnect: "disconnect", EventTakeover: "session taken over",
	EventSessionEnd: "session ended", EventReload: "configuration reloaded",
}

func (k EventKind) String() string {
	if k > 0 && int(k) < len(eventKindText) {
		return eventKindText[k]
	}
	return "unknown"
}

// Event is one typed record of the session core, delivered to
// Config.Events. Fields that do not apply to a Kind are zero. It never
// carries a credential.
type Event struct {
	Time       time.Time
	Kind       EventKind
	Session    string     // session id ("" for a failed sign-in or a ban)
	User       string     // as signed in (or as typed, for a failed sign-in)
	ClientAddr netip.Addr // where the client connects from
	Transport  string     // "tls" or "quic" (connect, disconnect, takeover)
	Reason     EndReason  // disconnect, takeover, session end
	Err        error      // sign-in failed: why; disconnect: the connection's error, if any
	// BytesIn and BytesOut are IP bytes from and to the client: of the
	// connection (disconnect) or of the session (session end).
	BytesIn, BytesOut uint64
	// Applied and NeedRestart are a reload's ReloadResult: Config field
	// names.
	Applied, NeedRestart []string
}

// event delivers e to Config.Events, if set, stamped with the time.
func (g *Gateway) event(e Event) {
	if f := g.conf().Events; f != nil {
		e.Time = time.Now()
		f(e)
	}
}
