package certutil

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"
	"time"
)

// Report is the outcome of Check: errors make the certificate unusable for
// the site; warnings are served but worth fixing.
type Report struct {
	Errors   []string
	Warnings []string
}

// OK reports whether there are no errors.
func (r Report) OK() bool { return len(r.Errors) == 0 }

// maxValidity is the longest validity that does not warn: Apple platforms
// refuse TLS server certificates valid for more than 825 days (and 398 for
// those issued since September 2020); two years is R-T2's threshold.
const maxValidity = 2 * 365 * 24 * time.Hour

// minRSABits: smaller RSA keys are refused by current clients.
const minRSABits = 2048

// Check applies the site certificate rules (R-T2) for the public host
// clients dial (a DNS name or an IP address; "" skips the name check).
// roots verifies the chain (nil: the system roots).
func Check(c *tls.Certificate, host string, roots *x509.CertPool, now time.Time) Report {
	var r Report
	errf := func(f string, a ...any) { r.Errors = append(r.Errors, fmt.Sprintf(f, a...)) }
	warnf := func(f string, a ...any) { r.Warnings = append(r.Warnings, fmt.Sprintf(f, a...)) }
	leaf, err := Leaf(c)
	if err != nil {
		errf("cannot parse the certificate: %v", err)
		return r
	}
	if !keyMatches(leaf, c.PrivateKey) {
		errf("the private key does not match the certificate")
	}
	switch {
	case now.Before(leaf.NotBefore):
		errf("not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case now.After(leaf.NotAfter):
		errf("expired on %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if v := leaf.NotAfter.Sub(leaf.NotBefore); v > maxValidity {
		warnf("valid for %d days, more than two years: iOS and macOS refuse server certificates valid longer than 825 days (398 if issued after 2020-09-01)", int(v.Hours()/24))
	}
	if pk, ok := leaf.PublicKey.(*rsa.PublicKey); ok && pk.N.BitLen() < minRSABits {
		errf("RSA key of %d bits; at least %d required", pk.N.BitLen(), minRSABits)
	}
	for _, n := range leaf.DNSNames {
		if err := checkWildcard(n); err != "" {
			errf("SAN %q: %s", n, err)
		}
	}
	if host != "" {
		if len(leaf.DNSNames) == 0 && len(leaf.IPAddresses) == 0 {
			errf("no subject alternative names: clients match %q against SANs only", host)
		} else if err := leaf.VerifyHostname(host); err != nil {
			errf("SANs %s do not cover the site's public host %q", sanList(leaf), host)
		}
	}
	// The chain: the leaf plus the file's intermediates must reach a root.
	inter := x509.NewCertPool()
	for _, der := range c.Certificate[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(ic)
		}
	}
	_, verr := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	selfSigned := bytes.Equal(leaf.RawIssuer, leaf.RawSubject)
	switch {
	case verr == nil:
	case selfSigned:
		warnf("self-signed: clients must pin its key, %s (openconnect's servercert option)", mustPin(c))
	case len(c.Certificate) == 1:
		warnf("the file holds only the leaf: add the intermediate certificates (full chain), or clients that lack them fail (%v)", verr)
	default:
		warnf("the chain does not verify against the trusted roots: %v", verr)
	}
	return r
}

func mustPin(c *tls.Certificate) string { p, _ := Pin(c); return p }

func sanList(leaf *x509.Certificate) string {
	var s []string
	s = append(s, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		s = append(s, ip.String())
	}
	return "[" + strings.Join(s, " ") + "]"
}

// checkWildcard accepts "*.contoso.com" and rejects partial-label or
// misplaced wildcards ("cont*.com", "*.*.com", "a.*.com").
func checkWildcard(name string) string {
	if !strings.Contains(name, "*") {
		return ""
	}
	labels := strings.Split(name, ".")
	if labels[0] != "*" {
		return "a wildcard must be a whole leftmost label (*.contoso.com); partial labels such as cont*.com are not allowed"
	}
	for _, l := range labels[1:] {
		if strings.Contains(l, "*") {
			return "only the leftmost label may be a wildcard"
		}
	}
	if len(labels) < 3 {
		return "a wildcard needs at least two labels after it (*.contoso.com)"
	}
	return ""
}

// keyMatches reports whether key is the private half of leaf's public key.
func keyMatches(leaf *x509.Certificate, key crypto.PrivateKey) bool {
	type pub interface{ Public() crypto.PublicKey }
	k, ok := key.(pub)
	if !ok {
		return false
	}
	switch p := leaf.PublicKey.(type) {
	case *rsa.PublicKey:
		return p.Equal(k.Public())
	case *ecdsa.PublicKey:
		return p.Equal(k.Public())
	case ed25519.PublicKey:
		return p.Equal(k.Public())
	}
	return false
}
