package certutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"software.sslmate.com/src/go-pkcs12"
)

var now = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

// issued is a test certificate and its key.
type issued struct {
	cert *x509.Certificate
	key  crypto.Signer
}

type certOpts struct {
	cn         string
	dns        []string
	ips        []string
	notBefore  time.Time
	notAfter   time.Time
	ca         bool
	rsaBits    int
	parent     *issued
	extKeyUses []x509.ExtKeyUsage
}

func issue(t *testing.T, o certOpts) *issued {
	t.Helper()
	var key crypto.Signer
	var err error
	if o.rsaBits > 0 {
		key, err = rsa.GenerateKey(rand.Reader, o.rsaBits)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	if o.notBefore.IsZero() {
		o.notBefore = now.Add(-24 * time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = now.Add(300 * 24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: o.cn},
		NotBefore: o.notBefore, NotAfter: o.notAfter, DNSNames: o.dns,
		BasicConstraintsValid: true, IsCA: o.ca, ExtKeyUsage: o.extKeyUses,
	}
	if o.ca {
		tmpl.KeyUsage = x509.KeyUsageCertSign
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		if tmpl.ExtKeyUsage == nil {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}
	}
	for _, ip := range o.ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	parent, pkey := tmpl, key
	if o.parent != nil {
		parent, pkey = o.parent.cert, o.parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), pkey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &issued{c, key}
}

func tlsCert(leaf *issued, chain ...*issued) *tls.Certificate {
	c := &tls.Certificate{Certificate: [][]byte{leaf.cert.Raw}, PrivateKey: leaf.key, Leaf: leaf.cert}
	for _, ch := range chain {
		c.Certificate = append(c.Certificate, ch.cert.Raw)
	}
	return c
}

func TestCheckRules(t *testing.T) {
	root := issue(t, certOpts{cn: "Test Root", ca: true, notAfter: now.Add(10 * 365 * 24 * time.Hour)})
	inter := issue(t, certOpts{cn: "Test Intermediate", ca: true, parent: root, notAfter: now.Add(5 * 365 * 24 * time.Hour)})
	roots := x509.NewCertPool()
	roots.AddCert(root.cert)
	good := issue(t, certOpts{cn: "vpn.contoso.com", dns: []string{"vpn.contoso.com"}, parent: inter})
	other := issue(t, certOpts{cn: "x", dns: []string{"x.contoso.com"}, parent: inter})
	tests := []struct {
		name     string
		cert     *tls.Certificate
		host     string
		wantErr  string // substring of an error; "" = no errors
		wantWarn string // substring of a warning; "" = no warnings
	}{
		{"full chain, matching host", tlsCert(good, inter), "vpn.contoso.com", "", ""},
		{"key does not match", &tls.Certificate{Certificate: [][]byte{good.cert.Raw}, PrivateKey: other.key, Leaf: good.cert}, "vpn.contoso.com", "does not match", ""},
		{"SAN lacks the host", tlsCert(good, inter), "portal.contoso.com", "do not cover", ""},
		{"IP host in SANs", tlsCert(issue(t, certOpts{cn: "ip", ips: []string{"192.0.2.10"}, parent: inter}), inter), "192.0.2.10", "", ""},
		{"wildcard covers one label", tlsCert(issue(t, certOpts{cn: "w", dns: []string{"*.contoso.com"}, parent: inter}), inter), "vpn.contoso.com", "", ""},
		{"wildcard does not cover two labels", tlsCert(issue(t, certOpts{cn: "w", dns: []string{"*.contoso.com"}, parent: inter}), inter), "a.vpn.contoso.com", "do not cover", ""},
		{"partial-label wildcard", tlsCert(issue(t, certOpts{cn: "p", dns: []string{"cont*.com"}, parent: inter}), inter), "", "partial labels", ""},
		{"inner wildcard", tlsCert(issue(t, certOpts{cn: "p", dns: []string{"*.*.com"}, parent: inter}), inter), "", "leftmost", ""},
		{"chain missing intermediate", tlsCert(good), "vpn.contoso.com", "", "full chain"},
		{"longer than two years", tlsCert(issue(t, certOpts{cn: "l", dns: []string{"vpn.contoso.com"}, parent: inter, notAfter: now.Add(3 * 365 * 24 * time.Hour)}), inter), "vpn.contoso.com", "", "more than two years"},
		{"expired", tlsCert(issue(t, certOpts{cn: "e", dns: []string{"vpn.contoso.com"}, parent: inter, notBefore: now.Add(-400 * 24 * time.Hour), notAfter: now.Add(-time.Hour)}), inter), "vpn.contoso.com", "expired", ""},
		{"not yet valid", tlsCert(issue(t, certOpts{cn: "f", dns: []string{"vpn.contoso.com"}, parent: inter, notBefore: now.Add(time.Hour)}), inter), "vpn.contoso.com", "not valid before", ""},
		{"small RSA key", tlsCert(issue(t, certOpts{cn: "r", dns: []string{"vpn.contoso.com"}, parent: inter, rsaBits: 1024}), inter), "vpn.contoso.com", "at least 2048", ""},
		{"self-signed warns", tlsCert(issue(t, certOpts{cn: "s", dns: []string{"vpn.contoso.com"}})), "vpn.contoso.com", "", "self-signed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Check(tt.cert, tt.host, roots, now)
			all := strings.Join(r.Errors, "\n")
			if tt.wantErr == "" && len(r.Errors) > 0 || tt.wantErr != "" && !strings.Contains(all, tt.wantErr) {
				t.Errorf("errors %q, want %q", r.Errors, tt.wantErr)
			}
			warns := strings.Join(r.Warnings, "\n")
			if tt.wantWarn == "" && len(r.Warnings) > 0 && tt.wantErr == "" || tt.wantWarn != "" && !strings.Contains(warns, tt.wantWarn) {
				t.Errorf("warnings %q, want %q", r.Warnings, tt.wantWarn)
			}
		})
	}
}

func TestParsePEMAndPFX(t *testing.T) {
	root := issue(t, certOpts{cn: "Root", ca: true})
	leaf := issue(t, certOpts{cn: "vpn", dns: []string{"vpn.example"}, parent: root})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.cert.Raw})
	certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.cert.Raw})...)
	kder, _ := x509.MarshalPKCS8PrivateKey(leaf.key)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	c, err := ParsePEM(certPEM, keyPEM)
	if err != nil || len(c.Certificate) != 2 {
		t.Fatalf("PEM: %v", err)
	}
	other := issue(t, certOpts{cn: "o", parent: root})
	okder, _ := x509.MarshalPKCS8PrivateKey(other.key)
	for _, tc := range []struct {
		name       string
		cert, key  []byte
		wantSubstr string
	}{
		{"no cert", []byte("hello"), keyPEM, "no PEM certificate"},
		{"no key", certPEM, []byte("hello"), "no PEM private key"},
		{"encrypted key", certPEM, []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"), "encrypted"},
		{"mismatch", certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: okder}), "does not match"},
	} {
		if _, err := ParsePEM(tc.cert, tc.key); err == nil || !strings.Contains(err.Error(), tc.wantSubstr) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.wantSubstr)
		}
	}
	pfx, err := pkcs12.Modern.Encode(leaf.key, leaf.cert, []*x509.Certificate{root.cert}, "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := ParsePFX(pfx, "s3cret")
	if err != nil || len(pc.Certificate) != 2 || pc.Leaf.Subject.CommonName != "vpn" {
		t.Fatalf("PFX: %v", err)
	}
	if _, err := ParsePFX(pfx, "wrong"); err == nil || !strings.Contains(err.Error(), "wrong password") {
		t.Errorf("wrong PFX password: %v", err)
	}
	if _, err := ParsePFX([]byte("not a pfx"), ""); err == nil {
		t.Error("garbage PFX accepted")
	}
}
