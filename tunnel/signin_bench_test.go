package tunnel

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/http"
	"runtime/pprof"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/underpass/underpass/auth"
	"github.com/underpass/underpass/internal/core/authxml"
	"github.com/underpass/underpass/internal/testinfra/oidctest"
)

// benchCert is a self-signed server certificate for 127.0.0.1 with key.
func benchCert(b *testing.B, key crypto.Signer) *tls.Certificate {
	b.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: nil,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		b.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// serverCerts are the server certificates the sign-in benchmarks run
// with: ECDSA P-256 (the default certutil makes) and RSA-2048 (what many
// sites buy).
func serverCerts(b *testing.B) []struct {
	name string
	cert *tls.Certificate
} {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	return []struct {
		name string
		cert *tls.Certificate
	}{{"cert=ecdsa-p256", benchCert(b, ec)}, {"cert=rsa-2048", benchCert(b, rk)}}
}

// benchClientTLS is a client without a session cache: every sign-in is a
// full handshake with the server certificate's signature, as a fresh
// device's. The chain is not verified: that is the client's cost.
var benchClientTLS = &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}

// signInOnce opens a TLS connection to addr, posts body (with the bearer
// token, if any) and, for a form, replies with user and password; it
// returns nil when the gateway set the session cookie.
func signInOnce(addr, token, user, pass string) error {
	c, err := tls.Dial("tcp", addr, benchClientTLS)
	if err != nil {
		return err
	}
	defer c.Close()
	br := bufio.NewReader(c)
	post := func(path string, body []byte) (*http.Response, []byte, error) {
		req := authxml.NewRequest(http.MethodPost, "https://"+addr+path, "bench", body)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		return authxml.RoundTrip(c, br, req)
	}
	hasCookie := func(resp *http.Response) bool {
		for _, ck := range resp.Cookies() {
			if ck.Name == "webvpn" && ck.Value != "" {
				return true
			}
		}
		return false
	}
	resp, body, err := post("/", authxml.RenderInit("bench", "https://"+addr+"/"))
	if err != nil {
		return err
	}
	if hasCookie(resp) {
		return nil
	}
	if token != "" {
		return fmt.Errorf("token refused: %s", body)
	}
	msg, err := authxml.ParseServer(body)
	if err != nil {
		return err
	}
	resp, body, err = post(msg.Action, authxml.RenderReply("bench", msg.Opaque, user, pass))
	if err != nil {
		return err
	}
	if !hasCookie(resp) {
		return fmt.Errorf("password refused: %s", body)
	}
	return nil
}

// runSignIns runs b.N sign-ins from parallel clients (GOMAXPROCS × 4, so
// the gateway always has work while clients wait on the network) and
// reports sign-ins per second and the process's CPU time per sign-in.
// Gateway and clients share the process and the machine's cores: the
// rate is what this box does with both on it, and on a shared box it
// also depends on what else runs; the CPU time does not (much), so
// 2 s / (cpu-µs/op) is the rate two free cores would reach, clients
// included.
func runSignIns(b *testing.B, addr string, next func(i int64) (token, user, pass string)) {
	var n, failed atomic.Int64
	var firstErr atomic.Value
	b.SetParallelism(4)
	cpu0 := processCPU(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		// The label tells the clients' CPU samples from the gateway's in a
		// -cpuprofile: go tool pprof -tagfocus side=client (or -tagignore).
		pprof.Do(context.Background(), pprof.Labels("side", "client"), func(context.Context) {
			for pb.Next() {
				tok, u, p := next(n.Add(1))
				if err := signInOnce(addr, tok, u, p); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	})
	b.StopTimer()
	cpu := processCPU(b) - cpu0
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d sign-ins failed, first: %v", f, b.N, firstErr.Load())
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signins/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
}

// processCPU is the process's user plus system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkTokenSignIn: fresh sign-ins with an OIDC access token (RS256,
// keys cached after the first) through the AnyConnect sign-in on a new
// TLS connection each: the handshake with the server certificate, the
// XML init carrying Authorization: Bearer, the token's verification, the
// session and its cookie. Issue 14 asks for >= 1,000/s on 2 cores with
// the ECDSA certificate.
func BenchmarkTokenSignIn(b *testing.B) {
	idp, o := oidctest.Start(b, "underpass")
	toks := make([]string, 256) // distinct users; cycled
	for i := range toks {
		toks[i] = idp.Token(b, fmt.Sprintf("user%d", i), "underpass")
	}
	for _, sc := range serverCerts(b) {
		b.Run(sc.name, func(b *testing.B) {
			_, addr := startGateway(b, func(c *Config) { c.Certificate, c.Authenticator = sc.cert, o })
			runSignIns(b, addr, func(i int64) (string, string, string) { return toks[i%int64(len(toks))], "", "" })
		})
	}
}

// BenchmarkPasswordSignIn: fresh sign-ins of a static user (bcrypt
// hash) through the same path, with the form round trip, at bcrypt cost
// 10 (bcrypt.DefaultCost, `underpass hash-password`'s default), 8 and 4
// (the least): each step of cost doubles the hash's work. Run it with
// -benchtime=Nx: cost 10 takes tens of milliseconds per sign-in.
func BenchmarkPasswordSignIn(b *testing.B) {
	cert := serverCerts(b)[0].cert
	for _, cost := range []int{bcrypt.DefaultCost, 8, bcrypt.MinCost} {
		b.Run(fmt.Sprintf("bcrypt=%d", cost), func(b *testing.B) {
			h, err := bcrypt.GenerateFromPassword([]byte("secret"), cost)
			if err != nil {
				b.Fatal(err)
			}
			users, err := auth.NewStaticUsers([]auth.StaticUser{{Name: "alice", Hash: string(h)}})
			if err != nil {
				b.Fatal(err)
			}
			_, addr := startGateway(b, func(c *Config) { c.Certificate, c.Authenticator = cert, users })
			runSignIns(b, addr, func(int64) (string, string, string) { return "", "alice", "secret" })
		})
	}
}
