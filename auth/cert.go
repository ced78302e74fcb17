package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// CertConfig configures client-certificate sign-in (R-A3).
type CertConfig struct {
	// CAs verifies client certificates. Required.
	CAs *x509.CertPool
	// Required makes the TLS server refuse handshakes without a valid
	// client certificate; otherwise certificates are optional and other
	// sign-in methods remain.
	Required bool
	// Device makes the certificate identify the device only (R-A7): the
	// user must still sign in (SSO, password or token), and a sign-in
	// without a valid certificate is refused. Identity.DeviceID is the
	// certificate's subject CN (else its serial number, hex). Without
	// Device a valid certificate signs the user in by itself.
	Device bool
	// IdentityFrom lists where the user name comes from, in order: "upn"
	// (Microsoft UPN otherName SAN), "email" (rfc822Name SAN), "cn"
	// (subject common name). Default upn, email, cn.
	IdentityFrom []string
	// GroupsFromOU maps the subject's OU values to Identity.Groups.
	GroupsFromOU bool
	// Revoked, if set, is consulted for every verified leaf (CRL or OCSP
	// lookups live outside this package).
	Revoked func(*x509.Certificate) bool
	// Now is the clock for validity checks. Default time.Now.
	Now func() time.Time
}

// oidUPN is Microsoft's User Principal Name otherName (smart-card logon).
var oidUPN = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 3}

// oidSAN is the subjectAltName extension.
var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// Certificates authenticates a client certificate chain.
type Certificates struct {
	cfg CertConfig
}

// NewCertificates checks the configuration.
func NewCertificates(cfg CertConfig) (*Certificates, error) {
	if cfg.CAs == nil {
		return nil, errors.New("auth: client certificates: CA bundle required")
	}
	if len(cfg.IdentityFrom) == 0 {
		cfg.IdentityFrom = []string{"upn", "email", "cn"}
	}
	for _, s := range cfg.IdentityFrom {
		if !slices.Contains([]string{"upn", "email", "cn"}, s) {
			return nil, fmt.Errorf("auth: client certificates: unknown identity source %q (want upn, email or cn)", s)
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Certificates{cfg: cfg}, nil
}

// LoadCertPool parses a PEM bundle of CA certificates.
func LoadCertPool(pem []byte) (*x509.CertPool, error) {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		return nil, errors.New("auth: no certificates in the CA bundle")
	}
	return p, nil
}

// ClientCAs is the pool for tls.Config.ClientCAs.
func (a *Certificates) ClientCAs() *x509.CertPool { return a.cfg.CAs }

// ClientAuth is the tls.Config.ClientAuth mode the configuration asks for.
func (a *Certificates) ClientAuth() tls.ClientAuthType {
	if a.cfg.Required {
		return tls.RequireAndVerifyClientCert
	}
	return tls.VerifyClientCertIfGiven
}

// ConfigureTLS sets ClientCAs and ClientAuth on a server config.
func (a *Certificates) ConfigureTLS(c *tls.Config) {
	c.ClientCAs = a.cfg.CAs
	c.ClientAuth = a.ClientAuth()
}

// DeviceMode reports whether certificates identify devices beside a user
// sign-in (CertConfig.Device) rather than signing users in.
func (a *Certificates) DeviceMode() bool { return a.cfg.Device }

// ErrDeviceCertificate is the refusal of a sign-in without a valid device
// certificate in device mode; it wraps ErrInvalidCredentials.
var ErrDeviceCertificate = fmt.Errorf("%w: a valid device certificate is required", ErrInvalidCredentials)

// Device verifies a device certificate chain (leaf first) and returns the
// device's ID: the subject CN, else the serial number in hex. A missing,
// untrusted or revoked certificate is ErrDeviceCertificate.
func (a *Certificates) Device(chain []*x509.Certificate) (string, error) {
	leaf, err := a.verify(chain)
	if err != nil {
		return "", ErrDeviceCertificate
	}
	if cn := leaf.Subject.CommonName; cn != "" {
		return cn, nil
	}
	return leaf.SerialNumber.Text(16), nil
}

// verify checks the chain for client-auth use at the current time, and
// revocation.
func (a *Certificates) verify(chain []*x509.Certificate) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, ErrNotApplicable
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         a.cfg.CAs,
		Intermediates: inter,
		CurrentTime:   a.cfg.Now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("%w: client certificate not trusted", ErrInvalidCredentials)
	}
	if a.cfg.Revoked != nil && a.cfg.Revoked(leaf) {
		return nil, fmt.Errorf("%w: client certificate revoked", ErrInvalidCredentials)
	}
	return leaf, nil
}

// Authenticate implements Authenticator for Credentials.PeerCertificates.
// The chain is verified again here (TLS may have been configured to only
// request certificates) for client-auth use at the current time. In
// device mode it returns ErrNotApplicable: a certificate alone signs
// nobody in.
func (a *Certificates) Authenticate(_ context.Context, c Credentials) (*Identity, error) {
	if len(c.PeerCertificates) == 0 || a.cfg.Device {
		return nil, ErrNotApplicable
	}
	leaf, err := a.verify(c.PeerCertificates)
	if err != nil {
		return nil, err
	}
	id := &Identity{Method: "certificate", Expiry: leaf.NotAfter}
	if len(leaf.EmailAddresses) > 0 {
		id.Email = leaf.EmailAddresses[0]
	}
	for _, src := range a.cfg.IdentityFrom {
		switch src {
		case "upn":
			id.User = certUPN(leaf)
		case "email":
			id.User = id.Email
		case "cn":
			id.User = leaf.Subject.CommonName
		}
		if id.User != "" {
			break
		}
	}
	if id.User == "" {
		return nil, fmt.Errorf("%w: client certificate names no user", ErrInvalidCredentials)
	}
	if a.cfg.GroupsFromOU {
		id.Groups = slices.Clone(leaf.Subject.OrganizationalUnit)
	}
	return id, nil
}

// certUPN returns the first UPN otherName in the certificate's SAN, or "".
//
//	GeneralName ::= CHOICE { otherName [0] OtherName, ... }
//	OtherName ::= SEQUENCE { type-id OID, value [0] EXPLICIT ANY }
//	UPN value: UTF8String
func certUPN(c *x509.Certificate) string {
	for _, ext := range c.Extensions {
		if !ext.Id.Equal(oidSAN) {
			continue
		}
		in := cryptobyte.String(ext.Value)
		var names cryptobyte.String
		if !in.ReadASN1(&names, cbasn1.SEQUENCE) {
			return ""
		}
		for !names.Empty() {
			var gn cryptobyte.String
			var tag cbasn1.Tag
			if !names.ReadAnyASN1(&gn, &tag) {
				return ""
			}
			if tag != cbasn1.Tag(0).ContextSpecific().Constructed() {
				continue
			}
			var oid asn1.ObjectIdentifier
			var val, s cryptobyte.String
			if !gn.ReadASN1ObjectIdentifier(&oid) || !oid.Equal(oidUPN) ||
				!gn.ReadASN1(&val, cbasn1.Tag(0).ContextSpecific().Constructed()) ||
				!val.ReadASN1(&s, cbasn1.UTF8String) {
				continue
			}
			return string(s)
		}
	}
	return ""
}
