package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"testing"
	"time"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{c, key}
}

// upnSAN builds a subjectAltName with a UPN otherName and an e-mail.
func upnSAN(t *testing.T, upn, email string) []byte {
	t.Helper()
	utf8, _ := asn1.MarshalWithParams(upn, "utf8")
	val, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: utf8})
	oid, _ := asn1.Marshal(oidUPN)
	other, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: append(oid, val...)})
	mail, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 1, Bytes: []byte(email)})
	seq, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: append(other, mail...)})
	return seq
}

func (ca *testCA) issue(t *testing.T, mod func(*x509.Certificate)) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "alice-cn", OrganizationalUnit: []string{"vpn-users"}},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
	}
	if mod != nil {
		mod(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestCertificates(t *testing.T) {
	ca := newTestCA(t, "Underpass Test CA")
	other := newTestCA(t, "Other CA")
	pool, err := LoadCertPool(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}))
	if err != nil {
		t.Fatal(err)
	}
	withUPN := func(c *x509.Certificate) {
		c.ExtraExtensions = []pkix.Extension{{Id: oidSAN, Value: upnSAN(t, "alice@corp.example", "alice@mail.example")}}
	}
	withEmail := func(c *x509.Certificate) { c.EmailAddresses = []string{"alice@mail.example"} }

	tests := []struct {
		name     string
		from     []string
		chain    []*x509.Certificate
		wantUser string
		wantErr  error
	}{
		{"upn first", nil, []*x509.Certificate{ca.issue(t, withUPN)}, "alice@corp.example", nil},
		{"email when no upn", nil, []*x509.Certificate{ca.issue(t, withEmail)}, "alice@mail.example", nil},
		{"cn fallback", nil, []*x509.Certificate{ca.issue(t, nil)}, "alice-cn", nil},
		{"cn configured first", []string{"cn", "upn"}, []*x509.Certificate{ca.issue(t, withUPN)}, "alice-cn", nil},
		{"email only configured", []string{"email"}, []*x509.Certificate{ca.issue(t, withUPN)}, "alice@mail.example", nil},
		{"no usable name", []string{"upn"}, []*x509.Certificate{ca.issue(t, withEmail)}, "", ErrInvalidCredentials},
		{"untrusted CA", nil, []*x509.Certificate{other.issue(t, nil)}, "", ErrInvalidCredentials},
		{"server-auth only", nil, []*x509.Certificate{ca.issue(t, func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		})}, "", ErrInvalidCredentials},
		{"expired", nil, []*x509.Certificate{ca.issue(t, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		})}, "", ErrInvalidCredentials},
		{"no certificate", nil, nil, "", ErrNotApplicable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := NewCertificates(CertConfig{CAs: pool, IdentityFrom: tt.from, GroupsFromOU: true})
			if err != nil {
				t.Fatal(err)
			}
			id, err := a.Authenticate(context.Background(), Credentials{PeerCertificates: tt.chain})
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || id.User != tt.wantUser || id.Method != "certificate" || id.Groups[0] != "vpn-users" {
				t.Fatalf("%+v, %v", id, err)
			}
		})
	}

	revoked := ca.issue(t, nil)
	a, _ := NewCertificates(CertConfig{CAs: pool, Revoked: func(c *x509.Certificate) bool { return c.SerialNumber.Cmp(revoked.SerialNumber) == 0 }})
	if _, err := a.Authenticate(context.Background(), Credentials{PeerCertificates: []*x509.Certificate{revoked}}); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("revoked: %v", err)
	}
	if a.ClientAuth() != tls.VerifyClientCertIfGiven {
		t.Error("optional mode")
	}
	req, _ := NewCertificates(CertConfig{CAs: pool, Required: true})
	var tc tls.Config
	req.ConfigureTLS(&tc)
	if tc.ClientAuth != tls.RequireAndVerifyClientCert || tc.ClientCAs != pool || req.ClientCAs() != pool {
		t.Error("required mode")
	}
	if _, err := NewCertificates(CertConfig{}); err == nil {
		t.Error("no CA accepted")
	}
	if _, err := NewCertificates(CertConfig{CAs: pool, IdentityFrom: []string{"dn"}}); err == nil {
		t.Error("bad source accepted")
	}
	if _, err := LoadCertPool([]byte("nope")); err == nil {
		t.Error("empty bundle accepted")
	}
}

// TestDeviceCertificates: in device mode a certificate signs nobody in;
// Device names the device by CN (else serial) and refuses missing,
// untrusted and revoked certificates.
func TestDeviceCertificates(t *testing.T) {
	ca := newTestCA(t, "Underpass Test CA")
	other := newTestCA(t, "Other CA")
	pool, _ := LoadCertPool(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}))
	revoked := ca.issue(t, func(c *x509.Certificate) { c.Subject.CommonName = "stolen" })
	a, err := NewCertificates(CertConfig{CAs: pool, Device: true, Revoked: func(c *x509.Certificate) bool { return c.Subject.CommonName == "stolen" }})
	if err != nil {
		t.Fatal(err)
	}
	good := ca.issue(t, func(c *x509.Certificate) { c.Subject.CommonName = "laptop-42" })
	if _, err := a.Authenticate(context.Background(), Credentials{PeerCertificates: []*x509.Certificate{good}}); !errors.Is(err, ErrNotApplicable) {
		t.Fatalf("device certificate signed a user in: %v", err)
	}
	noCN := ca.issue(t, func(c *x509.Certificate) { c.Subject.CommonName = ""; c.SerialNumber = big.NewInt(0xbeef) })
	for _, tc := range []struct {
		name  string
		chain []*x509.Certificate
		want  string
	}{
		{"CN", []*x509.Certificate{good}, "laptop-42"},
		{"serial without CN", []*x509.Certificate{noCN}, "beef"},
		{"none", nil, ""},
		{"untrusted", []*x509.Certificate{other.issue(t, nil)}, ""},
		{"revoked", []*x509.Certificate{revoked}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := a.Device(tc.chain)
			if tc.want == "" {
				if !errors.Is(err, ErrDeviceCertificate) || !errors.Is(err, ErrInvalidCredentials) {
					t.Fatalf("got %q, %v", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
}
