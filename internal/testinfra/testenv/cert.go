package testenv

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/underpass/underpass/internal/core/certutil"
)

// Cert is a throwaway self-signed server certificate on disk.
type Cert struct {
	CertFile string // PEM certificate
	KeyFile  string // PEM private key
	Pin      string // "pin-sha256:...", for openconnect --servercert
}

// NewCert makes a self-signed ECDSA certificate for hosts (IP addresses or
// names) in a directory readable by unprivileged daemons (ocserv workers run
// as nobody).
func NewCert(t testing.TB, hosts ...string) *Cert {
	t.Helper()
	certPEM, keyPEM, err := certutil.SelfSigned(hosts, time.Now())
	if err != nil {
		t.Fatalf("testenv: cert: %v", err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &Cert{CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem")}
	if err := os.WriteFile(c.CertFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.KeyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	tc, err := certutil.LoadPEM(c.CertFile, c.KeyFile)
	if err != nil {
		t.Fatalf("testenv: cert: %v", err)
	}
	if c.Pin, err = certutil.Pin(tc); err != nil {
		t.Fatalf("testenv: cert pin: %v", err)
	}
	return c
}
