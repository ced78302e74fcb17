package auth

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"strings"
	"testing"
)

func strapPair(t testing.TB) (*ecdh.PrivateKey, string) {
	t.Helper()
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(k.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	return k, base64.StdEncoding.EncodeToString(der)
}

func TestParseSTRAPKey(t *testing.T) {
	_, good := strapPair(t)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der384, _ := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	x, _ := ecdh.X25519().GenerateKey(rand.Reader)
	derX, _ := x509.MarshalPKIXPublicKey(x.PublicKey())
	for _, tc := range []struct {
		name, in, err string
	}{
		{"P-256 SPKI", good, ""},
		{"unpadded", strings.TrimRight(good, "="), ""},
		{"empty", "", "empty"},
		{"not base64", "!!!", "not base64"},
		{"not SPKI", base64.StdEncoding.EncodeToString([]byte("hello")), "not an SPKI"},
		{"P-384", base64.StdEncoding.EncodeToString(der384), "P-256"},
		{"X25519", base64.StdEncoding.EncodeToString(derX), "P-256"},
		{"huge", strings.Repeat("A", 2000), "more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseSTRAPKey(tc.in)
			if tc.err == "" {
				if err != nil || k == nil {
					t.Fatalf("%v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want %q", err, tc.err)
			}
		})
	}
}

// TestSTRAPContainer checks the container's layout (sso.md §4) and that
// only the client's key opens it.
func TestSTRAPContainer(t *testing.T) {
	priv, hdr := strapPair(t)
	k, err := ParseSTRAPKey(hdr)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := sealToSTRAP(k, []byte("abc123XYZ"))
	if err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint16(blob) != 1 {
		t.Fatalf("version %x", blob[:2])
	}
	var tags []uint16
	var lens []int
	for b := blob[2:]; len(b) > 0; {
		n := int(binary.BigEndian.Uint16(b[2:]))
		tags, lens = append(tags, binary.BigEndian.Uint16(b)), append(lens, n)
		b = b[4+n:]
	}
	if len(tags) != 4 || tags[0] != 1 || lens[0] != 91 || tags[1] != 2 || lens[1] != 12 || tags[2] != 3 || lens[2] != 9 || tags[3] != 4 || lens[3] != 12 {
		t.Fatalf("TLVs %v lengths %v", tags, lens)
	}
	got, err := OpenSTRAPBlob(priv, blob)
	if err != nil || string(got) != "abc123XYZ" {
		t.Fatalf("%q %v", got, err)
	}
	other, _ := strapPair(t)
	if _, err := OpenSTRAPBlob(other, blob); err == nil {
		t.Fatal("another key opened the token")
	}
}

// FuzzParseSTRAPKey: the STRAP header is client bytes; parsing must never
// panic and must accept only P-256 keys.
func FuzzParseSTRAPKey(f *testing.F) {
	_, good := strapPair(f)
	f.Add(good)
	f.Add("")
	f.Add("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseSTRAPKey(s)
		if err == nil && k.pub.Curve() != ecdh.P256() {
			t.Fatal("accepted a non-P-256 key")
		}
	})
}

// FuzzOpenSTRAPBlob: the test clients' container parser takes bytes from
// the network (the browser's redirect); it must never panic.
func FuzzOpenSTRAPBlob(f *testing.F) {
	priv, hdr := strapPair(f)
	k, _ := ParseSTRAPKey(hdr)
	blob, _ := sealToSTRAP(k, []byte("token1"))
	f.Add(blob)
	f.Add([]byte{0, 1, 0, 2, 0, 12})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = OpenSTRAPBlob(priv, b)
	})
}
