package netstack

import "errors"

// Errors returned by the package. Inject's drop reasons are distinct values so
// callers and tests can tell them apart with errors.Is; each is also counted
// in [Stats].
var (
	// ErrClosed reports use of a closed Stack or Port.
	ErrClosed = errors.New("netstack: closed")
	// ErrAddrInUse reports Attach of an address that is already attached.
	ErrAddrInUse = errors.New("netstack: address already attached")
	// ErrInvalidAddr reports an address that cannot be attached or listened on.
	ErrInvalidAddr = errors.New("netstack: invalid address")
	// ErrHeadroom reports a headroom outside [0, MaxHeadroom].
	ErrHeadroom = errors.New("netstack: headroom out of range")
	// ErrNotIP reports a packet that is neither IPv4 nor IPv6.
	ErrNotIP = errors.New("netstack: not an IPv4 or IPv6 packet")
	// ErrMalformed reports a packet whose IP header is inconsistent.
	ErrMalformed = errors.New("netstack: malformed packet")
	// ErrTooBig reports a packet larger than the configured MTU.
	ErrTooBig = errors.New("netstack: packet larger than MTU")
	// ErrTTLExceeded reports a client packet whose TTL (hop limit) would
	// reach 0 at the gateway; the client was sent ICMP time exceeded.
	ErrTTLExceeded = errors.New("netstack: TTL exceeded in transit")
	// ErrBadMTU reports a port MTU outside [576, Config.MTU] (Port.SetMTU).
	ErrBadMTU = errors.New("netstack: port MTU out of range")
	// ErrSpoofed reports a packet whose source is not the port's address.
	ErrSpoofed = errors.New("netstack: source address is not the session's")
	// ErrNotAllowed reports a packet to a destination the policy forbids
	// (including another session's address). The client is answered with a
	// TCP RST or an ICMP administratively-prohibited error.
	ErrNotAllowed = errors.New("netstack: destination not allowed")
)
