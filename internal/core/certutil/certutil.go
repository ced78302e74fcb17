// Package certutil loads and makes TLS certificates for the gateway: PEM
// loading, a self-signed certificate for the embedded default, and the
// pin-sha256 fingerprint openconnect's --servercert takes.
package certutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// SelfSignedValidity is how long a generated certificate lasts: 397 days,
// the longest validity Apple platforms accept for a TLS server certificate.
const SelfSignedValidity = 397 * 24 * time.Hour

// SelfSigned makes an ECDSA P-256 certificate for hosts (DNS names or IP
// addresses) and returns it PEM-encoded with its key.
func SelfSigned(hosts []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, errors.New("certutil: no hosts")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)) // RFC 5280: at most 20 octets, positive
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hosts[0], Organization: []string{"Underpass self-signed"}},
		NotBefore:             now.Add(-time.Hour), // tolerate clients whose clock is a little behind
		NotAfter:              now.Add(SelfSignedValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if a, err := netip.ParseAddr(h); err == nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, a.AsSlice())
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// LoadOrCreate loads dir/cert.pem and dir/key.pem, creating a self-signed
// pair for hosts first if they do not exist. The key file is owner-only.
func LoadOrCreate(dir string, hosts []string) (*tls.Certificate, error) {
	cf, kf := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if _, err := os.Stat(cf); errors.Is(err, os.ErrNotExist) {
		c, k, err := SelfSigned(hosts, time.Now())
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(kf, k, 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(cf, c, 0o644); err != nil {
			return nil, err
		}
	}
	return LoadPEM(cf, kf)
}

// LoadPEM loads a certificate chain and its unencrypted private key.
func LoadPEM(certFile, keyFile string) (*tls.Certificate, error) {
	return Source{CertFile: certFile, KeyFile: keyFile}.Load()
}

// Pin returns openconnect's --servercert value for the leaf certificate:
// "pin-sha256:" + base64 of the SHA-256 of its SubjectPublicKeyInfo.
func Pin(c *tls.Certificate) (string, error) {
	leaf := c.Leaf
	if leaf == nil {
		if len(c.Certificate) == 0 {
			return "", errors.New("certutil: empty certificate")
		}
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return "", err
		}
	}
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	return "pin-sha256:" + base64.StdEncoding.EncodeToString(sum[:]), nil
}
