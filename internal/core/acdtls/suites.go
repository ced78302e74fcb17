package acdtls

import (
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"hash"
	"sync/atomic"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/crypto/ciphersuite"
	"github.com/pion/dtls/v3/pkg/crypto/clientcertificate"
	"github.com/pion/dtls/v3/pkg/crypto/prf"
	"github.com/pion/dtls/v3/pkg/protocol/recordlayer"
)

// RSA-key-exchange AES-GCM suites (RFC 5288 §3), which pion does not ship:
// ocserv's choice for Cisco clients ("AES128-GCM-SHA256" in
// X-DTLS12-CipherSuite) and what openconnect's OC-DTLS1_2-AES128-GCM /
// OC-DTLS1_2-AES256-GCM names mean (dtls.md §4).
const (
	suiteRSAWithAES128GCMSHA256 dtls.CipherSuiteID = 0x009c // TLS_RSA_WITH_AES_128_GCM_SHA256
	suiteRSAWithAES256GCMSHA384 dtls.CipherSuiteID = 0x009d // TLS_RSA_WITH_AES_256_GCM_SHA384
)

// Key block sizes of TLS 1.2 AES-GCM (RFC 5288 §3): no MAC key, a 16- or
// 32-byte key and a 4-byte implicit nonce salt per direction.
const (
	gcmMACKeyLen = 0
	gcmSaltLen   = 4
	aes128KeyLen = 16
	aes256KeyLen = 32
)

var errSuiteNotReady = errors.New("acdtls: cipher suite used before its keys were set")

// rsaGCMSuite is a TLS_RSA_WITH_AES_*_GCM_* suite for pion's
// CustomCipherSuites, built from pion's exported GCM record protection and
// TLS 1.2 PRF. It only supports abbreviated (resumed) handshakes, where the
// key exchange never runs; pion has no RSA key transport, so a full
// handshake cannot complete with it, which is what legacy mode wants
// anyway. One value per connection: Init stores that connection's keys.
type rsaGCMSuite struct {
	id     dtls.CipherSuiteID
	name   string
	keyLen int
	hash   func() hash.Hash
	gcm    atomic.Pointer[ciphersuite.GCM]
}

// newRSAGCMSuites returns fresh instances of both suites; pion calls it for
// every connection and every ClientHello it parses.
func newRSAGCMSuites() []dtls.CipherSuite {
	return []dtls.CipherSuite{
		&rsaGCMSuite{id: suiteRSAWithAES128GCMSHA256, name: "TLS_RSA_WITH_AES_128_GCM_SHA256", keyLen: aes128KeyLen, hash: sha256.New},
		&rsaGCMSuite{id: suiteRSAWithAES256GCMSHA384, name: "TLS_RSA_WITH_AES_256_GCM_SHA384", keyLen: aes256KeyLen, hash: sha512.New384},
	}
}

func (s *rsaGCMSuite) String() string                          { return s.name }
func (s *rsaGCMSuite) ID() dtls.CipherSuiteID                  { return s.id }
func (s *rsaGCMSuite) CertificateType() clientcertificate.Type { return clientcertificate.RSASign }
func (s *rsaGCMSuite) HashFunc() func() hash.Hash              { return s.hash }
func (s *rsaGCMSuite) IsInitialized() bool                     { return s.gcm.Load() != nil }
func (s *rsaGCMSuite) AuthenticationType() dtls.CipherSuiteAuthenticationType {
	return dtls.CipherSuiteAuthenticationTypeCertificate
}

// KeyExchangeAlgorithm claims ECDHE although the suite's is RSA key
// transport, which pion lacks and a resumed session never runs. The claim
// matters only in a full handshake, and there it is required: pion v3.1.15's
// server (flight4handler.go, flight4Generate) treats every certificate
// suite as ECDHE and dereferences the ECDHE key pair, which it only makes
// for suites that say ECDHE — "none" crashed the process with a nil-pointer
// panic on a ClientHello with an empty session_id (found by
// TestLegacyHandshakeFails). Saying ECDHE, the full handshake reaches the
// ServerKeyExchange signature, which the throwaway key refuses.
func (s *rsaGCMSuite) KeyExchangeAlgorithm() dtls.CipherSuiteKeyExchangeAlgorithm {
	return dtls.CipherSuiteKeyExchangeAlgorithmEcdhe
}

// ECC goes with the ECDHE claim (pion clients then send supported_groups).
func (s *rsaGCMSuite) ECC() bool { return true }

// Init derives the key block (RFC 5246 §6.3) with the suite's PRF hash and
// sets up AES-GCM for both directions.
func (s *rsaGCMSuite) Init(masterSecret, clientRandom, serverRandom []byte, isClient bool) error {
	keys, err := prf.GenerateEncryptionKeys(masterSecret, clientRandom, serverRandom,
		gcmMACKeyLen, s.keyLen, gcmSaltLen, s.hash)
	if err != nil {
		return err
	}
	var g *ciphersuite.GCM
	if isClient {
		g, err = ciphersuite.NewGCM(keys.ClientWriteKey, keys.ClientWriteIV, keys.ServerWriteKey, keys.ServerWriteIV)
	} else {
		g, err = ciphersuite.NewGCM(keys.ServerWriteKey, keys.ServerWriteIV, keys.ClientWriteKey, keys.ClientWriteIV)
	}
	if err != nil {
		return err
	}
	s.gcm.Store(g)
	return nil
}

func (s *rsaGCMSuite) Encrypt(pkt *recordlayer.RecordLayer, raw []byte) ([]byte, error) {
	g := s.gcm.Load()
	if g == nil {
		return nil, errSuiteNotReady
	}
	return g.Encrypt(pkt, raw)
}

func (s *rsaGCMSuite) Decrypt(h recordlayer.Header, in []byte) ([]byte, error) {
	g := s.gcm.Load()
	if g == nil {
		return nil, errSuiteNotReady
	}
	return g.Decrypt(h, in)
}

// isCustomSuite reports whether id is one of rsaGCMSuite's.
func isCustomSuite(id dtls.CipherSuiteID) bool {
	return id == suiteRSAWithAES128GCMSHA256 || id == suiteRSAWithAES256GCMSHA384
}
