package auth

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// STRAP is the AnyConnect "STRAP" key exchange openconnect 9 uses for SSO
// v2 (shared/docs/sso.md §1, §4): the client sends a P-256 DH public key
// in X-AnyConnect-STRAP-DH-Pubkey, and the gateway hands the one-time SSO
// token back encrypted to it.

// maxSTRAPHeader bounds the header ParseSTRAPKey decodes: base64 of a
// P-256 SPKI is 124 characters; 1 KiB leaves room for other curves'
// encodings being refused with a clear error instead of truncated.
const maxSTRAPHeader = 1 << 10

// STRAPKey is a client's STRAP DH public key (P-256).
type STRAPKey struct {
	pub *ecdh.PublicKey
	der []byte // SPKI DER, as the client sent it
}

// ParseSTRAPKey decodes an X-AnyConnect-STRAP-DH-Pubkey header value:
// standard base64 (padded or not) of an SPKI DER P-256 public key. Any
// other shape is an error naming what is wrong.
func ParseSTRAPKey(h string) (*STRAPKey, error) {
	h = strings.TrimSpace(h)
	if h == "" {
		return nil, errors.New("auth: STRAP key: empty")
	}
	if len(h) > maxSTRAPHeader {
		return nil, fmt.Errorf("auth: STRAP key: %d characters, more than %d", len(h), maxSTRAPHeader)
	}
	der, err := base64.StdEncoding.DecodeString(h)
	if err != nil {
		if der, err = base64.RawStdEncoding.DecodeString(h); err != nil {
			return nil, errors.New("auth: STRAP key: not base64")
		}
	}
	return parseSTRAPDER(der)
}

func parseSTRAPDER(der []byte) (*STRAPKey, error) {
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, errors.New("auth: STRAP key: not an SPKI public key")
	}
	var pub *ecdh.PublicKey
	switch t := k.(type) {
	case *ecdsa.PublicKey:
		if pub, err = t.ECDH(); err != nil {
			return nil, fmt.Errorf("auth: STRAP key: %v", err)
		}
	case *ecdh.PublicKey:
		pub = t
	default:
		return nil, fmt.Errorf("auth: STRAP key: %T, want a P-256 key", k)
	}
	if pub.Curve() != ecdh.P256() {
		return nil, errors.New("auth: STRAP key: not on P-256")
	}
	return &STRAPKey{pub: pub, der: append([]byte(nil), der...)}, nil
}

// Hash is SHA-256 of the key's DER: what SSO state binds to.
func (k *STRAPKey) Hash() [32]byte { return sha256.Sum256(k.der) }

// STRAP token container (sso.md §4): be16 version 1, then TLVs.
const (
	strapVersion  = 1
	tlvPubKey     = 1
	tlvTag        = 2
	tlvCiphertext = 3
	tlvIV         = 4
	// strapTagSize: openconnect's hpke.c takes exactly 12 bytes of GCM
	// tag (a truncated tag, which crypto/cipher supports).
	strapTagSize = 12
	strapIVSize  = 12
)

// strapInfo is the HKDF info string openconnect uses.
const strapInfo = "AC_ECIES"

// sealToSTRAP encrypts token to the client's STRAP key: an ephemeral
// P-256 key, ECDH x-coordinate → HKDF-SHA256 (empty salt, info AC_ECIES,
// 32 bytes) → AES-256-GCM (no AAD, 12-byte tag), packed in the TLV
// container. The result is what the browser carries to the client's
// listener (base64 of it).
func sealToSTRAP(k *STRAPKey, token []byte) ([]byte, error) {
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	shared, err := eph.ECDH(k.pub)
	if err != nil {
		return nil, err
	}
	aead, err := strapAEAD(shared)
	if err != nil {
		return nil, err
	}
	iv := make([]byte, strapIVSize)
	_, _ = rand.Read(iv)
	sealed := aead.Seal(nil, iv, token, nil)
	ct, tag := sealed[:len(token)], sealed[len(token):]
	epub, err := x509.MarshalPKIXPublicKey(eph.PublicKey())
	if err != nil {
		return nil, err
	}
	out := binary.BigEndian.AppendUint16(nil, strapVersion)
	for _, f := range []struct {
		tag uint16
		v   []byte
	}{{tlvPubKey, epub}, {tlvTag, tag}, {tlvCiphertext, ct}, {tlvIV, iv}} {
		out = binary.BigEndian.AppendUint16(out, f.tag)
		out = binary.BigEndian.AppendUint16(out, uint16(len(f.v)))
		out = append(out, f.v...)
	}
	return out, nil
}

func strapAEAD(shared []byte) (cipher.AEAD, error) {
	key, err := hkdf.Key(sha256.New, shared, nil, strapInfo, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithTagSize(block, strapTagSize)
}

// OpenSTRAPBlob decrypts a container made for priv's public key: what
// openconnect does with the blob its listener receives. Test clients that
// play openconnect's side use it; the gateway never does.
func OpenSTRAPBlob(priv *ecdh.PrivateKey, blob []byte) ([]byte, error) {
	if len(blob) < 2 || binary.BigEndian.Uint16(blob) != strapVersion {
		return nil, errors.New("auth: STRAP blob: bad version")
	}
	f := map[uint16][]byte{}
	for b := blob[2:]; len(b) > 0; {
		if len(b) < 4 {
			return nil, errors.New("auth: STRAP blob: truncated TLV")
		}
		t, n := binary.BigEndian.Uint16(b), int(binary.BigEndian.Uint16(b[2:]))
		if len(b) < 4+n {
			return nil, errors.New("auth: STRAP blob: truncated TLV")
		}
		f[t], b = b[4:4+n], b[4+n:]
	}
	if len(f[tlvTag]) != strapTagSize || len(f[tlvIV]) != strapIVSize {
		return nil, errors.New("auth: STRAP blob: bad tag or IV size")
	}
	peer, err := parseSTRAPDER(f[tlvPubKey])
	if err != nil {
		return nil, err
	}
	shared, err := priv.ECDH(peer.pub)
	if err != nil {
		return nil, err
	}
	aead, err := strapAEAD(shared)
	if err != nil {
		return nil, err
	}
	return aead.Open(nil, f[tlvIV], append(append([]byte(nil), f[tlvCiphertext]...), f[tlvTag]...), nil)
}
