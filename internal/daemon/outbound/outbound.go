// Package outbound builds the HTTP client for the gateway's own outbound
// HTTPS (IdP discovery and keys, the site check URL): the system roots
// plus a directory of extra trusted root CAs, for networks behind
// TLS-inspecting proxies, and http_proxy/https_proxy/no_proxy (R-T4).
package outbound

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/net/http/httpproxy"
)

// Timeout bounds one outbound request: an IdP or check URL that has not
// answered in 15 s is down for our purposes.
const Timeout = 15 * time.Second

// Roots returns the system roots plus every PEM certificate in dir ("" =
// system roots only). A file in dir that holds no certificate is an error,
// so a typo does not silently leave a root out.
func Roots(dir string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if dir == "" {
		return pool, nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("outbound: extra roots: %w", err)
	}
	for _, e := range ents {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("outbound: extra roots: %w", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("outbound: extra roots: %s holds no PEM certificate", filepath.Join(dir, e.Name()))
		}
	}
	return pool, nil
}

// Client returns an HTTP client trusting Roots(dir) that honours the
// proxy environment variables.
func Client(dir string) (*http.Client, error) {
	roots, err := Roots(dir)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// Read the proxy variables now (http.ProxyFromEnvironment caches them
	// for the process's life).
	proxy := httpproxy.FromEnvironment().ProxyFunc()
	tr.Proxy = func(r *http.Request) (*url.URL, error) { return proxy(r.URL) }
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr, Timeout: Timeout}, nil
}
