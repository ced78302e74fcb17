package auth

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// SessionClaims is what a sealed session cookie carries, so any gateway of
// a site sharing the key can resume the session without a new sign-in.
// Keep it small: it travels in every reconnect (Claims should hold only
// what the policy re-checks; see Rules.ClaimNames).
type SessionClaims struct {
	ID       string         `json:"sid"`
	User     string         `json:"u"`
	Email    string         `json:"e,omitempty"`
	Subject  string         `json:"s,omitempty"`
	Groups   []string       `json:"g,omitempty"`
	Roles    []string       `json:"r,omitempty"`
	Overage  bool           `json:"go,omitempty"` // Identity.GroupsOverage
	DeviceID string         `json:"d,omitempty"`
	Method   string         `json:"m,omitempty"`
	Address  netip.Addr     `json:"a,omitzero"`  // assigned tunnel address
	Address6 netip.Addr     `json:"a6,omitzero"` // a dual-stack session's IPv6 tunnel address (zero: IPv4 only)
	Claims   map[string]any `json:"c,omitempty"`
	IssuedAt time.Time      `json:"iat"`
	Expiry   time.Time      `json:"exp"`
	// TokenExpiry is when the sign-in credential expires (zero: none);
	// Expiry is already capped to it unless configured otherwise.
	TokenExpiry time.Time `json:"tex,omitzero"`
	// Refresh is Identity.Refresh (itself sealed), so any server of the
	// site can renew the sign-in.
	Refresh string `json:"rf,omitempty"`
}

// NewSessionClaims copies an identity into session claims, keeping only
// the named token claims. It sets a fresh 128-bit random ID.
func NewSessionClaims(id *Identity, keepClaims []string, issued, expiry time.Time) *SessionClaims {
	sc := &SessionClaims{
		ID:          RandomID(),
		User:        id.User,
		Email:       id.Email,
		Subject:     id.Subject,
		Groups:      append([]string(nil), id.Groups...),
		Roles:       append([]string(nil), id.Roles...),
		Overage:     id.GroupsOverage,
		DeviceID:    id.DeviceID,
		Method:      id.Method,
		IssuedAt:    issued,
		Expiry:      expiry,
		TokenExpiry: id.Expiry,
		Refresh:     id.Refresh,
	}
	for _, k := range keepClaims {
		if v, ok := id.Claims[k]; ok {
			if sc.Claims == nil {
				sc.Claims = make(map[string]any)
			}
			sc.Claims[k] = v
		}
	}
	return sc
}

// Identity rebuilds the identity for a policy re-check on resume.
func (sc *SessionClaims) Identity() *Identity {
	return &Identity{
		User:          sc.User,
		Email:         sc.Email,
		Subject:       sc.Subject,
		Groups:        append([]string(nil), sc.Groups...),
		Roles:         append([]string(nil), sc.Roles...),
		GroupsOverage: sc.Overage,
		DeviceID:      sc.DeviceID,
		Claims:        sc.Claims,
		Expiry:        sc.TokenExpiry,
		Method:        sc.Method,
		Refresh:       sc.Refresh,
	}
}

// RandomID returns 128 random bits, hex encoded: a session ID or an opaque
// server-side cookie.
func RandomID() string {
	var b [16]byte // 128 bits: unguessable (issue item 4's minimum)
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// SealerKeySize is the key length: XChaCha20-Poly1305 takes 32 bytes.
const SealerKeySize = chacha20poly1305.KeySize

const (
	sealVersion = 1
	keyIDLen    = 4 // bytes of SHA-256(key) naming the key, to pick it without trial decryption
	// maxSealed bounds the input Open decodes, so a hostile cookie cannot
	// cost more than this; 8 KiB fits any sane session with claims.
	maxSealed = 8 << 10
)

// sealAAD binds ciphertexts to this purpose, so a key shared with another
// use cannot have its ciphertexts replayed as sessions.
var sealAAD = []byte("underpass session v1")

// Session errors; both mean "sign in again".
var (
	ErrSessionInvalid = errors.New("auth: session cookie invalid")
	ErrSessionExpired = errors.New("auth: session expired")
)

// Sealer seals SessionClaims into an opaque, authenticated, encrypted
// cookie value with XChaCha20-Poly1305 (192-bit random nonces: no nonce
// bookkeeping across servers). Keys rotate: Seal uses the first key, Open
// accepts any. The output is unpadded base64url (no ';', '=' or ',').
type Sealer struct {
	keys []sealKey
	now  func() time.Time
	// prk is HKDF-Extract of the current key (RFC 5869 2.2), for
	// DeriveKey.
	prk []byte
}

type sealKey struct {
	id   [keyIDLen]byte
	aead cipher.AEAD
}

// NewSealer takes the current key first, then previous keys still
// accepted. now may be nil (time.Now).
func NewSealer(now func() time.Time, keys ...[]byte) (*Sealer, error) {
	if len(keys) == 0 {
		return nil, errors.New("auth: sealer: no key")
	}
	if now == nil {
		now = time.Now
	}
	s := &Sealer{now: now}
	for i, k := range keys {
		if len(k) != SealerKeySize {
			return nil, fmt.Errorf("auth: sealer: key %d is %d bytes, want %d", i, len(k), SealerKeySize)
		}
		a, err := chacha20poly1305.NewX(k)
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(k)
		sk := sealKey{aead: a}
		copy(sk.id[:], sum[:])
		s.keys = append(s.keys, sk)
	}
	var err error
	if s.prk, err = hkdf.Extract(sha256.New, keys[0], []byte("underpass sealer")); err != nil {
		return nil, err
	}
	return s, nil
}

// DeriveKey returns a 32-byte key for purpose (a constant naming its use,
// e.g. "quic stateless reset"), derived from the current sealing key with
// HKDF-SHA256 (RFC 5869): every server of a site that shares the key
// derives the same one, a restarted server too, and it reveals nothing
// about the sealing key or keys for other purposes.
func (s *Sealer) DeriveKey(purpose string) [32]byte {
	var k [32]byte
	b, err := hkdf.Expand(sha256.New, s.prk, purpose, len(k))
	if err != nil { // cannot happen: 32 bytes is far below HKDF-SHA256's 8160-byte limit
		panic(err)
	}
	copy(k[:], b)
	return k
}

// ParseSealerKey decodes a configured key: 64 hex digits or base64 (std or
// URL, padded or not) of 32 bytes.
func ParseSealerKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if len(s) == 2*SealerKeySize {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == SealerKeySize {
			return b, nil
		}
	}
	return nil, fmt.Errorf("auth: session key must be %d bytes as hex or base64", SealerKeySize)
}

// GenerateSealerKey returns a new random key, base64 encoded for a config.
func GenerateSealerKey() string {
	var b [SealerKeySize]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// Seal encrypts the claims with the current key.
func (s *Sealer) Seal(sc *SessionClaims) (string, error) {
	if sc == nil || sc.ID == "" || sc.Expiry.IsZero() {
		return "", errors.New("auth: seal: session needs an ID and an expiry")
	}
	pt, err := json.Marshal(sc)
	if err != nil {
		return "", fmt.Errorf("auth: seal: %w", err)
	}
	raw, err := s.sealBytes(sealAAD, pt)
	if err != nil {
		return "", err
	}
	out := base64.RawURLEncoding.EncodeToString(raw)
	if len(out) > maxSealed {
		return "", fmt.Errorf("auth: seal: session too large (%d bytes); keep fewer claims", len(out))
	}
	return out, nil
}

// sealBytes encrypts pt with the current key: version, key ID, nonce,
// ciphertext. aad names the purpose, so a value sealed for one purpose
// never opens as another.
func (s *Sealer) sealBytes(aad, pt []byte) ([]byte, error) {
	k := s.keys[0]
	hdr := append([]byte{sealVersion}, k.id[:]...)
	buf := make([]byte, len(hdr), len(hdr)+chacha20poly1305.NonceSizeX+len(pt)+k.aead.Overhead())
	copy(buf, hdr)
	nonce := make([]byte, chacha20poly1305.NonceSizeX)
	_, _ = rand.Read(nonce)
	buf = append(buf, nonce...)
	return k.aead.Seal(buf, nonce, pt, append(hdr, aad...)), nil
}

// openBytes authenticates and decrypts what sealBytes made with the same
// aad; any failure is ErrSessionInvalid.
func (s *Sealer) openBytes(aad, raw []byte) ([]byte, error) {
	hdrLen := 1 + keyIDLen
	if len(raw) < hdrLen+chacha20poly1305.NonceSizeX+chacha20poly1305.Overhead || raw[0] != sealVersion {
		return nil, ErrSessionInvalid
	}
	hdr, nonce, ct := raw[:hdrLen], raw[hdrLen:hdrLen+chacha20poly1305.NonceSizeX], raw[hdrLen+chacha20poly1305.NonceSizeX:]
	for _, k := range s.keys {
		if string(k.id[:]) != string(hdr[1:]) {
			continue
		}
		pt, err := k.aead.Open(nil, nonce, ct, append(append([]byte(nil), hdr...), aad...))
		if err != nil {
			return nil, ErrSessionInvalid
		}
		return pt, nil
	}
	return nil, ErrSessionInvalid
}

// Open authenticates and decrypts a sealed cookie and checks its expiry.
// Errors are ErrSessionInvalid or ErrSessionExpired (never the contents).
func (s *Sealer) Open(v string) (*SessionClaims, error) {
	if len(v) > maxSealed {
		return nil, ErrSessionInvalid
	}
	raw, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil {
		return nil, ErrSessionInvalid
	}
	pt, err := s.openBytes(sealAAD, raw)
	if err != nil {
		return nil, err
	}
	var sc SessionClaims
	if err := json.Unmarshal(pt, &sc); err != nil || sc.ID == "" {
		return nil, ErrSessionInvalid
	}
	if !s.now().Before(sc.Expiry) {
		return nil, ErrSessionExpired
	}
	return &sc, nil
}
