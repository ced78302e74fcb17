// Package tunnel is Underpass's public API: a corporate-access VPN gateway
// that the stock openconnect client (AnyConnect protocol: CSTP over TLS,
// its DTLS data channel over UDP) and RFC 9484 clients (CONNECT-IP over
// QUIC, tunnel.Client among them) connect to without any TUN device or root
// privilege on the gateway side.
//
// A session (a signed-in client, named by its webvpn cookie) outlives its
// connections: its address and its stack port, and so its open flows, stay
// through a reconnect on any transport within Config.ReconnectGrace. One
// session core (lifecycle.go) admits, attaches, takes over and ends
// sessions for every transport; one data loop (link.go) runs each
// connection through a small adapter (cstp.go, dtls.go, connectip.go);
// every timer is in timers.go; why anything ended is an EndReason.
//
// Every session's packets enter one userspace TCP/IP stack (package
// netstack) inside the gateway process; each TCP or UDP flow a client opens
// is terminated there and re-originated from the gateway host with ordinary
// sockets through Config.Dialer. Corporate hosts see the gateway's address.
//
// The gateway enforces the split-tunnel routes it pushes: whatever routes a
// client installs, it reaches only include-minus-exclude destinations, never
// another client, and never the gateway host itself unless an include route
// names it. Refused destinations are answered at once (TCP reset or ICMP
// unreachable), never left to time out.
//
// Lifecycle: New validates a Config (listing every problem in one
// *ConfigError, each a *FieldError naming the Config field) and freezes a
// copy; Reload swaps in a new one without dropping sessions and reports
// what changed by field name; ListenAndServe or ServeTCPAndUDP serve TCP
// and UDP (Serve, ServeQUIC and ServeDTLS one socket each); Mount serves
// AnyConnect from an existing HTTPS server (CONNECT-IP needs ServeQUIC);
// Listen and ListenPacket run services on the gateway's own in-tunnel
// address; Shutdown drains (clients reconnect elsewhere); Close stops at
// once. Close and Shutdown may be called more than once.
package tunnel
