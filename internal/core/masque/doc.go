// Package masque is Underpass's own CONNECT-IP (RFC 9484) layer over
// quic-go: a minimal HTTP/3 (RFC 9114) with extended CONNECT (RFC 9220),
// HTTP datagrams and the capsule protocol (RFC 9297), QPACK through
// github.com/quic-go/qpack with no dynamic table (RFC 9204), and the
// CONNECT-IP capsules with DNS_ASSIGN of draft-ietf-masque-connect-ip-dns-06.
//
// It exists for the data path: HTTP datagrams are read straight from the
// QUIC connection and handed to their session in the reading goroutine,
// with no per-stream queue in between (quic-go's http3 package keeps 32
// per stream and drops the rest of a burst), and a packet is sent with no
// allocation of ours. Each capsule parser sits beside its encoder.
//
// Known deviation: the peer's control stream is read only up to its
// SETTINGS, then only watched for its end, so the receiver-side checks of
// RFC 9114 on later control frames (a second SETTINGS, DATA or HEADERS,
// HTTP/2 frame types, GOAWAY's stream ID) are not made and a client does
// not see a GOAWAY; reading it would cost a goroutine per connection on
// each side, conforming peers send nothing there that CONNECT-IP needs,
// and our gateway follows its GOAWAY with a close code that says the same.
package masque
