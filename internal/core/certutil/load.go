package certutil

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"software.sslmate.com/src/go-pkcs12"
)

// maxCertFile bounds a certificate file read: real chains are a few KiB.
const maxCertFile = 1 << 20

// ParsePEM builds a certificate from a PEM chain and an unencrypted PEM
// key, with clear errors for the usual mistakes.
func ParsePEM(certPEM, keyPEM []byte) (*tls.Certificate, error) {
	if !strings.Contains(string(certPEM), "-----BEGIN CERTIFICATE-----") {
		return nil, errors.New("certutil: no PEM certificate in the certificate file")
	}
	if b, _ := pem.Decode(keyPEM); b == nil {
		return nil, errors.New("certutil: no PEM private key in the key file")
	} else if strings.Contains(b.Type, "ENCRYPTED") || b.Headers["Proc-Type"] != "" {
		return nil, errors.New("certutil: the private key is encrypted; give an unencrypted key (openssl pkey -in key.pem -out site.key)")
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		if strings.Contains(err.Error(), "does not match") {
			return nil, errors.New("certutil: the private key does not match the certificate")
		}
		return nil, fmt.Errorf("certutil: %w", err)
	}
	return &c, nil
}

// ParsePFX builds a certificate from a PKCS#12 (.pfx/.p12) file: the leaf,
// its key and any chain certificates it carries.
func ParsePFX(data []byte, password string) (*tls.Certificate, error) {
	key, leaf, chain, err := pkcs12.DecodeChain(data, password)
	if err != nil {
		if errors.Is(err, pkcs12.ErrIncorrectPassword) {
			return nil, errors.New("certutil: PFX: wrong password")
		}
		return nil, fmt.Errorf("certutil: PFX: %w", err)
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: leaf, Certificate: [][]byte{leaf.Raw}}
	for _, ca := range chain {
		c.Certificate = append(c.Certificate, ca.Raw)
	}
	if !keyMatches(leaf, key) {
		return nil, errors.New("certutil: PFX: the private key does not match the certificate")
	}
	return c, nil
}

// ReadPasswordFile reads a PFX password from a file, without the line
// ending an editor or `echo` leaves at its end.
func ReadPasswordFile(name string) (string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return "", fmt.Errorf("certutil: password file: %w", err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// Source names where a certificate comes from: PEM files or a PFX file.
type Source struct {
	CertFile, KeyFile string // PEM: full chain, unencrypted key
	PFXFile           string // or PKCS#12
	PFXPassword       string
}

// Load reads the certificate the source names.
func (s Source) Load() (*tls.Certificate, error) {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(name)
		if err == nil && len(b) > maxCertFile {
			err = fmt.Errorf("larger than %d bytes", maxCertFile)
		}
		if err != nil {
			return nil, fmt.Errorf("certutil: %s: %w", name, err)
		}
		return b, nil
	}
	if s.PFXFile != "" {
		b, err := read(s.PFXFile)
		if err != nil {
			return nil, err
		}
		return ParsePFX(b, s.PFXPassword)
	}
	c, err := read(s.CertFile)
	if err != nil {
		return nil, err
	}
	k, err := read(s.KeyFile)
	if err != nil {
		return nil, err
	}
	return ParsePEM(c, k)
}

// Leaf returns the parsed leaf of c.
func Leaf(c *tls.Certificate) (*x509.Certificate, error) {
	if c.Leaf != nil {
		return c.Leaf, nil
	}
	if len(c.Certificate) == 0 {
		return nil, errors.New("certutil: empty certificate")
	}
	return x509.ParseCertificate(c.Certificate[0])
}
