package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/underpass/underpass/auth"
)

// resumes connects to addr with cache, sends one HTTP request (a TLS 1.3
// ticket arrives after the handshake and is stored only once the client
// reads) and reports whether the TLS session was resumed.
func resumes(t *testing.T, addr string, cache tls.ClientSessionCache, version uint16) bool {
	t.Helper()
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, ClientSessionCache: cache,
		MinVersion: version, MaxVersion: version, ServerName: "gateway.test"}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatal(err)
	}
	return c.(*tls.Conn).ConnectionState().DidResume
}

func sealer(t *testing.T, fill byte) *auth.Sealer {
	t.Helper()
	s, err := auth.NewSealer(nil, bytes.Repeat([]byte{fill}, auth.SealerKeySize))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTicketsAcrossServers: a client that signed in at one server resumes
// its TLS session at another server with the same site key (the failover
// and restart case), over TLS 1.3 and 1.2, and only there.
func TestTicketsAcrossServers(t *testing.T) {
	site := sealer(t, 1)
	_, a := startGateway(t, func(c *Config) { c.Sealer = site })
	_, b := startGateway(t, func(c *Config) { c.Sealer = site })
	_, other := startGateway(t, func(c *Config) { c.Sealer = sealer(t, 2) })
	_, plain1 := startGateway(t, nil)
	_, plain2 := startGateway(t, nil)
	for _, v := range []struct {
		name    string
		version uint16
	}{{"TLS 1.3", tls.VersionTLS13}, {"TLS 1.2", tls.VersionTLS12}} {
		for _, tt := range []struct {
			name        string
			first, then string
			want        bool
		}{
			{"same server", a, a, true},
			{"another server of the site", a, b, true},
			{"a server with another site key", a, other, false},
			{"no site key: crypto/tls's own keys", plain1, plain2, false},
			{"no site key, same server", plain1, plain1, true},
		} {
			t.Run(v.name+"/"+tt.name, func(t *testing.T) {
				cache := tls.NewLRUClientSessionCache(1)
				if resumes(t, tt.first, cache, v.version) {
					t.Fatal("the first connection resumed")
				}
				if got := resumes(t, tt.then, cache, v.version); got != tt.want {
					t.Fatalf("resumed %v, want %v", got, tt.want)
				}
			})
		}
	}
}

// TestTicketKeyPeriods: a ticket issued in one period resumes in the next
// (the previous key still decrypts) but not in the one after.
func TestTicketKeyPeriods(t *testing.T) {
	site := sealer(t, 1)
	start := time.Date(2026, 11, 30, 23, 59, 0, 0, time.UTC)
	serve := func(now time.Time) string {
		conf := &tls.Config{Certificates: []tls.Certificate{*testCert}}
		r := ticketRotator{conf: conf, sealer: site}
		r.rotate(now)
		l, err := tls.Listen("tcp", "127.0.0.1:0", conf)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { _ = srv.Close() })
		return l.Addr().String()
	}
	issuer := serve(start)
	for _, tt := range []struct {
		name string
		at   time.Time
		want bool
	}{
		{"same period", start.Add(30 * time.Second), true},
		{"next period", start.Add(2 * time.Minute), true},
		{"two periods on", start.Add(ticketKeyPeriod + 2*time.Minute), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if ticketPeriod(tt.at) == ticketPeriod(start) != (tt.name == "same period") {
				t.Fatalf("%v is not in the period the case names", tt.at)
			}
			cache := tls.NewLRUClientSessionCache(1)
			if resumes(t, issuer, cache, tls.VersionTLS13) {
				t.Fatal("the first connection resumed")
			}
			if got := resumes(t, serve(tt.at), cache, tls.VersionTLS13); got != tt.want {
				t.Fatalf("resumed %v, want %v", got, tt.want)
			}
		})
	}
}
