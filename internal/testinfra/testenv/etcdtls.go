package testenv

import (
	"crypto/tls"
	"net/http"
	"testing"
)

// StartEtcdTLS is StartEtcd with clients on TLS (https://127.0.0.1:PORT,
// certFile and keyFile, for 127.0.0.1) that must present a certificate
// caFile signed (etcd's --client-cert-auth: with auth enabled, the
// certificate's CN is the etcd user). client is what the health check
// presents.
func StartEtcdTLS(t testing.TB, caFile, certFile, keyFile string, client *tls.Config) *Etcd {
	t.Helper()
	RequireTool(t, "etcd")
	e := &Etcd{t: t, name: "m1", dir: t.TempDir()}
	e.Endpoint = "https://" + freeLoopbackPort(t)
	e.peerURL = "http://" + freeLoopbackPort(t)
	e.cluster = e.name + "=" + e.peerURL
	e.tlsArgs = []string{"--cert-file", certFile, "--key-file", keyFile, "--client-cert-auth", "--trusted-ca-file", caFile}
	e.hc = &http.Client{Transport: &http.Transport{TLSClientConfig: client, DisableKeepAlives: true}}
	e.Start()
	return e
}
