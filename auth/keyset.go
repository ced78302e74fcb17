package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

const (
	// maxJWKSBody bounds a JWKS response; real sets are a few KB.
	maxJWKSBody = 1 << 20
	// jwksFetchTimeout bounds one fetch, whoever is waiting for it.
	jwksFetchTimeout = 10 * time.Second
)

// keySet caches an IdP's signing keys (JWKS). A token whose kid is not
// cached triggers one refresh, at most once per minRefresh, so a flood of
// tokens with made-up kids cannot turn the gateway into a JWKS hammer.
// Keys older than maxAge are refreshed on next use; if that fails, the
// cached keys keep working (an IdP outage must not lock everyone out).
// It implements oidc.KeySet, and verify returns typed errors.
type keySet struct {
	url        string
	client     *http.Client
	algs       []jose.SignatureAlgorithm
	minRefresh time.Duration
	maxAge     time.Duration
	now        func() time.Time
	log        *slog.Logger

	mu          sync.Mutex
	keys        []jose.JSONWebKey
	fetched     time.Time     // last successful fetch
	lastAttempt time.Time     // last fetch started (rate limit)
	lastErr     error         // last fetch error, nil after success
	inflight    chan struct{} // closed when the running fetch ends
	closed      bool

	base context.Context // fetch lifetime; canceled by close
	stop context.CancelFunc
	bg   sync.WaitGroup
}

// VerifySignature implements oidc.KeySet.
func (ks *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	return ks.verify(ctx, jwt)
}

// verify checks a compact JWS against the key set and returns its payload.
func (ks *keySet) verify(ctx context.Context, raw string) ([]byte, error) {
	jws, err := jose.ParseSignedCompact(raw, ks.algs)
	if err != nil {
		if alg := headerAlg(raw); alg != "" && !slices.Contains(ks.algs, jose.SignatureAlgorithm(alg)) {
			return nil, &TokenError{Kind: ErrTokenAlgorithm, Detail: "alg " + alg}
		}
		return nil, &TokenError{Kind: ErrTokenMalformed}
	}
	if len(jws.Signatures) != 1 {
		return nil, &TokenError{Kind: ErrTokenMalformed, Detail: "want exactly one signature"}
	}
	sig := jws.Signatures[0].Header

	keys, stale := ks.cached()
	payload, found, err := verifyWith(jws, sig, keys)
	if found {
		// A key with this kid exists: the answer stands, no refresh (a
		// tampered token must not trigger network traffic).
		if stale {
			ks.refresh(ctx, false)
		}
		return payload, err
	}
	if rerr := ks.refresh(ctx, true); rerr != nil && len(keys) == 0 {
		return nil, &UnavailableError{What: "no signing keys (JWKS fetch failed)", Cause: rerr}
	}
	keys, _ = ks.cached()
	if len(keys) == 0 {
		return nil, &UnavailableError{What: "the identity provider publishes no usable signing keys"}
	}
	payload, found, err = verifyWith(jws, sig, keys)
	if !found {
		return nil, &TokenError{Kind: ErrTokenUnknownKey}
	}
	return payload, err
}

// verifyWith tries the keys matching the token's kid (all keys if it has
// none). found reports whether any candidate existed.
func verifyWith(jws *jose.JSONWebSignature, h jose.Header, keys []jose.JSONWebKey) (payload []byte, found bool, err error) {
	for i := range keys {
		k := &keys[i]
		if h.KeyID != "" && k.KeyID != h.KeyID {
			continue
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if k.Algorithm != "" && k.Algorithm != h.Algorithm {
			continue
		}
		found = true
		if p, err := jws.Verify(k.Public().Key); err == nil {
			return p, true, nil
		}
	}
	if !found {
		return nil, false, nil
	}
	return nil, true, &TokenError{Kind: ErrTokenSignature}
}

func (ks *keySet) cached() (keys []jose.JSONWebKey, stale bool) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.keys, ks.maxAge > 0 && ks.now().Sub(ks.fetched) > ks.maxAge
}

// refresh fetches the JWKS unless one was attempted within minRefresh (then
// it returns the last error). Concurrent callers share one fetch. If wait
// is false the fetch (if due) runs in the background and refresh returns
// at once: a stale cache must not slow down sign-ins.
func (ks *keySet) refresh(ctx context.Context, wait bool) error {
	ks.mu.Lock()
	if ch := ks.inflight; ch != nil {
		ks.mu.Unlock()
		if !wait {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		ks.mu.Lock()
		defer ks.mu.Unlock()
		return ks.lastErr
	}
	now := ks.now()
	if !ks.lastAttempt.IsZero() && now.Sub(ks.lastAttempt) < ks.minRefresh {
		err := ks.lastErr
		ks.mu.Unlock()
		return err
	}
	if ks.closed {
		ks.mu.Unlock()
		return errors.New("JWKS: verifier closed")
	}
	ks.lastAttempt = now
	ch := make(chan struct{})
	ks.inflight = ch
	ks.bg.Add(1)
	ks.mu.Unlock()

	go ks.runFetch(ch)
	if !wait {
		return nil
	}
	select {
	case <-ch:
	case <-ctx.Done():
		return ctx.Err()
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.lastErr
}

// runFetch performs the fetch started by refresh. It is bounded by its own
// timeout and the verifier's lifetime, not the caller's context, so one
// impatient client cannot poison the shared result.
func (ks *keySet) runFetch(ch chan struct{}) {
	defer ks.bg.Done()
	fctx, cancel := context.WithTimeout(ks.base, jwksFetchTimeout)
	keys, err := ks.fetch(fctx)
	cancel()

	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.inflight = nil
	close(ch)
	ks.lastErr = err
	if err != nil {
		ks.log.Warn("auth: JWKS fetch failed; keeping cached keys", "url", ks.url, "cached", len(ks.keys), "err", err)
		return
	}
	ks.keys = keys
	ks.fetched = ks.now()
	ks.log.Debug("auth: JWKS fetched", "url", ks.url, "keys", len(keys))
}

// close stops background fetches and waits for them.
func (ks *keySet) close() {
	ks.mu.Lock()
	ks.closed = true
	ks.mu.Unlock()
	ks.stop()
	ks.bg.Wait()
}

// fetch downloads and parses the key set, skipping keys it cannot use
// (unknown types, encryption keys) rather than failing the whole set.
func (ks *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ks.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := ks.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBody+1))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS: HTTP %s", resp.Status)
	}
	if len(body) > maxJWKSBody {
		return nil, errors.New("JWKS: response too large")
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	var keys []jose.JSONWebKey
	for _, rk := range set.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(rk); err != nil || !k.Valid() {
			continue
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		keys = append(keys, k.Public())
	}
	if len(keys) == 0 {
		return nil, errors.New("JWKS: no usable signing keys")
	}
	return keys, nil
}

// headerAlg returns the alg of a compact JWS's header, or "".
func headerAlg(raw string) string {
	var h struct {
		Alg string `json:"alg"`
	}
	if err := decodeSegment(raw, 0, &h); err != nil {
		return ""
	}
	return h.Alg
}
