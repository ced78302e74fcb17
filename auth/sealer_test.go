package auth

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestSealer(t *testing.T) {
	clk := newFakeClock()
	k1, _ := ParseSealerKey(GenerateSealerKey())
	k2 := bytes.Repeat([]byte{7}, SealerKeySize)
	s1, err := NewSealer(clk.Now, k1)
	if err != nil {
		t.Fatal(err)
	}
	id := &Identity{User: "alice", Email: "a@x", Groups: []string{"vpn"}, DeviceID: "d1", Method: "token",
		Claims: map[string]any{"compliant": true, "big": strings.Repeat("x", 100)}, Expiry: clk.Now().Add(time.Hour)}
	sc := NewSessionClaims(id, []string{"compliant", "absent"}, clk.Now(), clk.Now().Add(30*time.Minute))
	sc.Address = netip.MustParseAddr("10.8.0.2")
	tok, err := s1.Seal(sc)
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(tok, ";=, \"") || strings.Contains(tok, "alice") {
		t.Fatalf("cookie value not opaque/safe: %q", tok)
	}
	got, err := s1.Open(tok)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != sc.ID || len(got.ID) != 32 || got.User != "alice" || got.Address != sc.Address || got.Claims["compliant"] != true || got.Claims["big"] != nil {
		t.Fatalf("round trip: %+v", got)
	}
	if rid := got.Identity(); rid.User != "alice" || rid.Method != "token" || !rid.Expiry.Equal(id.Expiry) {
		t.Fatalf("Identity: %+v", rid)
	}

	// Rotation: new key current, old key still accepted; then dropped.
	s2, _ := NewSealer(clk.Now, k2, k1)
	if _, err := s2.Open(tok); err != nil {
		t.Fatalf("previous key: %v", err)
	}
	tok2, _ := s2.Seal(sc)
	if _, err := s1.Open(tok2); !errors.Is(err, ErrSessionInvalid) {
		t.Fatalf("old-only sealer opened a new-key cookie: %v", err)
	}
	s3, _ := NewSealer(clk.Now, k2)
	if _, err := s3.Open(tok); !errors.Is(err, ErrSessionInvalid) {
		t.Fatalf("retired key still accepted: %v", err)
	}

	// Tampering anywhere fails.
	for i := range len(tok) {
		b := []byte(tok)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		if _, err := s1.Open(string(b)); err == nil {
			t.Fatalf("tampered byte %d accepted", i)
		}
	}
	for _, bad := range []string{"", "x", strings.Repeat("A", 100), strings.Repeat("A", 9000), tok + "=="} {
		if _, err := s1.Open(bad); !errors.Is(err, ErrSessionInvalid) {
			t.Errorf("%.20q: got %v", bad, err)
		}
	}

	clk.Add(31 * time.Minute)
	if _, err := s1.Open(tok); !errors.Is(err, ErrSessionExpired) {
		t.Fatalf("expired: got %v", err)
	}
}

func TestSealerConfig(t *testing.T) {
	if _, err := NewSealer(nil); err == nil {
		t.Error("no key accepted")
	}
	if _, err := NewSealer(nil, []byte("short")); err == nil {
		t.Error("short key accepted")
	}
	hexKey := strings.Repeat("ab", 32)
	if k, err := ParseSealerKey(hexKey); err != nil || k[0] != 0xab {
		t.Errorf("hex key: %v", err)
	}
	if _, err := ParseSealerKey("c2hvcnQ="); err == nil {
		t.Error("short base64 key accepted")
	}
	s, _ := NewSealer(nil, make([]byte, 32))
	if _, err := s.Seal(&SessionClaims{User: "x"}); err == nil {
		t.Error("sealed without ID/expiry")
	}
}

func TestSecretRedaction(t *testing.T) {
	var buf bytes.Buffer
	s := Secret("hunter2")
	for _, f := range []string{"%v", "%s", "%q", "%#v", "%x", "%d"} {
		buf.Reset()
		_, _ = fmtFprintf(&buf, f, s)
		if strings.Contains(buf.String(), "hunter2") || strings.Contains(buf.String(), "68756e") {
			t.Errorf("%s leaked: %s", f, buf.String())
		}
	}
	if r := Redact("eyJa.eyJb.c2ln"); r != "[jwt len=14]" {
		t.Errorf("Redact = %q", r)
	}
	if Redact("") != "" || strings.Contains(Redact("hunter2"), "hunter") {
		t.Error("Redact")
	}
}

var fmtFprintf = fmt.Fprintf

// TestDeriveKey: servers sharing a site key derive the same key for a
// purpose; another purpose or another site key gives an unrelated one.
func TestDeriveKey(t *testing.T) {
	k1, k2 := make([]byte, SealerKeySize), make([]byte, SealerKeySize)
	k2[0] = 1
	a, _ := NewSealer(nil, k1)
	b, _ := NewSealer(nil, k1, k2) // same current key, an older one accepted too
	c, _ := NewSealer(nil, k2)
	if a.DeriveKey("quic stateless reset") != b.DeriveKey("quic stateless reset") {
		t.Error("two servers with one site key derive different keys")
	}
	if a.DeriveKey("quic stateless reset") == a.DeriveKey("other") {
		t.Error("two purposes share a key")
	}
	if a.DeriveKey("quic stateless reset") == c.DeriveKey("quic stateless reset") {
		t.Error("two site keys derive the same key")
	}
	if a.DeriveKey("x") == [32]byte{} {
		t.Error("zero key")
	}
}
