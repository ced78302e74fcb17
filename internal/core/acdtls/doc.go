// Package acdtls holds the protocol internals of the AnyConnect DTLS channel
// ("AnyConnect DTLS"): the UDP data path that openconnect and Cisco clients
// open next to the CSTP tunnel once the CONNECT response carries X-DTLS-*
// headers. It does not own sockets or sessions; the gateway's DTLS
// transport does, and uses this package to
//
//   - decide, from the client's CONNECT request headers, whether and how to
//     offer DTLS (ParseOffer, Negotiate) and write the answer (Params.Headers);
//   - map the first datagram of a handshake to its session
//     (ClientHelloSessionID);
//   - build the pion/dtls server options for that session
//     (Params.ServerOptions);
//   - size the tunnel (MTU) and frame messages inside DTLS records
//     (AppendRecord, ParseRecord).
//
// The facts behind every choice are in shared/docs/dtls.md (the "§" numbers
// in comments refer to it), checked against openconnect 9.01 and ocserv 1.1.6.
//
// # Two ways to key DTLS
//
// PSK-NEGOTIATE (dtls.md §3), openconnect's preferred mode. The client offers
// "PSK-NEGOTIATE" in X-DTLS-CipherSuite; the server answers with
// "X-DTLS-CipherSuite: PSK-NEGOTIATE" and an X-DTLS-App-ID. Both sides derive
// a 32-byte pre-shared key from the CSTP TLS connection with the RFC 5705
// exporter (label "EXPORTER-openconnect-psk", no context); the client then
// runs an ordinary DTLS 1.2 PSK handshake (identity "psk") whose ClientHello
// session_id carries the App-ID, so the server can find the session (and its
// key) before the handshake starts. Only offered when the CSTP connection can
// export keys safely: TLS 1.3, or TLS 1.2 with Extended Master Secret — which
// openconnect 9.01 never sends, so in practice TLS 1.3 only (Go refuses the
// TLS 1.2 exporter without EMS unless GODEBUG says otherwise, and this
// package never sets GODEBUG).
//
// Legacy resumption (dtls.md §4), the Cisco AnyConnect scheme, which
// openconnect also speaks. The client sends 48 random bytes in
// X-DTLS-Master-Secret; the server picks a 32-byte session id and one cipher
// suite and sends them back (X-DTLS-Session-ID, X-DTLS12-CipherSuite or
// X-DTLS-CipherSuite). The client then does an abbreviated DTLS 1.2
// handshake resuming that made-up session: no certificate, no key exchange;
// the master secret is the one the client sent over TLS. A full handshake
// is an attack to the client and is refused by this package's server
// configuration too. Only DTLS 1.2 suites with AES-GCM are offered; Cisco's
// pre-standard DTLS 0.9 names (AES128-SHA, DHE-RSA-*, ...) are never chosen.
//
// # pion/dtls
//
// The DTLS implementation is github.com/pion/dtls/v3, pinned at v3.1.15 and
// used unmodified; several choices here (one server configuration per
// connection, the single-suite lists, the custom RSA-key-exchange AES-GCM
// suites, the read-only session store) exist to fit its API, and say so
// where they are made. pion's logging is silenced unless the caller passes
// a *slog.Logger.
package acdtls
