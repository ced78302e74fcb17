package acdtls

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"sync"
	"time"

	"github.com/pion/dtls/v3"
)

// PSKIdentity is the PSK identity openconnect always sends (dtls.md §3); it
// cannot tell sessions apart, the ClientHello session_id does.
const PSKIdentity = "psk"

// Errors of ServerOptions and of the handshakes its options run.
var (
	ErrNoDTLS         = errors.New("acdtls: no DTLS negotiated")
	ErrBadPSK         = errors.New("acdtls: PSK is empty")
	ErrPSKIdentity    = errors.New("acdtls: PSK identity is not \"psk\"")
	ErrNotResumed     = errors.New("acdtls: legacy DTLS refused a full handshake")
	ErrUnknownSession = errors.New("acdtls: ClientHello names another session")
	errStoreReadOnly  = errors.New("acdtls: legacy session store is read-only")
	errNeverSigns     = errors.New("acdtls: legacy DTLS key does not sign (full handshake refused)")
)

// pskSuites are the PSK suites pion supports that openconnect offers
// (dtls.md §3), in the order we want them. pion's server picks the first
// suite of the CLIENT's list that it also has, and openconnect lists
// ChaCha20-Poly1305 before AES-128-GCM, so preferring AES-128-GCM (the
// cheaper one with AES-NI) takes narrowing the list to it when the client
// offers it (see ServerOptions). AES-128-CCM is the last AEAD resort;
// TLS_PSK_WITH_AES_128_CBC_SHA256, which pion also has, is left out:
// MAC-then-encrypt CBC is weaker and no client needs it.
var pskSuites = []dtls.CipherSuiteID{
	dtls.TLS_PSK_WITH_AES_128_GCM_SHA256,       // 0x00a8
	dtls.TLS_PSK_WITH_CHACHA20_POLY1305_SHA256, // 0xccab
	dtls.TLS_PSK_WITH_AES_128_CCM,              // 0xc0a4
}

// ServerOptions returns the pion/dtls options for the server side of this
// session's DTLS connection, for
// dtls.ServerWithOptions(conn, remoteAddr, opts...). Build them per
// connection: they hold the session's key.
//
// PSK mode: psk is this session's key (PSKLen bytes of the CSTP exporter,
// see PSKExporterLabel; any non-empty key is accepted). The PSK callback
// accepts only the identity "psk". clientHello is optional: the first
// datagram of the handshake (the one ClientHelloSessionID read); when it
// offers TLS_PSK_WITH_AES_128_GCM_SHA256 the server offers only that suite,
// so the handshake picks it although openconnect lists ChaCha20-Poly1305
// first; otherwise (nil, unreadable, not offered) the server offers
// AES-128-GCM, ChaCha20-Poly1305 and AES-128-CCM and pion takes the client's
// first match. Extended Master Secret is used if the client offers it
// (openconnect 9.01 does not). The HelloVerifyRequest cookie exchange stays
// on (pion's default, dtls.md §5).
//
// Legacy mode: psk and clientHello are ignored. The server only resumes the
// session (Params.SessionID, Params.MasterSecret, Params.Suite.ID): the
// session store holds that one complete entry, the suite list holds only
// that suite, Extended Master Secret is disabled (the master secret was made
// by the client, without a session hash), and any full handshake fails:
// it would need the ServerKeyExchange signature, which the throwaway RSA
// certificate's key refuses (for every legacy suite, see
// rsaGCMSuite.KeyExchangeAlgorithm); behind that, the store refuses new
// sessions and a VerifyConnection check demands the session id.
//
// Running the connection (pion v3.1.15 behaviour, seen in this package's
// tests): a peer with the wrong key gets no alert and sends none, because
// records that fail authentication are dropped silently (RFC 6347
// §4.1.2.7), so bound HandshakeContext with a deadline; Conn.Read fails with
// a "buffer too small" error if its buffer is shorter than the record (use
// 8 KiB, pion's own receive size); Conn.Close also closes the PacketConn
// given to dtls.ServerWithOptions.
//
// logger receives pion's log lines (see PionLogger); nil discards them.
// The error is ErrNoDTLS for the zero Params, ErrBadPSK for an empty PSK in
// PSK mode, or a legacy Params that is inconsistent (master secret not 48
// bytes, suite not one Negotiate picks).
func (p Params) ServerOptions(psk, clientHello []byte, logger *slog.Logger) ([]dtls.ServerOption, error) {
	common := []dtls.ServerOption{
		dtls.WithLoggerFactory(PionLogger(logger)),
		dtls.WithInsecureSkipVerifyHello(false),
	}
	switch {
	case p.PSK:
		return p.pskOptions(common, psk, clientHello)
	case p.Suite.Name != "":
		return p.legacyOptions(common)
	}
	return nil, ErrNoDTLS
}

func (p Params) pskOptions(opts []dtls.ServerOption, psk, clientHello []byte) ([]dtls.ServerOption, error) {
	if len(psk) == 0 {
		return nil, ErrBadPSK
	}
	key := bytes.Clone(psk)
	suites := pskSuites
	if clientHelloOffers(clientHello, uint16(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256)) {
		suites = pskSuites[:1]
	}
	return append(opts,
		dtls.WithPSK(func(identity []byte) ([]byte, error) {
			if string(identity) != PSKIdentity {
				return nil, ErrPSKIdentity
			}
			return key, nil
		}),
		dtls.WithCipherSuites(suites...),
		dtls.WithExtendedMasterSecret(dtls.RequestExtendedMasterSecret),
	), nil
}

func (p Params) legacyOptions(opts []dtls.ServerOption) ([]dtls.ServerOption, error) {
	if len(p.MasterSecret) != MasterSecretLen {
		return nil, fmt.Errorf("acdtls: legacy master secret is %d bytes, want %d", len(p.MasterSecret), MasterSecretLen)
	}
	suiteOpts, err := legacySuiteOptions(p.Suite.ID)
	if err != nil {
		return nil, err
	}
	cert, err := throwawayCert()
	if err != nil {
		return nil, err
	}
	sid := p.SessionID
	store := &sessionStore{s: dtls.Session{
		ID:                   sid[:],
		Secret:               bytes.Clone(p.MasterSecret),
		Version:              1, // pion's marker of a complete entry (session.go); others are ignored
		IsClient:             false,
		CipherSuiteID:        p.Suite.ID,
		ExtendedMasterSecret: false,
	}}
	opts = append(opts, suiteOpts...)
	return append(opts,
		dtls.WithCertificates(cert),
		dtls.WithSessionStore(store),
		dtls.WithExtendedMasterSecret(dtls.DisableExtendedMasterSecret),
		dtls.WithVerifyConnection(func(s *dtls.State) error {
			// Runs for resumed and full handshakes alike; only a resumption
			// of our session id is acceptable (a full handshake gets a
			// fresh random id from pion).
			if !bytes.Equal(s.SessionID, sid[:]) {
				return ErrNotResumed
			}
			return nil
		}),
	), nil
}

// legacySuiteOptions makes pion's suite list exactly {id}, so that pion
// (which takes the first suite of the client's list it also has) cannot
// pick another suite than the session's — which would turn the resumption
// into a refused full handshake for a client, such as an OpenSSL-based one,
// that offers several suites.
func legacySuiteOptions(id dtls.CipherSuiteID) ([]dtls.ServerOption, error) {
	switch {
	case id == dtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 || id == dtls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384:
		return []dtls.ServerOption{dtls.WithCipherSuites(id)}, nil
	case isCustomSuite(id):
		return []dtls.ServerOption{
			dtls.WithCustomCipherSuites(func() []dtls.CipherSuite {
				for _, s := range newRSAGCMSuites() {
					if s.ID() == id {
						return []dtls.CipherSuite{s}
					}
				}
				return nil
			}),
			// pion puts custom suites in front of CipherSuites, or of its
			// default list when CipherSuites is empty. Naming one PSK suite
			// here keeps the defaults out: a config without a PSK callback
			// drops PSK suites, leaving the custom suite alone.
			dtls.WithCipherSuites(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256),
		}, nil
	}
	return nil, fmt.Errorf("acdtls: %v is not a legacy suite", id)
}

// sessionStore is the server's session cache in legacy mode: one entry,
// the session the client was told to resume (dtls.md §4).
type sessionStore struct{ s dtls.Session }

// Get returns the entry for its id; any other id is an error, which ends
// the handshake at once (pion asks only for non-empty ClientHello ids).
func (st *sessionStore) Get(key []byte) (dtls.Session, error) {
	if !bytes.Equal(key, st.s.ID) {
		return dtls.Session{}, ErrUnknownSession
	}
	return st.s, nil
}

// Set refuses: pion stores a session only after a full handshake, which
// legacy mode never allows.
func (st *sessionStore) Set([]byte, dtls.Session) error { return errStoreReadOnly }

// Del is a no-op: pion deletes the session after a fatal alert (RFC 5246
// §7.2), but the entry lives only as long as this connection's options and
// a guessing peer learns nothing from a failed resumption, so keeping it
// lets the real client retry after a stray failure.
func (st *sessionStore) Del([]byte) error { return nil }

// throwawayCert is the certificate legacy mode must configure: pion picks a
// certificate before it checks for resumption and keeps only suites whose
// type matches the key (RSA for ECDHE-RSA and RSA suites). An abbreviated
// handshake never sends it nor uses its key, so a per-process random key is
// fine; its signer refuses to sign, so a full ECDHE-RSA handshake fails
// before any signature work. Generated lazily, once per process (2048-bit
// RSA: the smallest size Go's x509 and pion are both happy with).
var throwawayCert = sync.OnceValues(func() (tls.Certificate, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "underpass legacy DTLS (never sent)"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(100 * 365 * 24 * time.Hour), // outlives any process
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: refusingSigner{&key.PublicKey}}, nil
})

// refusingSigner is a crypto.Signer that never signs.
type refusingSigner struct{ pub *rsa.PublicKey }

func (r refusingSigner) Public() crypto.PublicKey { return r.pub }

func (refusingSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errNeverSigns
}
