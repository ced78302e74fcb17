package acdtls

// The data path's record layer. pion runs the handshake (and keeps
// handling alerts and handshake retransmissions); once it is done, the
// gateway seals and opens application-data records itself: pion's Conn
// starts a goroutine for every Write and for every read of its socket
// (pion/transport netctx) and allocates per record, which at ~1400-byte
// packets cost the DTLS path 40 % of its throughput against CSTP at the
// same MTU (BENCHMARKS.md). Done here: PSK AES-128-GCM (openconnect's
// PSK-NEGOTIATE) and ECDHE-RSA AES-GCM (openconnect on TLS 1.2); the
// other suites stay on pion's Conn.

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"hash"
	"sync/atomic"

	"github.com/pion/dtls/v3"
	"github.com/pion/dtls/v3/pkg/crypto/prf"
)

// DTLS 1.2 AEAD record layout (RFC 6347 §4.1, RFC 5288 §3).
const (
	explicitNonceLen = 8 // per-record part of the GCM nonce, sent in clear
	gcmTagLen        = 16
	// RecordOverhead is what a sealed record adds to its plaintext.
	RecordOverhead = recordHeaderLen + explicitNonceLen + gcmTagLen

	contentApplicationData = 23
	// maxSequence: DTLS sequence numbers are 48 bits (RFC 6347 §4.1).
	maxSequence = 1<<48 - 1
	// firstSendSequence is where this layer's outbound sequence numbers
	// start. pion keeps its own counter for the records it still sends
	// (an alert, a retransmitted Finished) under the same keys; starting
	// 2^32 above it means the two never use one GCM nonce twice (pion
	// would need four billion records to get there), and the client's
	// replay window just slides forward.
	firstSendSequence = 1 << 32
	// replayWindowSize is the anti-replay window (RFC 6347 §4.1.2.6): 64
	// records, the RFC's minimum and what a uint64 bitmap holds.
	replayWindowSize = 64
)

// Errors of Record.Open.
var (
	ErrNotAppData  = errors.New("acdtls: not an application-data record of the current epoch")
	ErrShortRecord = errors.New("acdtls: truncated record")
	ErrReplay      = errors.New("acdtls: replayed or too old record")
	ErrAuth        = errors.New("acdtls: record authentication failed")
	// ErrSuite is NewServerRecord's answer for a suite this layer does
	// not do: keep using pion's Conn.
	ErrSuite = errors.New("acdtls: cipher suite not handled by the fast record layer")
)

// Record seals and opens the application-data records of one established
// server-side DTLS 1.2 connection. Seal is safe for concurrent use (each
// caller brings its own buffer); Open is not (one reader per connection:
// it updates the replay window).
type Record struct {
	send, recv         cipher.AEAD
	sendSalt, recvSalt [4]byte
	epoch              uint16
	seq                atomic.Uint64 // next outbound sequence number
	window             uint64        // bit i: sequence number top-i seen
	top                uint64        // highest sequence number opened
	seen               bool
}

// exportedState mirrors the fields of pion's gob-encoded State
// (State.MarshalBinary, its documented export for resumption) that the
// record layer needs; gob matches fields by name.
type exportedState struct {
	HandshakeComplete bool
	LocalEpoch        uint16
	LocalRandom       [32]byte
	RemoteRandom      [32]byte
	CipherSuiteID     uint16
	MasterSecret      []byte
	IsClient          bool
}

// gcmSuite gives a GCM suite's key length and PRF hash.
func gcmSuite(id dtls.CipherSuiteID) (keyLen int, h func() hash.Hash, ok bool) {
	switch id {
	case dtls.TLS_PSK_WITH_AES_128_GCM_SHA256, dtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		suiteRSAWithAES128GCMSHA256:
		return 16, sha256.New, true
	case dtls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, suiteRSAWithAES256GCMSHA384:
		return 32, sha512.New384, true
	}
	return 0, nil, false
}

// NewServerRecord takes over the data records of conn, a server-side
// connection whose handshake is complete. It fails with ErrSuite for a
// suite it does not handle (the caller keeps using conn), or when pion's
// state cannot be read.
func NewServerRecord(conn *dtls.Conn) (*Record, error) {
	st, ok := conn.ConnectionState()
	if !ok {
		return nil, errors.New("acdtls: no connection state")
	}
	if _, _, ok := gcmSuite(st.CipherSuiteID); !ok || isCustomSuite(st.CipherSuiteID) {
		// pion cannot export the state of a custom suite (its clone looks
		// suites up among the built-in ones): the RSA AES-GCM legacy
		// suites stay on pion's Conn.
		return nil, ErrSuite
	}
	b, err := st.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("acdtls: export state: %w", err)
	}
	var es exportedState
	if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&es); err != nil {
		return nil, fmt.Errorf("acdtls: decode state: %w", err)
	}
	if !es.HandshakeComplete || es.IsClient || len(es.MasterSecret) != MasterSecretLen {
		return nil, errors.New("acdtls: not a completed server handshake")
	}
	return newRecord(dtls.CipherSuiteID(es.CipherSuiteID), es.MasterSecret, es.RemoteRandom[:], es.LocalRandom[:], es.LocalEpoch, false)
}

// newRecord derives the keys (RFC 5246 §6.3 key block, through pion's
// PRF) for the client or the server side.
func newRecord(id dtls.CipherSuiteID, master, clientRandom, serverRandom []byte, epoch uint16, isClient bool) (*Record, error) {
	keyLen, h, ok := gcmSuite(id)
	if !ok {
		return nil, ErrSuite
	}
	keys, err := prf.GenerateEncryptionKeys(master, clientRandom, serverRandom, 0, keyLen, 4, h)
	if err != nil {
		return nil, err
	}
	mk := func(key []byte) (cipher.AEAD, error) {
		blk, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(blk)
	}
	r := &Record{epoch: epoch}
	sendKey, recvKey, sendIV, recvIV := keys.ServerWriteKey, keys.ClientWriteKey, keys.ServerWriteIV, keys.ClientWriteIV
	if isClient {
		sendKey, recvKey, sendIV, recvIV = recvKey, sendKey, recvIV, sendIV
	}
	if r.send, err = mk(sendKey); err != nil {
		return nil, err
	}
	if r.recv, err = mk(recvKey); err != nil {
		return nil, err
	}
	copy(r.sendSalt[:], sendIV)
	copy(r.recvSalt[:], recvIV)
	r.seq.Store(firstSendSequence)
	return r, nil
}

// Seal appends to dst one application-data record carrying plaintext and
// returns the extended slice (len(plaintext)+RecordOverhead bytes more).
// dst and plaintext must not overlap.
func (r *Record) Seal(dst, plaintext []byte) []byte {
	seq := r.seq.Add(1) - 1 // 2^48-2^32 records before it would wrap: never
	n := len(dst)
	dst = append(dst, make([]byte, recordHeaderLen+explicitNonceLen)...)
	h := dst[n : n+recordHeaderLen]
	h[0] = contentApplicationData
	h[1], h[2] = 0xfe, 0xfd // DTLS 1.2
	binary.BigEndian.PutUint64(h[3:11], uint64(r.epoch)<<48|seq)
	binary.BigEndian.PutUint16(h[11:13], uint16(explicitNonceLen+len(plaintext)+gcmTagLen))
	explicit := dst[n+recordHeaderLen:]
	copy(explicit, h[3:11]) // epoch||seq: unique per record
	var nonce [12]byte
	copy(nonce[:4], r.sendSalt[:])
	copy(nonce[4:], explicit)
	var aad [13]byte
	copy(aad[:11], h[3:11])
	aad[8] = contentApplicationData
	aad[9], aad[10] = 0xfe, 0xfd
	binary.BigEndian.PutUint16(aad[11:], uint16(len(plaintext)))
	return r.send.Seal(dst, nonce[:], plaintext, aad[:])
}

// Open decrypts the first record of d in place and returns its plaintext
// and the rest of the datagram (further records). ErrNotAppData: the
// record is something else (a handshake message, an alert, another
// epoch) for pion to handle; ErrShortRecord, ErrReplay, ErrAuth: drop it.
// Only an authenticated record moves the replay window.
func (r *Record) Open(d []byte) (plaintext, rest []byte, err error) {
	if len(d) < recordHeaderLen {
		return nil, nil, ErrShortRecord
	}
	n := int(binary.BigEndian.Uint16(d[11:13]))
	if len(d) < recordHeaderLen+n {
		return nil, nil, ErrShortRecord
	}
	rec, rest := d[:recordHeaderLen+n], d[recordHeaderLen+n:]
	epochSeq := binary.BigEndian.Uint64(rec[3:11])
	if rec[0] != contentApplicationData || uint16(epochSeq>>48) != r.epoch {
		return nil, rest, ErrNotAppData
	}
	if n < explicitNonceLen+gcmTagLen {
		return nil, rest, ErrShortRecord
	}
	seq := epochSeq & maxSequence
	if !r.fresh(seq) {
		return nil, rest, ErrReplay
	}
	var nonce [12]byte
	copy(nonce[:4], r.recvSalt[:])
	copy(nonce[4:], rec[recordHeaderLen:recordHeaderLen+explicitNonceLen])
	var aad [13]byte
	copy(aad[:11], rec[3:11])
	aad[8] = contentApplicationData
	aad[9], aad[10] = rec[1], rec[2]
	ct := rec[recordHeaderLen+explicitNonceLen:]
	binary.BigEndian.PutUint16(aad[11:], uint16(len(ct)-gcmTagLen))
	pt, err := r.recv.Open(ct[:0], nonce[:], ct, aad[:])
	if err != nil {
		return nil, rest, ErrAuth
	}
	r.mark(seq)
	return pt, rest, nil
}

// fresh reports whether seq is new: above the highest seen, or inside the
// window and not yet seen.
func (r *Record) fresh(seq uint64) bool {
	if !r.seen || seq > r.top {
		return true
	}
	d := r.top - seq
	return d < replayWindowSize && r.window&(1<<d) == 0
}

// mark records seq as seen (after authentication).
func (r *Record) mark(seq uint64) {
	switch {
	case !r.seen:
		r.seen, r.top, r.window = true, seq, 1
	case seq > r.top:
		shift := seq - r.top
		if shift >= replayWindowSize {
			r.window = 1
		} else {
			r.window = r.window<<shift | 1
		}
		r.top = seq
	default:
		r.window |= 1 << (r.top - seq)
	}
}
