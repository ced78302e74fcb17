// Package tunnel is Underpass's public API: a corporate-access VPN gateway
// that the stock openconnect client (AnyConnect protocol, CSTP over TLS)
// connects to without any TUN device or root privilege on the gateway side.
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
// *ConfigError) and freezes a copy; ListenAndServe or Serve accept
// connections; Handler mounts the protocol in an existing HTTPS server;
// Listen and ListenPacket run services on the gateway's own in-tunnel
// address; Shutdown drains (clients reconnect elsewhere); Close stops at
// once. Close and Shutdown may be called more than once.
package tunnel
