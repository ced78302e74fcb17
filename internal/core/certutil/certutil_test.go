package certutil

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSelfSignedLoadAndPin(t *testing.T) {
	dir := t.TempDir()
	c1, err := LoadOrCreate(dir, []string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c1.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Errorf("IP SAN: %v", err)
	}
	if err := leaf.VerifyHostname("localhost"); err != nil {
		t.Errorf("DNS SAN: %v", err)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d > SelfSignedValidity+2*time.Hour {
		t.Errorf("validity %v too long", d)
	}
	st, err := os.Stat(filepath.Join(dir, "key.pem"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode: %v %v", st.Mode(), err)
	}
	// A second call loads the same pair instead of making a new one.
	c2, err := LoadOrCreate(dir, []string{"other"})
	if err != nil {
		t.Fatal(err)
	}
	p1, _ := Pin(c1)
	p2, _ := Pin(c2)
	if p1 != p2 || !strings.HasPrefix(p1, "pin-sha256:") || len(p1) != len("pin-sha256:")+44 {
		t.Errorf("pins %q %q", p1, p2)
	}
}

func TestErrors(t *testing.T) {
	if _, _, err := SelfSigned(nil, time.Now()); err == nil {
		t.Error("no hosts: want error")
	}
	if _, err := LoadPEM("/nonexistent/c", "/nonexistent/k"); err == nil {
		t.Error("missing files: want error")
	}
	if _, err := Pin(&tls.Certificate{}); err == nil {
		t.Error("empty cert: want error")
	}
}
