package sitestore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/underpass/underpass/internal/testinfra/testenv"
	"github.com/underpass/underpass/tunnel/site"
)

// testCA signs the certificates of TestMTLSPrefixUsers.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
	File string // its PEM certificate
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "site CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, dir: t.TempDir()}
	ca.File = ca.write(t, "ca.pem", "CERTIFICATE", der)
	return ca
}

func (ca *testCA) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(ca.dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// issue makes a certificate for cn (a client certificate; with ip, also
// a server certificate for that address) and returns its files.
func (ca *testCA) issue(t *testing.T, cn string, ip net.IP) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return ca.write(t, cn+".pem", "CERTIFICATE", der), ca.write(t, cn+"-key.pem", "PRIVATE KEY", kder)
}

// TestMTLSPrefixUsers: etcd over mTLS with a certificate per server and
// prefix-scoped users, set up as README "Sites" documents it (there with
// etcdctl, here with the same calls of the Go client). A server's user
// reads the site's prefix and writes its records, health and
// configuration watch work, but it cannot rewrite the site configuration
// nor read another site; the operator's user pushes it; a client without a
// certificate of the site's CA is refused.
func TestMTLSPrefixUsers(t *testing.T) {
	ca := newTestCA(t)
	srvCert, srvKey := ca.issue(t, "etcd", net.IPv4(127, 0, 0, 1))
	rootCert, rootKey := ca.issue(t, "root", nil)
	gwCert, gwKey := ca.issue(t, "gw-a", nil)
	opsCert, opsKey := ca.issue(t, "ops", nil)
	rootPair, err := tls.LoadX509KeyPair(rootCert, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	e := testenv.StartEtcdTLS(t, ca.File, srvCert, srvKey, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{rootPair}})

	// The administrator's set-up (README: the etcdctl commands).
	root, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 10 * time.Second,
		TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{rootPair}}})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	c := ctx(t)
	const hq = "/underpass/hq/"
	steps := []func() error{
		func() error {
			_, err := root.UserAddWithOptions(c, "root", "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		},
		func() error { _, err := root.UserGrantRole(c, "root", "root"); return err },
		// The servers of site hq: read the whole prefix, write their records.
		func() error { _, err := root.RoleAdd(c, "underpass-hq-server"); return err },
		func() error {
			_, err := root.RoleGrantPermission(c, "underpass-hq-server", hq, clientv3.GetPrefixRangeEnd(hq), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error {
			return grantWrite(c, root, "underpass-hq-server", hq+"servers/", hq+"revoked/", hq+"bans/")
		},
		// The operators of site hq: everything under the prefix.
		func() error { _, err := root.RoleAdd(c, "underpass-hq-admin"); return err },
		func() error {
			_, err := root.RoleGrantPermission(c, "underpass-hq-admin", hq, clientv3.GetPrefixRangeEnd(hq), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error {
			_, err := root.UserAddWithOptions(c, "gw-a", "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		},
		func() error { _, err := root.UserGrantRole(c, "gw-a", "underpass-hq-server"); return err },
		func() error {
			_, err := root.UserAddWithOptions(c, "ops", "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		},
		func() error { _, err := root.UserGrantRole(c, "ops", "underpass-hq-admin"); return err },
		func() error { _, err := root.AuthEnable(c); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("set-up step %d: %v", i, err)
		}
	}

	open := func(cert, key, prefix string) *Store {
		s, err := New(Config{Endpoints: []string{e.Endpoint}, Prefix: prefix, CAFile: ca.File, CertFile: cert, KeyFile: key})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	ops := open(opsCert, opsKey, hq)
	rev, err := ops.PutConfig(c, SiteConfig{YAML: []byte("banner: hq\n"), Hash: "h1"}, 0)
	if err != nil {
		t.Fatalf("the operator's push: %v", err)
	}

	gw := open(gwCert, gwKey, hq)
	if err := gw.Announce(c, site.Health{Server: "gw-a", Started: time.Now(), Updated: time.Now()}); err != nil {
		t.Fatalf("gw-a announces: %v", err)
	}
	if err := gw.Publish(c, site.Record{Kind: site.Banned, Addr: testAddr, Until: time.Now().Add(time.Hour), Server: "gw-a"}); err != nil {
		t.Fatalf("gw-a publishes a ban: %v", err)
	}
	if hs, err := gw.Servers(c); err != nil || len(hs) != 1 {
		t.Fatalf("gw-a lists the servers: %v, %v", hs, err)
	}
	if got, err := gw.GetConfig(c); err != nil || got.Revision != rev {
		t.Fatalf("gw-a reads the site configuration: %+v, %v", got, err)
	}
	if _, err := gw.PutConfig(c, SiteConfig{YAML: []byte("banner: stolen\n"), Hash: "h2"}, rev); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("gw-a rewrote the site configuration: %v, want permission denied", err)
	}
	if err := gw.Withdraw(c, "gw-a"); err != nil {
		t.Fatalf("gw-a withdraws: %v", err)
	}
	other := open(gwCert, gwKey, "/underpass/other/")
	if _, err := other.GetConfig(c); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("gw-a read another site: %v, want permission denied", err)
	}

	// Without a certificate of the site's CA: no TLS session at all.
	strangerCA := newTestCA(t)
	sCert, sKey := strangerCA.issue(t, "gw-a", nil)
	stranger := open(sCert, sKey, hq)
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := stranger.GetConfig(sctx); err == nil {
		t.Fatal("a certificate of another CA was accepted")
	}
}

// testAddr is a client address for the records of the mTLS test.
var testAddr = netip.MustParseAddr("192.0.2.9")

// grantWrite gives role write access to each prefix.
func grantWrite(ctx context.Context, cli *clientv3.Client, role string, prefixes ...string) error {
	for _, p := range prefixes {
		if _, err := cli.RoleGrantPermission(ctx, role, p, clientv3.GetPrefixRangeEnd(p), clientv3.PermissionType(clientv3.PermWrite)); err != nil {
			return err
		}
	}
	return nil
}
