package tunnel

// EndReason says why a transport connection or a whole session ended. Its
// String is the text logs and telemetry carry; behaviour never depends on
// that text, only on the value.
type EndReason uint8

// End reasons. The connection-only ones (EndConnLost, EndDeadPeer,
// EndGoingAway) leave the session waiting for a reconnect within
// Config.ReconnectGrace, with its address and every open flow;
// EndTakenOver leaves it to the newer connection; the others end the
// session too (EndsSession).
const (
	endNone EndReason = iota
	// EndConnLost: the connection broke or the client closed it without
	// logging off (a network change, openconnect's SIGUSR2).
	EndConnLost
	// EndDeadPeer: nothing heard from the client for 2.5 DPD intervals
	// (openconnect's own dead-peer rule, with half an interval of slack).
	EndDeadPeer
	// EndGoingAway: the gateway drains (Shutdown) or stops (Close); the
	// client should reconnect, through a load balancer to another server.
	// The session is not revoked, so a sealed cookie resumes elsewhere.
	EndGoingAway
	// EndTakenOver: another connection presented the session's cookie and
	// took the session over (R-P6). The older client is told to
	// disconnect, so it exits instead of reconnecting and kicking the
	// newer one (ocserv's test suite expects the newer client to win).
	EndTakenOver
	// EndLogoff: the client logged off (CSTP DISCONNECT, the XML logout,
	// QUICCodeLogoff).
	EndLogoff
	// EndIdleTimeout: no data moved for Config.IdleTimeout.
	EndIdleTimeout
	// EndSessionTimeout: the session reached its lifetime (R-C5).
	EndSessionTimeout
	// EndGraceExpired: the client did not reconnect within
	// Config.ReconnectGrace; its flows are reset.
	EndGraceExpired
	// EndOperator: Gateway.Disconnect.
	EndOperator
	// EndPolicyDenied: the access policy refused the session on resume
	// or when its sign-in was renewed (R-A4).
	EndPolicyDenied
	// EndRenewalFailed: the sign-in could not be renewed (SSO refresh:
	// the IdP refused or could not be reached; auth.SSOConfig.Refresh).
	EndRenewalFailed
)

var endReasonText = [...]string{
	endNone:           "",
	EndConnLost:       "connection lost",
	EndDeadPeer:       "dead peer",
	EndGoingAway:      "gateway going away",
	EndTakenOver:      "taken over by another connection",
	EndLogoff:         "client logged off",
	EndIdleTimeout:    "idle timeout",
	EndSessionTimeout: "session timeout",
	EndGraceExpired:   "not reconnected within grace",
	EndOperator:       "disconnected by operator",
	EndPolicyDenied:   "denied by policy",
	EndRenewalFailed:  "sign-in renewal failed",
}

func (r EndReason) String() string {
	if int(r) < len(endReasonText) {
		return endReasonText[r]
	}
	return "unknown"
}

// EndsSession reports whether r ends the session, not just the connection.
func (r EndReason) EndsSession() bool {
	switch r {
	case endNone, EndConnLost, EndDeadPeer, EndGoingAway, EndTakenOver:
		return false
	}
	return true
}

// tellsClientToStop reports whether the client must be told not to
// reconnect (CSTP DISCONNECT, a QUIC session-ended or taken-over code).
// A lost connection has no one to tell, and a going-away client should
// reconnect.
func (r EndReason) tellsClientToStop() bool {
	return r == EndTakenOver || (r.EndsSession() && r != EndGraceExpired)
}
